//! `mqtt-broker passwd`: mosquitto_passwd's command line, writing the same file format.
//!
//! `passwd [-c] FILE USER` (password asked on stdin), `passwd [-c] -b FILE USER PASSWORD`,
//! `passwd -D FILE USER`, `passwd -U FILE` (hash a file of plain-text passwords in place).
//!
//! Owns: argument handling and the file edit. Must not: be used by the broker at run time.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;

use super::password_file::{Hash, PasswordFile};

pub const USAGE: &str = "usage: mqtt-broker passwd [-c | -D] FILE USER\n       \
     mqtt-broker passwd [-c] -b FILE USER PASSWORD\n       \
     mqtt-broker passwd -U FILE";

/// Runs the subcommand with the arguments after `passwd`.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut create = false;
    let mut batch = false;
    let mut delete = false;
    let mut update = false;
    let mut rest = Vec::new();
    for arg in args {
        match arg.as_str() {
            "-c" => create = true,
            "-b" => batch = true,
            "-D" => delete = true,
            "-U" => update = true,
            "-H" => return Err("-H: only the default hash ($7$, PBKDF2-SHA512) is written".into()),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option {flag}\n{USAGE}"))
            }
            _ => rest.push(arg.as_str()),
        }
    }
    if create && (delete || update) {
        return Err(format!("-c cannot be used with -D or -U\n{USAGE}"));
    }
    if update {
        let [file] = rest[..] else {
            return Err(USAGE.into());
        };
        return hash_plain_file(Path::new(file));
    }
    let (file, user, password) = match (&rest[..], batch) {
        ([file, user, password], true) => (*file, *user, Some(password.to_string())),
        ([file, user], false) => (*file, *user, None),
        _ => return Err(USAGE.into()),
    };
    if user.contains(':') || user.is_empty() {
        return Err("a user name may not be empty or contain ':'".into());
    }
    let path = Path::new(file);
    let mut passwords = if create {
        PasswordFile::default()
    } else {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PasswordFile::parse(&text).map_err(|(line, why)| format!("{file}:{line}: {why}"))?
    };
    if delete {
        if !passwords.remove(user) {
            return Err(format!("user {user} not found"));
        }
    } else {
        let password = match password {
            Some(password) => password,
            None => ask_password()?,
        };
        passwords.set(user, Hash::new_pbkdf2(&password)?);
    }
    write_file(path, &passwords.to_text())
}

fn ask_password() -> Result<String, String> {
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut ask = |prompt: &str| -> Result<String, String> {
        eprint!("{prompt}");
        let _ = io::stderr().flush();
        match lines.next() {
            Some(Ok(line)) => Ok(line.trim_end_matches('\r').to_string()),
            _ => Err("no password given".into()),
        }
    };
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// `-U`: every `user:password` line with a plain-text password gets hashed.
fn hash_plain_file(path: &Path) -> Result<(), String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = String::new();
    for line in text.lines() {
        match line.split_once(':') {
            Some((user, secret)) if !line.starts_with('#') && !secret.starts_with('$') => {
                out.push_str(&format!("{user}:{}\n", Hash::new_pbkdf2(secret)?));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    write_file(path, &out)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp-passwd");
    fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
    }
    fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}
