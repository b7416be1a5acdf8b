//! The `mqtt-broker` binary: settings from the environment and `-c mosquitto.conf`, logging,
//! signals (SIGINT/SIGTERM stop, SIGHUP reloads the password and ACL files; signal-hook), every listener
//! bound before anything starts, then the accept loop on the main thread. Also the `passwd`
//! subcommand.

use std::fs::OpenOptions;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;

use log::{error, info, warn, LevelFilter};
use mqtt_broker::auth::passwd_tool;
use mqtt_broker::config::mosquitto_conf::Parsed;
use mqtt_broker::config::{file, Listener, LogDest, Protocol};
use mqtt_broker::{Broker, Config};

const USAGE: &str =
    "usage: mqtt-broker [-c mosquitto.conf] [--reset-corrupt-store]\n       mqtt-broker passwd ...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("passwd") {
        return match passwd_tool::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (config_file, reset_corrupt_store) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("Error: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    // Configuration errors go to stderr before logging is set up: logging is configured there.
    let mut parsed = match load_config(config_file.as_ref()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A damaged store is moved aside and the broker starts empty (see README, Persistence).
    parsed.config.reset_corrupt_store |= reset_corrupt_store;
    if let Err(e) = init_logging(&parsed.config.log_dest, &parsed.log_types) {
        eprintln!("Error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &config_file {
        info!("config loaded from {}", path.display());
    }
    for warning in &parsed.warnings {
        warn!("{warning}");
    }
    if let Some(pid_file) = &parsed.pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            error!("cannot write pid_file {}: {e}", pid_file.display());
            return ExitCode::FAILURE;
        }
    }
    let mut broker = match start(parsed.config) {
        Ok(broker) => broker,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Prometheus metrics also from the environment (a `protocol metrics` listener in the file).
    if let Ok(addr) = std::env::var("METRICS_ADDR") {
        let served = TcpListener::bind(addr.trim()).and_then(|s| broker.serve_metrics(s));
        if let Err(e) = served {
            error!("cannot serve metrics on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = watch_signals(broker.stopper(), broker.reloader()) {
        error!("cannot install the signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    broker.run();
    ExitCode::SUCCESS
}

/// The config file (`-c`) and whether `--reset-corrupt-store` was given.
fn parse_args(args: &[String]) -> Result<(Option<PathBuf>, bool), String> {
    let mut config = None;
    let mut reset_corrupt_store = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config-file" => {
                let path = args.next().ok_or("-c needs a file")?;
                config = Some(PathBuf::from(path));
            }
            "--reset-corrupt-store" => reset_corrupt_store = true,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((config, reset_corrupt_store))
}

/// The environment's settings, with the file's on top.
fn load_config(path: Option<&PathBuf>) -> Result<Parsed, String> {
    let config = Config::from_env()?;
    match path {
        Some(path) => file::load(path, config).map_err(|e| e.to_string()),
        None => Ok(Parsed::new(config).finish()),
    }
}

/// Binds every listener, then builds the broker; nothing accepts until `run`.
fn start(config: Config) -> Result<Broker, String> {
    let mut settings = config.listeners.clone();
    if settings.is_empty() {
        settings.push(Listener::mqtt(config.socket_addr));
    }
    // QUIC listeners bind UDP and are added after the TCP ones; the broker needs one TCP
    // listener first, the default one if the file names QUIC listeners only.
    let (quic, mut settings): (Vec<Listener>, Vec<Listener>) = settings
        .into_iter()
        .partition(|l| l.protocol == Protocol::Quic);
    if settings.is_empty() {
        settings.push(Listener::mqtt(config.socket_addr));
    }
    let mut config = config;
    if !config.listeners.is_empty() {
        config.listeners.clone_from(&settings);
    }
    let mut sockets = Vec::new();
    for listener in &settings {
        let socket = TcpListener::bind(listener.addr)
            .map_err(|e| format!("cannot listen on {}: {e}", listener.addr))?;
        sockets.push(socket);
    }
    let mut quic_sockets = Vec::new();
    for listener in &quic {
        let socket = UdpSocket::bind(listener.addr)
            .map_err(|e| format!("cannot listen on {} (UDP): {e}", listener.addr))?;
        quic_sockets.push(socket);
    }
    let mut sockets = sockets.into_iter();
    let first = sockets.next().expect("one listener at least");
    let mut broker = Broker::new(first, config).map_err(|e| format!("cannot start: {e}"))?;
    for (socket, listener) in sockets.zip(settings.into_iter().skip(1)) {
        broker
            .add_listener(socket, listener)
            .map_err(|e| format!("cannot start: {e}"))?;
    }
    for (socket, listener) in quic_sockets.into_iter().zip(quic) {
        broker
            .add_quic_listener(socket, listener)
            .map_err(|e| format!("cannot start: {e}"))?;
    }
    Ok(broker)
}

/// Maps `log_dest` and `log_type` onto env_logger; `RUST_LOG`, when set, decides the levels.
fn init_logging(dest: &LogDest, types: &[String]) -> Result<(), String> {
    let level = if types.is_empty() {
        LevelFilter::Info
    } else {
        types
            .iter()
            .map(|t| match t.as_str() {
                "none" => LevelFilter::Off,
                "error" => LevelFilter::Error,
                "warning" => LevelFilter::Warn,
                "debug" | "all" | "subscribe" | "unsubscribe" | "websockets" => LevelFilter::Debug,
                _ => LevelFilter::Info,
            })
            .max()
            .unwrap_or(LevelFilter::Info)
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    match dest {
        LogDest::Stderr => {}
        LogDest::Stdout => {
            builder.target(env_logger::Target::Stdout);
        }
        LogDest::None => {
            builder.filter_level(LevelFilter::Off);
        }
        LogDest::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log_dest file {}: {e}", path.display()))?;
            builder.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    builder.init();
    Ok(())
}

/// SIGINT and SIGTERM stop the broker (PID 1 in a container gets no default handling, so
/// `docker stop` relies on this); SIGHUP reloads the password and ACL files, as mosquitto.
fn watch_signals(
    stopper: mqtt_broker::Stopper,
    reloader: mqtt_broker::broker::Reloader,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    info!("SIGHUP: reloading the password and ACL files and the TLS certificates");
                    let _ = reloader.reload();
                } else {
                    stopper.stop();
                }
            }
        })?;
    Ok(())
}
