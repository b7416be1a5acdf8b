//! The `mqtt-broker` binary: configuration from the environment, logging, signals, and the
//! accept loop on the main thread.

use std::net::TcpListener;
use std::process::ExitCode;

use log::error;
use mqtt_broker::{Broker, Config};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // A damaged store is moved aside and the broker starts empty (see README, Persistence).
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "--reset-corrupt-store")
    {
        config.reset_corrupt_store = true;
    }
    let listener = match TcpListener::bind(config.socket_addr) {
        Ok(listener) => listener,
        Err(e) => {
            error!("cannot listen on {}: {e}", config.socket_addr);
            return ExitCode::FAILURE;
        }
    };
    let broker = match Broker::new(listener, config) {
        Ok(broker) => broker,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = broker.stopper();
    // SIGINT and SIGTERM (ctrlc's "termination" feature): PID 1 in a container gets no
    // default handling, so `docker stop` relies on this.
    if let Err(e) = ctrlc::set_handler(move || stopper.stop()) {
        error!("cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    broker.run();
    ExitCode::SUCCESS
}
