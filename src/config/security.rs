//! Who may connect and what they may do, as configured: anonymous access, the password and ACL
//! files, the HTTP authentication hook. Also where the log goes (`log_dest`).
//!
//! Owns: plain values, global or per listener (`per_listener_settings`). Must not: read the
//! files it names; `auth::Authorizer` loads them.

use std::path::PathBuf;
use std::time::Duration;

/// The security options of mosquitto.conf, for all listeners or for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `allow_anonymous`; None: not said (then true without a config file or listener, false
    /// once a listener is configured, as mosquitto 2).
    pub allow_anonymous: Option<bool>,
    /// `password_file`: users and hashes as mosquitto_passwd writes them.
    pub password_file: Option<PathBuf>,
    /// `acl_file`: topic access rules in mosquitto's syntax.
    pub acl_file: Option<PathBuf>,
    /// `auth_http_url` and friends: an outside service asked on CONNECT, SUBSCRIBE and PUBLISH.
    pub http_auth: Option<HttpAuth>,
}

/// The HTTP authentication hook's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAuth {
    /// `auth_http_url`: the base URL; requests go to `{url}/connect` and `{url}/acl`.
    pub url: String,
    /// `auth_http_timeout` (seconds, default 2): connect and read timeout of one request.
    pub timeout: Duration,
    /// `auth_http_cache_ttl` (seconds, default 60): how long an ACL answer is reused for the
    /// same client, topic and access.
    pub cache_ttl: Duration,
    /// `auth_http_on_error allow|deny` (default deny): the answer when the service cannot be
    /// reached or answers 5xx.
    pub allow_on_error: bool,
}

impl Default for HttpAuth {
    fn default() -> Self {
        HttpAuth {
            url: String::new(),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(60),
            allow_on_error: false,
        }
    }
}

/// `log_dest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogDest {
    #[default]
    Stderr,
    Stdout,
    File(PathBuf),
    None,
}
