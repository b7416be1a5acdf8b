//! ACL files in mosquitto's syntax and with its semantics: a pure parser and a matcher.
//!
//! `topic [read|write|readwrite|deny] TOPIC` lines before any `user` line are the rules of
//! anonymous clients; `user NAME` starts a user's rules; `pattern [access] TOPIC` rules apply
//! to every client, with `%c` (client id) and `%u` (username) substituted. A client's own rules
//! are checked before the patterns; within each list `deny` rules come first; a `$` topic is
//! matched only by rules that start with `$`; what no rule allows is denied.
//!
//! Owns: the rules and one decision function. Must not: read files, log, or allocate on the
//! common path (the router asks it once per message and receiver).

use std::collections::HashMap;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages published to it (checked per delivery).
    Read,
    /// Publish to it (also a will's topic).
    Write,
}

/// What a rule grants; `deny` grants nothing and refuses what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    topic: String,
    /// Patterns only: the topic uses `%u` (skipped for clients without a username).
    uses_username: bool,
}

/// A loaded ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses an ACL file; an error names the 1-based line.
    pub fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: String| (index + 1, why);
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map(|(k, r)| (k, r.trim()))
                .unwrap_or((line, ""));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(at("user without a name".into()));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(at)?;
                    let rule = Rule {
                        uses_username: keyword == "pattern" && rule.topic.contains("%u"),
                        ..rule
                    };
                    let list = match (keyword, &user) {
                        ("pattern", _) => &mut acl.patterns,
                        (_, Some(user)) => acl.users.get_mut(user).expect("added at `user`"),
                        (_, None) => &mut acl.anonymous,
                    };
                    list.push(rule);
                }
                _ => return Err(at(format!("unknown keyword {keyword:?}"))),
            }
        }
        // Deny rules are looked at first, the others in file order.
        for list in std::iter::once(&mut acl.anonymous)
            .chain(std::iter::once(&mut acl.patterns))
            .chain(acl.users.values_mut())
        {
            list.sort_by_key(|rule| rule.grant != Grant::Deny);
        }
        Ok(acl)
    }

    /// May the client `client_id` (with `username`, None for anonymous) have `access` to
    /// `topic`?
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        // A `+` or `#` in a name could widen a pattern; mosquitto refuses such clients outright.
        if client_id.contains(['+', '#']) || username.is_some_and(|u| u.contains(['+', '#'])) {
            return false;
        }
        let own = match username {
            Some(user) => self.users.get(user).map(Vec::as_slice),
            None => Some(self.anonymous.as_slice()),
        };
        for rule in own.unwrap_or(&[]) {
            if let Some(allowed) = decide(rule, &rule.topic, topic, access) {
                return allowed;
            }
        }
        for rule in &self.patterns {
            if rule.uses_username && username.is_none() {
                continue;
            }
            let user = username.unwrap_or("");
            let verdict =
                if rule.topic.starts_with('%') || client_id.contains('/') || user.contains('/') {
                    // A substitution that starts the topic or spans levels: substitute, then match.
                    let pattern = rule.topic.replace("%c", client_id).replace("%u", user);
                    decide(rule, &pattern, topic, access)
                } else {
                    decide_pattern(rule, client_id, user, topic, access)
                };
            if let Some(allowed) = verdict {
                return allowed;
            }
        }
        false
    }
}

/// `decide` for a pattern, substituting `%c` and `%u` level by level without allocating
/// (the router asks per delivery). Only for substitutions that stay within one level.
fn decide_pattern(
    rule: &Rule,
    client_id: &str,
    username: &str,
    topic: &str,
    access: Access,
) -> Option<bool> {
    if topic.starts_with('$') && !rule.topic.starts_with('$') {
        return None;
    }
    let mut topic_levels = topic.split('/');
    for level in rule.topic.split('/') {
        if level == "#" {
            return verdict(rule, access);
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level_equals(level, t, client_id, username) => {}
            _ => return None,
        }
    }
    if topic_levels.next().is_some() {
        return None;
    }
    verdict(rule, access)
}

/// What a rule that matched says about `access`: refuse (deny), allow, or nothing.
fn verdict(rule: &Rule, access: Access) -> Option<bool> {
    match rule.grant {
        Grant::Deny => Some(false),
        grant if grant.allows(access) => Some(true),
        _ => None,
    }
}

/// Whether `pattern` (one level, possibly with `%c`/`%u`) equals `level` once substituted.
fn level_equals(pattern: &str, mut level: &str, client_id: &str, username: &str) -> bool {
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        let (literal, tail) = rest.split_at(at);
        let Some(stripped) = level.strip_prefix(literal) else {
            return false;
        };
        level = stripped;
        let value = match tail.as_bytes().get(1) {
            Some(b'c') => client_id,
            Some(b'u') => username,
            _ => {
                // A lone '%': literal.
                let Some(stripped) = level.strip_prefix('%') else {
                    return false;
                };
                level = stripped;
                rest = &tail[1..];
                continue;
            }
        };
        let Some(stripped) = level.strip_prefix(value) else {
            return false;
        };
        level = stripped;
        rest = &tail[2..];
    }
    level == rest
}

/// Some(verdict) if `rule` (with its topic as `filter`) settles the question.
fn decide(rule: &Rule, filter: &str, topic: &str, access: Access) -> Option<bool> {
    // [MQTT-4.7.2-1] in spirit: `#` and `+` rules do not reach `$SYS` and other `$` topics.
    if topic.starts_with('$') && !filter.starts_with('$') {
        return None;
    }
    if !filter_matches(filter, topic) {
        return None;
    }
    verdict(rule, access)
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    if matches!(rest, "read" | "write" | "readwrite" | "deny") {
        return Err("rule without a topic".into());
    }
    let (grant, topic) = match rest.split_once(char::is_whitespace) {
        Some((word, topic)) => match word {
            "read" => (Grant::Read, topic.trim()),
            "write" => (Grant::Write, topic.trim()),
            "readwrite" => (Grant::ReadWrite, topic.trim()),
            "deny" => (Grant::Deny, topic.trim()),
            // No access word: the whole rest is the topic, read and write.
            _ => (Grant::ReadWrite, rest),
        },
        None => (Grant::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err("rule without a topic".into());
    }
    if topic.split('/').enumerate().any(|(i, level)| {
        (level.contains('#') && (level != "#" || i != topic.split('/').count() - 1))
            || (level.contains('+') && level != "+")
    }) {
        return Err(format!("{topic:?} is not a valid topic filter"));
    }
    Ok(Rule {
        grant,
        topic: topic.to_string(),
        uses_username: false,
    })
}

/// Topic filter matching, level by level (`a/#` also matches `a`). A wildcard in `topic` is
/// matched as a literal level: that is how SUBSCRIBE filters are checked.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::Access::{Read, Write};
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic write shared/in
topic deny alice/private
topic readwrite $SYS/broker/load/#

user bob
topic shared/both

pattern read devices/%c/#
pattern readwrite users/%u/inbox
";

    #[test]
    fn each_rule_form() {
        let acl = Acl::parse(FILE).unwrap();
        // (client id, username, topic, access, allowed)
        let cases: &[(&str, Option<&str>, &str, Access, bool)] = &[
            // Anonymous rules: only before any `user` line.
            ("c", None, "public/news", Read, true),
            ("c", None, "public/news", Write, false),
            ("c", None, "public/secret", Read, false),
            ("c", None, "alice/x", Read, false),
            // A user's rules: readwrite, write, deny first.
            ("c", Some("alice"), "alice/x", Read, true),
            ("c", Some("alice"), "alice/x", Write, true),
            ("c", Some("alice"), "alice/private", Read, false),
            ("c", Some("alice"), "shared/in", Write, true),
            ("c", Some("alice"), "shared/in", Read, false),
            ("c", Some("alice"), "public/news", Read, false),
            // No access word: readwrite.
            ("c", Some("bob"), "shared/both", Write, true),
            ("c", Some("bob"), "shared/both", Read, true),
            // Patterns: %c and %u, for every client; %u never for anonymous ones.
            ("dev1", None, "devices/dev1/temp", Read, true),
            ("dev1", Some("bob"), "devices/dev1/temp", Read, true),
            ("dev1", None, "devices/dev2/temp", Read, false),
            ("dev1", None, "devices/dev1/temp", Write, false),
            ("c", Some("carol"), "users/carol/inbox", Write, true),
            ("c", Some("carol"), "users/bob/inbox", Write, false),
            ("c", None, "users//inbox", Write, false),
            // Unknown user: only the patterns.
            ("c", Some("carol"), "public/news", Read, false),
            // `$` topics only match `$` rules.
            ("c", Some("alice"), "$SYS/broker/load/1min", Read, true),
            ("c", Some("alice"), "$SYS/broker/clients", Read, false),
            ("c", None, "$SYS/broker/load", Read, false),
            // Wildcards in names are refused outright.
            ("dev+", None, "devices/dev+/x", Read, false),
            ("c", Some("al#"), "public/news", Read, false),
        ];
        for &(client, user, topic, access, allowed) in cases {
            assert_eq!(
                acl.check(client, user, topic, access),
                allowed,
                "{client} {user:?} {topic} {access:?}"
            );
        }
    }

    #[test]
    fn hash_rule_does_not_reach_dollar_topics() {
        let acl = Acl::parse("topic readwrite #").unwrap();
        assert!(acl.check("c", None, "a/b", Read));
        assert!(!acl.check("c", None, "$SYS/x", Read));
        let acl = Acl::parse("topic readwrite #\ntopic readwrite $SYS/#").unwrap();
        assert!(acl.check("c", None, "$SYS/x", Read));
    }

    #[test]
    fn empty_file_denies_everything() {
        let acl = Acl::parse("# nothing\n").unwrap();
        assert!(!acl.check("c", None, "a", Read));
        assert!(!acl.check("c", Some("u"), "a", Write));
    }

    #[test]
    fn two_line_file_refuses_nosubscribe() {
        let acl = Acl::parse("topic readwrite #\ntopic deny test/nosubscribe\n").unwrap();
        assert!(!acl.check("c", None, "test/nosubscribe", Read));
        assert!(acl.check("c", None, "test/other", Read));
        // A filter is checked as a topic with literal wildcard levels.
        assert!(acl.check("c", None, "test/+", Read));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let cases: &[(&str, usize)] = &[
            ("topic read a\nsubject x", 2),
            ("\n\nuser", 3),
            ("topic read", 1),
            ("topic read a/#/b", 1),
            ("pattern write a+/b", 1),
        ];
        for &(text, line) in cases {
            assert_eq!(Acl::parse(text).unwrap_err().0, line, "{text:?}");
        }
    }

    #[test]
    fn patterns_match_without_substituting_the_whole_topic() {
        let acl =
            Acl::parse("pattern readwrite a/%c/b\npattern read x/%u-%c/%\npattern read p/#/\n");
        // (The last line is not a valid filter.)
        assert!(acl.is_err());
        let acl = Acl::parse("pattern readwrite a/%c/b\npattern read x/%u-%c/%z\n").unwrap();
        let cases: &[(&str, Option<&str>, &str, Access, bool)] = &[
            ("c1", None, "a/c1/b", Write, true),
            ("c1", None, "a/c2/b", Write, false),
            ("c1", None, "a/c1", Write, false),
            ("c1", None, "a/c1/b/d", Write, false),
            ("c1", Some("u"), "x/u-c1/%z", Read, true),
            ("c1", Some("u"), "x/u-c1/z", Read, false),
            ("c1", Some("u"), "x/u-c2/%z", Read, false),
            // A client id with '/' spans levels, as mosquitto's string substitution does.
            ("g/h", None, "a/g/h/b", Write, true),
        ];
        for &(client, user, topic, access, allowed) in cases {
            assert_eq!(
                acl.check(client, user, topic, access),
                allowed,
                "{client} {user:?} {topic}"
            );
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a//c", true),
            ("#", "a/b", true),
            ("a", "a/b", false),
            ("a/b", "a", false),
        ];
        for &(filter, topic, matches) in cases {
            assert_eq!(filter_matches(filter, topic), matches, "{filter} {topic}");
        }
    }
}
