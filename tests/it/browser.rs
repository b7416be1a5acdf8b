//! A real browser: headless Chromium loads a page served by this test, and MQTT.js on that page
//! connects over ws:// and wss://, subscribes, and publishes at QoS 0, 1 and 2 to itself. The
//! page posts what it received back to the test's HTTP server; a TCP client on the same broker
//! sees the browser's messages too.
//!
//! Needs `chromium`, `certutil` (libnss3-tools) and MQTT.js in `.test-cache/npm` (`./build.sh
//! test` installs them, and sets MQTT_BROWSER_TEST=require so that a missing one fails).
//! Without them, and without that variable, the test says so and passes without running.
//!
//! wss:// is trusted the way a user would trust a private CA: the test's CA is added to the NSS
//! database of a fresh home directory that only this Chromium uses. No certificate error is
//! ignored.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use mqtt_broker::config::Protocol;
use mqtt_broker::mqtt::{ProtocolVersion, QoS};

use crate::support::{start_broker_with_listeners, RawClient};
use crate::transports::{listener, Certs};

const CHROMIUM: &str = "/usr/bin/chromium";
const CERTUTIL: &str = "/usr/bin/certutil";
/// How long the page may take, start of Chromium included.
const PAGE_WAIT: Duration = Duration::from_secs(90);

fn mqtt_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-cache/npm/node_modules/mqtt/dist/mqtt.min.js")
}

/// False (with a note) when the browser or MQTT.js is missing and not required.
fn tools_present() -> bool {
    let missing: Vec<String> = [PathBuf::from(CHROMIUM), PathBuf::from(CERTUTIL), mqtt_js()]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MQTT_BROWSER_TEST").as_deref() == Ok("require") {
        panic!("browser test tools missing: {missing:?} (./build.sh test installs them)");
    }
    eprintln!("browser test NOT RUN: missing {missing:?}; ./build.sh test installs them");
    false
}

/// Chromium, killed on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `home/.pki/nssdb`, where Chromium on Linux looks for user trust, trusting `ca`.
fn trust_ca(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("make the NSS directory");
    let db = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let status = Command::new(CERTUTIL)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run certutil");
        assert!(status.success(), "certutil {args:?} failed");
    };
    run(&["-N", "-d", &db, "--empty-password"]);
    let ca = ca.display().to_string();
    run(&[
        "-A",
        "-d",
        &db,
        "-n",
        "mqtt-broker test CA",
        "-t",
        "C,,",
        "-i",
        &ca,
    ]);
}

fn page(ws_port: u16, wss_port: u16) -> String {
    format!(
        r#"<!doctype html>
<html><head><title>running</title><script src="/mqtt.min.js"></script></head><body><script>
function run(url, name) {{
  return new Promise((resolve) => {{
    const got = {{}};
    const done = (text) => {{ try {{ client.end(true); }} catch (e) {{}} resolve(text); }};
    const client = mqtt.connect(url, {{
      clientId: 'browser-' + name, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10000,
    }});
    client.on('connect', () => {{
      client.subscribe('browser/' + name + '/#', {{ qos: 2 }}, (err) => {{
        if (err) return done(name + ': subscribe failed: ' + err.message);
        for (const qos of [0, 1, 2]) {{
          client.publish('browser/' + name + '/q' + qos, 'hello ' + qos, {{ qos }});
        }}
      }});
    }});
    client.on('message', (topic, payload, packet) => {{
      got[topic] = payload.toString() + '@' + packet.qos;
      if (Object.keys(got).length === 3) {{
        done(name + ' ' + Object.keys(got).sort().map((k) => k + '=' + got[k]).join(','));
      }}
    }});
    client.on('error', (e) => done(name + ': error: ' + e.message));
    setTimeout(() => done(name + ": timed out with " + JSON.stringify(got)), 30000);
  }});
}}
(async () => {{
  const ws = await run('ws://127.0.0.1:{ws_port}/mqtt', 'ws');
  const wss = await run('wss://localhost:{wss_port}/mqtt', 'wss');
  document.title = 'done';
  await fetch('/result', {{ method: 'POST', body: ws + '\n' + wss }});
}})();
</script></body></html>"#
    )
}

/// Serves the page and MQTT.js, and passes the body of `POST /result` on.
fn serve(listener: TcpListener, page: String, results: crossbeam_channel::Sender<String>) {
    let script = std::fs::read(mqtt_js()).expect("read MQTT.js");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            continue;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let (kind, body): (&str, Vec<u8>) = if request.starts_with("GET / ") {
            ("text/html", page.clone().into_bytes())
        } else if request.starts_with("GET /mqtt.min.js") {
            ("application/javascript", script.clone())
        } else if request.starts_with("POST /result") {
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = results.send(String::from_utf8_lossy(&body).into_owned());
            ("text/plain", b"ok".to_vec())
        } else {
            ("text/plain", Vec::new())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    }
}

#[test]
fn chromium_speaks_mqtt_over_ws_and_wss_with_mqtt_js() {
    if !tools_present() {
        return;
    }
    let certs = Certs::new();
    // No cafile on the WSS listener: with one, the server asks for a client certificate, and
    // Chromium drops such a WebSocket connection when it has none to offer.
    let mut wss = certs.settings(false);
    wss.cafile = None;
    let listeners = vec![
        listener(Protocol::WebSockets, None),
        listener(Protocol::WebSockets, Some(wss)),
    ];
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), listeners);
    let (mut watcher, _) =
        RawClient::connect(broker.addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("browser/#", QoS::ExactlyOnce)]);

    let http = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    let http_port = http.local_addr().expect("address").port();
    let (results_tx, results) = crossbeam_channel::unbounded();
    let page = page(addrs[0].port(), addrs[1].port());
    thread::spawn(move || serve(http, page, results_tx));

    let home = certs.dir.join("home");
    trust_ca(&home, &certs.dir.join("ca.pem"));
    let profile = certs.dir.join("chromium-profile");
    let _browser = Browser(
        Command::new(CHROMIUM)
            .env("HOME", &home)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                &format!("http://127.0.0.1:{http_port}/"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium"),
    );
    let result = results
        .recv_timeout(PAGE_WAIT)
        .expect("the page reports within 90 s");
    let expected = |name: &str| {
        format!(
            "{name} browser/{name}/q0=hello 0@0,browser/{name}/q1=hello 1@1,browser/{name}/q2=hello 2@2"
        )
    };
    assert_eq!(result, format!("{}\n{}", expected("ws"), expected("wss")));
    // The same six messages reached a plain TCP client.
    let mut seen: Vec<String> = (0..6)
        .map(|_| {
            let publish = watcher.recv_publish();
            format!(
                "{}={}",
                publish.topic,
                String::from_utf8_lossy(&publish.payload)
            )
        })
        .collect();
    seen.sort();
    let mut wanted: Vec<String> = ["ws", "wss"]
        .iter()
        .flat_map(|name| (0..3).map(move |q| format!("browser/{name}/q{q}=hello {q}")))
        .collect();
    wanted.sort();
    assert_eq!(seen, wanted);
    broker.stop();
}
