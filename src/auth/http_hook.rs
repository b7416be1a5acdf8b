//! Authentication and authorisation by an outside HTTP service, in the style of
//! mosquitto-go-auth's and EMQX's HTTP backends.
//!
//! `POST {auth_http_url}/connect` with `{"clientid","username","password","address"}` on
//! CONNECT, and `POST {auth_http_url}/acl` with `{"clientid","username","topic","access"}`
//! (access `"publish"` or `"subscribe"`) on PUBLISH and SUBSCRIBE. A 2xx answer allows, a 4xx
//! denies; no answer within the timeout, or a 5xx, gives `auth_http_on_error`.
//!
//! Owns: the request bodies and the reading of answers. Must not: run on the router thread;
//! it blocks for up to the timeout, so only a client's own reader thread calls it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use log::warn;

use crate::config::HttpAuth;

/// A configured hook; cheap to share between reader threads.
#[derive(Debug)]
pub struct HttpHook {
    settings: HttpAuth,
    agent: ureq::Agent,
}

impl HttpHook {
    pub fn new(settings: HttpAuth) -> HttpHook {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(settings.timeout)
            .timeout(settings.timeout)
            .build();
        HttpHook { settings, agent }
    }

    pub fn settings(&self) -> &HttpAuth {
        &self.settings
    }

    /// Asks whether a client may connect.
    pub fn connect(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        address: SocketAddr,
    ) -> bool {
        let password = password.map(String::from_utf8_lossy);
        let body = json(&[
            ("clientid", Some(client_id)),
            ("username", username),
            ("password", password.as_deref()),
            ("address", Some(&address.to_string())),
        ]);
        self.ask("connect", &body)
    }

    /// Asks whether a client may publish to or subscribe to `topic`.
    pub fn acl(&self, client_id: &str, username: Option<&str>, topic: &str, access: &str) -> bool {
        let body = json(&[
            ("clientid", Some(client_id)),
            ("username", username),
            ("topic", Some(topic)),
            ("access", Some(access)),
        ]);
        self.ask("acl", &body)
    }

    fn ask(&self, what: &str, body: &str) -> bool {
        let url = format!("{}/{what}", self.settings.url.trim_end_matches('/'));
        let on_error = self.settings.allow_on_error;
        match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(body)
        {
            Ok(_) => true,
            Err(ureq::Error::Status(code, _)) if (400..500).contains(&code) => false,
            Err(ureq::Error::Status(code, _)) => {
                warn!(
                    "auth service {url} answered {code}; treating as {}",
                    verdict(on_error)
                );
                on_error
            }
            Err(e) => {
                warn!(
                    "auth service {url} unreachable ({e}); treating as {}",
                    verdict(on_error)
                );
                on_error
            }
        }
    }
}

fn verdict(allow: bool) -> &'static str {
    if allow {
        "allowed"
    } else {
        "denied"
    }
}

/// A flat JSON object of strings (null for None).
fn json(fields: &[(&str, Option<&str>)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, key);
        out.push(':');
        match value {
            Some(value) => push_string(&mut out, value),
            None => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_escaped_json() {
        assert_eq!(
            json(&[("a", Some("x\"y\\z\n\u{1}")), ("b", None)]),
            r#"{"a":"x\"y\\z\n\u0001","b":null}"#
        );
    }
}
