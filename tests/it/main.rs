//! The integration tests: one crate, one binary. Each test starts the real broker in-process
//! on an ephemeral port and talks to it over TCP, with raw packets or the mosquitto clients.

mod child_broker;
mod cli;
mod connect;
mod durability;
mod keepalive;
mod mosquitto;
mod pubsub;
mod qos;
mod retain;
mod robustness;
mod session;
mod shutdown;
mod support;
mod v5_connect;
mod v5_publish;
mod v5_subscribe;
mod will;
