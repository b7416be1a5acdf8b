//! Bridges: each `connection` block of mosquitto.conf is a client of a remote broker that
//! lives inside ours.
//!
//! Owns: starting and stopping the bridges (`Bridges`). Each bridge has a supervisor thread
//! `bridge-NAME` (dials, then writes to the remote) and, while a link is up, a reader thread
//! `bridge-NAME-rx`; towards our router it is a session like any client's, attached through
//! an in-process `ClientHandle` while the link is up. Must not: queue messages itself (the
//! router's session does, bounded by `max_queued_messages`/`max_queued_bytes`) or block the
//! router (the router hands it deliveries with the same non-blocking calls as to any writer).
//!
//! Layout: `config` (a block's options), `topics` (the `topic` lines and remapping), `backoff`
//! (`restart_timeout`), `link` (dialling, CONNECT, the reader), `tls` (the rustls client
//! configuration), `run` (the supervisor and the
//! writer loop).

mod backoff;
pub mod config;
mod link;
mod run;
mod tls;
pub mod topics;

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::Sender;
use log::warn;
use parking_lot::Mutex;

pub use config::BridgeConfig;

use crate::config::Config;
use crate::queue::QueueHandle;
use crate::transport::Link;

/// The running bridges, stopped together before the router shuts down.
#[derive(Default)]
pub struct Bridges {
    running: Vec<Running>,
}

struct Running {
    name: String,
    stop: Sender<()>,
    current: Arc<Mutex<Option<Arc<dyn Link>>>>,
    thread: JoinHandle<()>,
}

impl Bridges {
    /// Starts a supervisor thread for every bridge of `config.bridges`.
    pub fn start(config: &Config, queue: &QueueHandle) -> io::Result<Bridges> {
        let shared = Arc::new(config.clone());
        let mut bridges = Bridges::default();
        for bridge in &config.bridges {
            let (stop, stop_rx) = crossbeam_channel::bounded(1);
            let current = Arc::new(Mutex::new(None));
            let supervisor = run::Supervisor {
                bridge: Arc::new(bridge.clone()),
                queue: queue.clone(),
                config: Arc::clone(&shared),
                stop: stop_rx,
                current: Arc::clone(&current),
            };
            if !bridge.local_clean_start() {
                supervisor
                    .prepare_local_session()
                    .map_err(|_| io::Error::other("the router has stopped"))?;
            }
            let thread = thread::Builder::new()
                .name(format!("bridge-{}", bridge.name))
                .spawn(move || supervisor.run())?;
            bridges.running.push(Running {
                name: bridge.name.clone(),
                stop,
                current,
                thread,
            });
        }
        Ok(bridges)
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every bridge: each says goodbye to its remote and detaches its local session.
    /// Waits a bounded time (a bridge may be dialling); one still running is left behind and
    /// ends when its dial does.
    pub fn stop(self) {
        for running in &self.running {
            let _ = running.stop.try_send(());
        }
        let deadline = Instant::now() + run::STOP_WAIT;
        for running in self.running {
            while !running.thread.is_finished() && Instant::now() < deadline {
                thread::sleep(std::time::Duration::from_millis(10));
            }
            if running.thread.is_finished() {
                let _ = running.thread.join();
            } else {
                // Ends a blocked read or write; the thread then sees the stop.
                if let Some(link) = running.current.lock().as_ref() {
                    link.shutdown();
                }
                warn!("bridge {}: did not stop in time", running.name);
            }
        }
    }
}
