//! Who may connect and what they may do: the one `Authorizer` a listener's clients consult.
//!
//! - `password_file`: mosquitto_passwd's format, verified on the client's reader thread.
//! - `acl`: mosquitto's ACL file syntax; pure and cheap, so the router may ask it per delivery.
//! - `http_hook`: an outside HTTP service, asked only from reader threads.
//!
//! Owns: loading the files (and reloading them on SIGHUP, keeping the old rules when a file is
//! broken), the CONNECT decision, and per-connection state (`ClientAuth`: credentials for the
//! re-check after a reload, the HTTP answer cache). Must not: run password hashing or HTTP on
//! the router thread; hold its lock while hashing or doing I/O.

pub mod acl;
pub mod http_hook;
pub mod identity;
pub mod passwd_tool;
pub mod password_file;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use parking_lot::{Mutex, RwLock};

pub use acl::{Access, Acl};
pub use http_hook::HttpHook;
pub use identity::{Authorizers, Identity, RecoveredAcl};
pub use password_file::PasswordFile;

use crate::config::Security;

/// The loaded files; replaced whole on reload.
#[derive(Debug, Default)]
struct Rules {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
}

/// One listener's (or every listener's) authentication and access rules.
#[derive(Debug)]
pub struct Authorizer {
    settings: Security,
    allow_anonymous: bool,
    rules: RwLock<Arc<Rules>>,
    /// Bumped by each successful reload: connections re-check their credentials when it moved.
    generation: AtomicU64,
    http: Option<HttpHook>,
}

/// Why a CONNECT was refused (mosquitto 2 answers every case "not authorised").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Anonymous,
    BadCredentials,
}

impl Authorizer {
    /// Reads the files `settings` names. `None` when nothing is configured and anonymous
    /// clients are allowed: then no check is made anywhere.
    pub fn load(settings: &Security) -> Result<Option<Arc<Authorizer>>, String> {
        let allow_anonymous = settings.allow_anonymous.unwrap_or(true);
        let nothing = settings.password_file.is_none()
            && settings.acl_file.is_none()
            && settings.http_auth.is_none();
        if nothing && allow_anonymous {
            return Ok(None);
        }
        let rules = read_rules(settings)?;
        Ok(Some(Arc::new(Authorizer {
            settings: settings.clone(),
            allow_anonymous,
            rules: RwLock::new(Arc::new(rules)),
            generation: AtomicU64::new(0),
            http: settings.http_auth.clone().map(HttpHook::new),
        })))
    }

    /// Reads the files again. On an error the old rules stay in force and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let rules = read_rules(&self.settings)?;
        *self.rules.write() = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn has_acl(&self) -> bool {
        self.rules.read().acl.is_some()
    }

    /// Decides a CONNECT. Runs the password hash or the HTTP request: call it on the client's
    /// reader thread only.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: SocketAddr,
    ) -> Result<(), Refusal> {
        let Some(username) = username else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(Refusal::Anonymous)
            };
        };
        let rules = Arc::clone(&*self.rules.read());
        if let Some(passwords) = &rules.passwords {
            if passwords.contains(username) {
                return if passwords.verify(username, password) {
                    Ok(())
                } else {
                    Err(Refusal::BadCredentials)
                };
            }
        }
        if let Some(http) = &self.http {
            return if http.connect(client_id, Some(username), password, peer) {
                Ok(())
            } else {
                Err(Refusal::BadCredentials)
            };
        }
        if rules.passwords.is_some() || !self.allow_anonymous {
            Err(Refusal::BadCredentials)
        } else {
            Ok(())
        }
    }

    /// The ACL file's answer (true without an ACL file). Pure CPU: the router may call it.
    pub fn acl_allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        match &self.rules.read().acl {
            Some(acl) => acl.check(client_id, username, topic, access),
            None => true,
        }
    }
}

fn read_rules(settings: &Security) -> Result<Rules, String> {
    let passwords = match &settings.password_file {
        Some(path) => Some(read_with(path, PasswordFile::parse)?),
        None => None,
    };
    let acl = match &settings.acl_file {
        Some(path) => Some(read_with(path, Acl::parse)?),
        None => None,
    };
    Ok(Rules { passwords, acl })
}

fn read_with<T>(path: &Path, parse: fn(&str) -> Result<T, (usize, String)>) -> Result<T, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|(line, why)| format!("{}:{line}: {why}", path.display()))
}

/// A connected client's identity, as the router needs it to check read access per delivery
/// (and write access for its will).
#[derive(Debug, Clone)]
pub struct ReadAcl {
    authorizer: Arc<Authorizer>,
    client_id: Arc<str>,
    username: Option<Arc<str>>,
}

impl ReadAcl {
    /// May this client receive a message published to `topic`?
    pub fn may_read(&self, topic: &str) -> bool {
        self.authorizer.acl_allows(
            &self.client_id,
            self.username.as_deref(),
            topic,
            Access::Read,
        )
    }

    /// May this client's will be published to `topic`?
    pub fn may_write(&self, topic: &str) -> bool {
        self.authorizer.acl_allows(
            &self.client_id,
            self.username.as_deref(),
            topic,
            Access::Write,
        )
    }
}

/// A connection's authentication state, kept by its reader.
#[derive(Debug)]
pub struct ClientAuth {
    authorizer: Arc<Authorizer>,
    client_id: Arc<str>,
    username: Option<Arc<str>>,
    password: Option<Vec<u8>>,
    peer: SocketAddr,
    generation: u64,
    /// HTTP answers: (topic, access) -> (allowed, when asked).
    cache: HashMap<(String, &'static str), (bool, Instant)>,
}

/// Longest HTTP answer cache of one connection; cleared when full.
const CACHE_LIMIT: usize = 1024;

impl ClientAuth {
    /// Authenticates a CONNECT; on success, the state the reader keeps.
    pub fn connect(
        authorizer: &Arc<Authorizer>,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: SocketAddr,
    ) -> Result<ClientAuth, Refusal> {
        let generation = authorizer.generation.load(Ordering::Acquire);
        authorizer.authenticate(client_id, username, password, peer)?;
        Ok(ClientAuth {
            authorizer: Arc::clone(authorizer),
            client_id: client_id.into(),
            username: username.map(Into::into),
            password: password.map(<[u8]>::to_vec),
            peer,
            generation,
            cache: HashMap::new(),
        })
    }

    /// What the router needs for per-delivery read checks; None without an ACL file.
    pub fn read_acl(&self) -> Option<ReadAcl> {
        self.authorizer.has_acl().then(|| ReadAcl {
            authorizer: Arc::clone(&self.authorizer),
            client_id: Arc::clone(&self.client_id),
            username: self.username.clone(),
        })
    }

    /// After a reload, checks the credentials again (once per reload); false if they no longer
    /// pass.
    pub fn still_valid(&mut self) -> bool {
        let now = self.authorizer.generation.load(Ordering::Acquire);
        if now == self.generation {
            return true;
        }
        self.generation = now;
        self.cache.clear();
        let ok = self
            .authorizer
            .authenticate(
                &self.client_id,
                self.username.as_deref(),
                self.password.as_deref(),
                self.peer,
            )
            .is_ok();
        if !ok {
            info!(
                "client {}: credentials no longer accepted after reload",
                self.client_id
            );
        }
        ok
    }

    /// May this client publish to `topic` (ACL file, then the HTTP service)?
    pub fn may_publish(&mut self, topic: &str) -> bool {
        self.authorizer.acl_allows(
            &self.client_id,
            self.username.as_deref(),
            topic,
            Access::Write,
        ) && self.ask_http(topic, "publish")
    }

    /// May this client subscribe to `filter`? A filter without wildcards is refused when the
    /// ACL file denies reading that topic, since nothing could ever be delivered to it; a
    /// wildcard filter is granted and each message is checked on delivery, as mosquitto does.
    pub fn may_subscribe(&mut self, filter: &str) -> bool {
        let plain = !filter.contains(['+', '#']) && !filter.starts_with("$share/");
        (!plain
            || self.authorizer.acl_allows(
                &self.client_id,
                self.username.as_deref(),
                filter,
                Access::Read,
            ))
            && self.ask_http(filter, "subscribe")
    }

    fn ask_http(&mut self, topic: &str, access: &'static str) -> bool {
        let Some(http) = &self.authorizer.http else {
            return true;
        };
        let ttl = http.settings().cache_ttl;
        let key = (topic.to_string(), access);
        if let Some(&(allowed, at)) = self.cache.get(&key) {
            if at.elapsed() < ttl {
                return allowed;
            }
        }
        let allowed = http.acl(&self.client_id, self.username.as_deref(), topic, access);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(key, (allowed, Instant::now()));
        allowed
    }
}

/// Every authorizer of a broker, for SIGHUP.
#[derive(Clone, Default)]
pub struct Reloader {
    authorizers: Arc<Mutex<Vec<Arc<Authorizer>>>>,
}

impl Reloader {
    pub fn add(&self, authorizer: &Arc<Authorizer>) {
        let mut list = self.authorizers.lock();
        if !list.iter().any(|a| Arc::ptr_eq(a, authorizer)) {
            list.push(Arc::clone(authorizer));
        }
    }

    /// Reloads every password and ACL file; a broken one keeps its old rules (logged).
    pub fn reload(&self) {
        let list: Vec<Arc<Authorizer>> = self.authorizers.lock().clone();
        for authorizer in list {
            match authorizer.reload() {
                Ok(()) => info!("reloaded password and ACL files"),
                Err(e) => warn!("reload failed, keeping the previous rules: {e}"),
            }
        }
    }
}
