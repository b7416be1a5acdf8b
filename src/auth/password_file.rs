//! Password files exactly as mosquitto_passwd writes them: `user:hash` lines, with `$6$`
//! (salted SHA-512), `$7$` (PBKDF2-HMAC-SHA512, any salt length and iteration count) and
//! `$argon2id$` (PHC string) hashes; and the hashing that `mqtt-broker passwd` writes.
//!
//! Owns: parsing (pure: text in, users or an error with its line out), verification with a
//! constant-time comparison, and new `$7$` hashes. Must not: read files or run on the router
//! thread (hashing takes milliseconds by design; the reader thread of the client pays it).

use std::collections::HashMap;
use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Iterations mosquitto_passwd 2.0 uses for `$7$`, and so do we.
pub const PBKDF2_ITERATIONS: u32 = 101;
/// Salt length of mosquitto_passwd 2.0 (2.1 writes 64; both verify).
pub const SALT_LEN: usize = 12;

/// One stored hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$6$salt$hash`: SHA-512 over password then salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$argon2id$...`: the whole PHC string, checked by the argon2 crate.
    Argon2id(String),
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hash material in logs.
        match self {
            Hash::Sha512 { .. } => f.write_str("$6$..."),
            Hash::Pbkdf2 { iterations, .. } => write!(f, "$7${iterations}$..."),
            Hash::Argon2id(_) => f.write_str("$argon2id$..."),
        }
    }
}

impl Hash {
    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2id$") {
            let parsed =
                PasswordHash::new(text).map_err(|e| format!("bad $argon2id$ hash: {e}"))?;
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err("bad $argon2id$ hash: no salt or hash".into());
            }
            return Ok(Hash::Argon2id(text.to_string()));
        }
        let fields: Vec<&str> = text.split('$').collect();
        let decode = |field: &str| {
            STANDARD
                .decode(field)
                .map_err(|e| format!("bad base64 in hash: {e}"))
        };
        match fields.as_slice() {
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
                let hash = decode(hash)?;
                if hash.is_empty() {
                    return Err("empty hash".into());
                }
                Ok(Hash::Pbkdf2 {
                    iterations,
                    salt: decode(salt)?,
                    hash,
                })
            }
            _ => Err(
                "not a $6$, $7$ or $argon2id$ hash (plain-text passwords are not accepted; \
                 run mqtt-broker passwd -U or mosquitto_passwd -U)"
                    .into(),
            ),
        }
    }

    /// A new `$7$` hash of `password` with a random salt, as mosquitto_passwd 2.0 writes it.
    pub fn new_pbkdf2(password: &str) -> Result<Hash, String> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, PBKDF2_ITERATIONS, &mut hash);
        Ok(Hash::Pbkdf2 {
            iterations: PBKDF2_ITERATIONS,
            salt,
            hash,
        })
    }

    /// True if `password` matches; the final comparison takes the same time wherever the
    /// bytes differ.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                bool::from(derived.ct_eq(hash))
            }
            Hash::Argon2id(phc) => match PasswordHash::new(phc) {
                // The argon2 crate compares in constant time.
                Ok(parsed) => argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok(),
                Err(_) => false,
            },
        }
    }
}

impl fmt::Display for Hash {
    /// The text mosquitto_passwd writes after `user:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            Hash::Argon2id(phc) => f.write_str(phc),
        }
    }
}

/// The users of a password file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: Vec<(String, Hash)>,
    index: HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses a password file; an error names the 1-based line.
    pub fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut file = PasswordFile::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or((index + 1, "expected user:hash".to_string()))?;
            if user.is_empty() {
                return Err((index + 1, "empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|e| (index + 1, format!("user {user:?}: {e}")))?;
            file.set(user, hash);
        }
        Ok(file)
    }

    /// True if `user` is listed and `password` matches its hash.
    pub fn verify(&self, user: &str, password: Option<&[u8]>) -> bool {
        match (self.get(user), password) {
            (Some(hash), Some(password)) => hash.verify(password),
            _ => false,
        }
    }

    pub fn get(&self, user: &str) -> Option<&Hash> {
        self.index.get(user).map(|&i| &self.users[i].1)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.index.contains_key(user)
    }

    /// Adds `user` or replaces its hash, keeping its place.
    pub fn set(&mut self, user: &str, hash: Hash) {
        match self.index.get(user) {
            Some(&i) => self.users[i].1 = hash,
            None => {
                self.index.insert(user.to_string(), self.users.len());
                self.users.push((user.to_string(), hash));
            }
        }
    }

    /// Removes `user`; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.index.remove(user) else {
            return false;
        };
        self.users.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        true
    }

    /// The file's text, one `user:hash` line each.
    pub fn to_text(&self) -> String {
        self.users
            .iter()
            .map(|(user, hash)| format!("{user}:{hash}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-b pw alice secret`).
    const MOSQUITTO_2_0: &str = "alice:$7$101$5GfQ4BMbOEYbhwX3$dvEllCpB5AIMkOVJIdICRJmawt4xWnpogebIB4/kLiV4RdwaOIvHBBPQpXEOhY1ktx45dziVEmqZPYIov5w12Q==";

    fn pbkdf2_line(user: &str, password: &str, salt: &[u8], iterations: u32) -> String {
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut hash);
        let hash = Hash::Pbkdf2 {
            iterations,
            salt: salt.to_vec(),
            hash,
        };
        format!("{user}:{hash}")
    }

    #[test]
    fn verifies_every_format() {
        let sha512 = {
            let salt = b"0123456789ab".to_vec();
            let mut digest = Sha512::new();
            digest.update(b"pw6");
            digest.update(&salt);
            let hash = digest.finalize().to_vec();
            format!("u6:{}", Hash::Sha512 { salt, hash })
        };
        let argon = {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(b"sixteen byte sal").unwrap();
            let phc = argon2::Argon2::default()
                .hash_password(b"pwa", &salt)
                .unwrap()
                .to_string();
            format!("ua:{phc}")
        };
        let text = [
            MOSQUITTO_2_0.to_string(),
            pbkdf2_line("salt12", "pw12", &[7; 12], 101),
            pbkdf2_line("salt64", "pw64", &[9; 64], 1000),
            pbkdf2_line("iter1", "pw1", &[1; 12], 1),
            sha512,
            argon,
        ]
        .join("\n");
        let file = PasswordFile::parse(&text).unwrap();
        let cases: &[(&str, &str, bool)] = &[
            ("alice", "secret", true),
            ("alice", "Secret", false),
            ("alice", "", false),
            ("salt12", "pw12", true),
            ("salt64", "pw64", true),
            ("salt64", "pw12", false),
            ("iter1", "pw1", true),
            ("u6", "pw6", true),
            ("u6", "pw", false),
            ("ua", "pwa", true),
            ("ua", "pwb", false),
            ("nobody", "secret", false),
        ];
        for &(user, password, ok) in cases {
            assert_eq!(
                file.verify(user, Some(password.as_bytes())),
                ok,
                "{user}/{password}"
            );
        }
        assert!(!file.verify("alice", None));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("alice", 1, "user:hash"),
            ("# comment\n\nbob:plain", 3, "plain-text"),
            ("a:$7$x$AAAA$AAAA", 1, "iteration"),
            ("a:$7$0$AAAA$AAAA", 1, "iteration"),
            ("a:$6$!!$AAAA", 1, "base64"),
            (":$6$AAAA$AAAA", 1, "empty user"),
            ("a:$argon2id$nonsense", 1, "argon2id"),
        ];
        for &(text, line, message) in cases {
            let (at, why) = PasswordFile::parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}: {why}");
            assert!(why.contains(message), "{text:?}: {why}");
        }
    }

    #[test]
    fn new_hashes_round_trip_and_edit_in_place() {
        let mut file = PasswordFile::parse(MOSQUITTO_2_0).unwrap();
        file.set("bob", Hash::new_pbkdf2("b0b").unwrap());
        file.set("carol", Hash::new_pbkdf2("c").unwrap());
        file.set("alice", Hash::new_pbkdf2("new").unwrap());
        assert!(file.remove("bob"));
        assert!(!file.remove("bob"));
        let text = file.to_text();
        assert!(text.starts_with("alice:$7$101$"), "{text}");
        let again = PasswordFile::parse(&text).unwrap();
        assert!(again.verify("alice", Some(b"new")));
        assert!(again.verify("carol", Some(b"c")));
        assert!(!again.contains("bob"));
    }
}
