//! `mqtt-bench`: a load generator for MQTT brokers, with a client side of its own, that runs
//! named scenarios against a broker on this machine and checks every delivery.
//!
//! Owns: the order of things (parse options, pick scenarios, run each, print its line, set
//! the exit status). Must not: hold protocol or measurement logic; each module below has one
//! job and says at its top what it must not do.
//!
//! # Layout
//! - `options`: the command line and its defaults.
//! - `scenario`: the named scenarios and the clients each one plans.
//! - `run`: one traffic scenario, from connect to result, and its checks; `watch`: its
//!   publish and drain phases.
//! - `connections`: the idle-connections scenario.
//! - `churn`: clients disconnecting and connecting again in a loop.
//! - `client`: connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK, DISCONNECT.
//! - `traffic`: one client's reader and writer threads and their counters.
//! - `reader`, `writer`: the two threads of a traffic connection.
//! - `payload`: the stamp each message carries (publisher, sequence, send time).
//! - `tally`: what one subscriber received; `histogram`: latency percentiles.
//! - `procstat`: the broker's RSS and threads from /proc.
//! - `report`: result lines as text, JSON or key=value.
//!
//! Clients speak MQTT 3.1.1 through the broker crate's own codec.

mod churn;
mod client;
mod connections;
mod histogram;
mod options;
mod payload;
mod procstat;
mod reader;
mod report;
mod run;
mod scenario;
mod stream;
mod tally;
mod traffic;
mod watch;
mod writer;

use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use options::{Format, Options, USAGE};
use scenario::Kind;

/// Pause between scenarios, so that one run's closing connections are gone before the next.
const BETWEEN: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("mqtt-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(ca) = &options.tls_ca {
        if let Err(e) = client::use_tls(ca) {
            eprintln!("mqtt-bench: --tls-ca {e}");
            return ExitCode::from(2);
        }
    }
    stream::set_quic(options.quic);
    client::PERSISTENT.store(options.persistent, std::sync::atomic::Ordering::Relaxed);
    let scenarios = match scenario::select(&options, &options.scenarios) {
        Ok(scenarios) => scenarios,
        Err(e) => {
            eprintln!("mqtt-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if options.list {
        for scenario in &scenarios {
            println!("{}", scenario.name);
        }
        return ExitCode::SUCCESS;
    }
    // Fix the clock's epoch before any thread stamps a message.
    let _ = payload::now_ns();

    let mut failed = 0;
    for (i, scenario) in scenarios.iter().enumerate() {
        if i > 0 {
            thread::sleep(BETWEEN);
        }
        // Topics and client ids unique to this process and scenario.
        let run_id = format!("{}-{i}", std::process::id());
        let line = match &scenario.kind {
            Kind::Traffic {
                topology,
                qos,
                stop,
                rate,
            } => run::run(
                &options,
                &run::Traffic {
                    name: &scenario.name,
                    topology: *topology,
                    qos: *qos,
                    stop: *stop,
                    rate: *rate,
                },
                &run_id,
            ),
            Kind::Connections => connections::run(&options, &run_id),
            Kind::Churn => churn::run(&options, &run_id),
        };
        if !line.ok() {
            failed += 1;
        }
        println!("{}", line.render(options.format));
        if options.format != Format::Text && !line.ok() {
            eprintln!("{}", line.render(Format::Text));
        }
    }
    if failed > 0 {
        eprintln!(
            "mqtt-bench: {failed} of {} scenarios failed",
            scenarios.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
