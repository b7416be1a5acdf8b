//! A client's identity as the store keeps it with its session, and the broker's authorizers by
//! listener, so that a session recovered after a restart answers to the same ACL as before:
//! its delayed will is write-checked, what is queued for it is read-checked.
//!
//! Owns: `Identity` (the username and listener of the connection last attached to a session),
//! `Authorizers` (which authorizer a listener's clients answer to: the shared one, or with
//! `per_listener_settings` that listener's own) and `RecoveredAcl` (what a recovered session's
//! identity rebuilds to). Must not: load files (the broker hands in the authorizers it loaded,
//! so that SIGHUP reloads the very ones used here) or decide what is published.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Authorizer, ReadAcl};
use crate::config::Config;

/// Who a session's client was: enough to rebuild its `ReadAcl` after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub username: Option<Arc<str>>,
    /// The address of the listener it connected through (None: not through a listener, as a
    /// bridge's local session). Stable across restarts when the listener's port is configured,
    /// as mosquitto identifies a listener by its port.
    pub listener: Option<SocketAddr>,
}

impl Identity {
    /// A client connecting with `username` through the listener `config` was made for.
    pub fn of(username: Option<&str>, config: &Config) -> Identity {
        Identity {
            username: username.map(Arc::from),
            listener: config.listener_addr,
        }
    }
}

/// What a recovered session's stored identity rebuilds to.
#[derive(Debug, Clone)]
pub enum RecoveredAcl {
    /// No ACL applies to its listener: nothing to check.
    Open,
    /// Checked as before the restart.
    Known(ReadAcl),
    /// ACLs are configured but this session's identity cannot be rebuilt (a record written
    /// before identities were stored, or its listener is gone): its will is not published.
    Unknown,
}

/// The authorizer of each listener, as the broker loaded them before the router started.
#[derive(Debug, Clone, Default)]
pub struct Authorizers {
    /// `per_listener_settings false` (mosquitto's default): one authorizer for every listener.
    shared: Option<Arc<Authorizer>>,
    /// `per_listener_settings true`: each listener's own, by address.
    listeners: Option<Vec<(SocketAddr, Option<Arc<Authorizer>>)>>,
}

impl Authorizers {
    /// Every listener shares `authorizer`.
    pub fn shared(authorizer: Option<Arc<Authorizer>>) -> Authorizers {
        Authorizers {
            shared: authorizer,
            listeners: None,
        }
    }

    /// Each listener has its own (`per_listener_settings`).
    pub fn per_listener(listeners: Vec<(SocketAddr, Option<Arc<Authorizer>>)>) -> Authorizers {
        Authorizers {
            shared: None,
            listeners: Some(listeners),
        }
    }

    fn any_acl(&self) -> bool {
        match &self.listeners {
            None => self.shared.as_ref().is_some_and(|a| a.has_acl()),
            Some(list) => list
                .iter()
                .any(|(_, a)| a.as_ref().is_some_and(|a| a.has_acl())),
        }
    }

    /// The ACL of a recovered session of `client_id` that stored `identity`.
    pub fn recover(&self, client_id: &Arc<str>, identity: Option<&Identity>) -> RecoveredAcl {
        let Some(identity) = identity else {
            return self.unknown();
        };
        let authorizer = match &self.listeners {
            None => self.shared.as_ref(),
            Some(list) => {
                let found = identity
                    .listener
                    .and_then(|addr| list.iter().find(|(at, _)| *at == addr));
                match found {
                    Some((_, authorizer)) => authorizer.as_ref(),
                    None => return self.unknown(),
                }
            }
        };
        match authorizer.filter(|a| a.has_acl()) {
            Some(authorizer) => RecoveredAcl::Known(ReadAcl {
                authorizer: Arc::clone(authorizer),
                client_id: Arc::clone(client_id),
                username: identity.username.clone(),
            }),
            None => RecoveredAcl::Open,
        }
    }

    fn unknown(&self) -> RecoveredAcl {
        if self.any_acl() {
            RecoveredAcl::Unknown
        } else {
            RecoveredAcl::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Security;

    fn with_acl(dir: &std::path::Path, name: &str, rules: &str) -> Arc<Authorizer> {
        let path = dir.join(name);
        std::fs::write(&path, rules).expect("acl file");
        let settings = Security {
            acl_file: Some(path),
            ..Default::default()
        };
        Authorizer::load(&settings)
            .expect("loads")
            .expect("an authorizer")
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("identity-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_stored_identity_rebuilds_the_acl_of_its_listener() {
        let dir = temp_dir("rebuild");
        let a: SocketAddr = "127.0.0.1:1883".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1884".parse().expect("addr");
        let acl = with_acl(&dir, "acl", "user alice\ntopic write alice/#\n");
        let client: Arc<str> = "c".into();
        let alice = Identity {
            username: Some("alice".into()),
            listener: Some(a),
        };

        let shared = Authorizers::shared(Some(Arc::clone(&acl)));
        match shared.recover(&client, Some(&alice)) {
            RecoveredAcl::Known(read) => {
                assert!(read.may_write("alice/will"));
                assert!(!read.may_write("other/will"));
            }
            other => panic!("expected a rebuilt ACL, got {other:?}"),
        }
        // Without per-listener settings the listener does not matter; without an identity
        // (an old record) the ACL cannot be applied.
        let elsewhere = Identity {
            listener: Some(b),
            ..alice.clone()
        };
        assert!(matches!(
            shared.recover(&client, Some(&elsewhere)),
            RecoveredAcl::Known(_)
        ));
        assert!(matches!(
            shared.recover(&client, None),
            RecoveredAcl::Unknown
        ));

        let per = Authorizers::per_listener(vec![(a, Some(acl)), (b, None)]);
        assert!(matches!(
            per.recover(&client, Some(&alice)),
            RecoveredAcl::Known(_)
        ));
        assert!(matches!(
            per.recover(&client, Some(&elsewhere)),
            RecoveredAcl::Open
        ));
        let gone = Identity {
            listener: Some("127.0.0.1:9".parse().expect("addr")),
            ..alice.clone()
        };
        assert!(matches!(
            per.recover(&client, Some(&gone)),
            RecoveredAcl::Unknown
        ));

        // No ACL anywhere: nothing to check, whatever was stored.
        let open = Authorizers::default();
        assert!(matches!(open.recover(&client, None), RecoveredAcl::Open));
        assert!(matches!(
            open.recover(&client, Some(&alice)),
            RecoveredAcl::Open
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
