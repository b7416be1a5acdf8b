//! Watching the broker: counters kept by the client threads and the router, the
//! `$SYS/broker/...` topics mosquitto users know, and a Prometheus `/metrics` listener.
//!
//! Owns: `Stats` (`counters`), the `$SYS` tree's names, texts and timing (`tree`), and the
//! metrics HTTP listener (`metrics`); storage commit times (`commits`). Must not: slow the hot path (counters are per-thread
//! shards or plain fields flushed per write) or touch session state: the router counts what
//! only it knows and publishes `$SYS` itself (`queue::actor::sys`).

pub mod commits;
pub mod counters;
pub mod metrics;
pub mod tree;

pub use counters::Stats;
