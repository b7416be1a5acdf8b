//! The integration tests: one crate, one binary. Each test starts the real broker in-process
//! on an ephemeral port and talks to it over TCP, with raw packets or the mosquitto clients.

mod acl;
mod auth;
mod auth_support;
mod bridge;
mod browser;
mod child_broker;
mod cli;
mod conf_options;
mod config_file;
mod connect;
mod differential;
mod durability;
mod http_auth;
mod isolation;
mod keepalive;
mod listeners;
mod metrics;
mod mosquitto;
mod pubsub;
mod qos;
mod quic;
mod retain;
mod robustness;
mod session;
mod shutdown;
mod support;
mod sys_topics;
mod tls;
mod transports;
mod v5_connect;
mod v5_publish;
mod v5_subscribe;
mod websocket;
mod will;
