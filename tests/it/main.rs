//! The integration tests: one crate, one binary. Each test starts the real broker in-process
//! on an ephemeral port and talks to it over TCP, with raw packets or the mosquitto clients.

mod cli;
mod connect;
mod keepalive;
mod metrics;
mod mosquitto;
mod pubsub;
mod qos;
mod retain;
mod robustness;
mod session;
mod shutdown;
mod support;
mod sys_topics;
mod v5_connect;
mod v5_publish;
mod v5_subscribe;
mod will;
