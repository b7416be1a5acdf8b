//! Topic names and topic filters: validation and matching.
//!
//! Owns: the rules for `/` levels, `+` and `#`, `$`-topics and shared-subscription filters.
//! Must not: keep state (the subscription index lives in `queue::subscriptions`).

use std::fmt;

/// Longest topic name or filter in bytes: it travels as a UTF-8 string with a 16-bit length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix marking an MQTT 5.0 shared subscription filter, `$share/{group}/{filter}`.
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    /// A topic name containing `+` or `#` [MQTT-3.3.2-2].
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level [MQTT-4.7.1-2/3].
    MisplacedWildcard,
    /// Contains U+0000 [MQTT-4.7.3-2].
    NullCharacter,
    /// `$share/` filter with an empty or wildcard group name, or no filter after it.
    InvalidSharedSubscription,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 65535 bytes",
            TopicError::WildcardInName => "topic name contains a wildcard character",
            TopicError::MisplacedWildcard => "wildcard does not occupy a whole level",
            TopicError::NullCharacter => "topic contains the null character",
            TopicError::InvalidSharedSubscription => "malformed shared subscription filter",
        };
        f.write_str(text)
    }
}

impl std::error::Error for TopicError {}

/// Rules shared by names and filters: non-empty [MQTT-4.7.3-1], fits the 16-bit length
/// prefix, and no U+0000 [MQTT-4.7.3-2].
fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    // Byte scan: U+0000 is the byte 0 in UTF-8 and never part of a longer sequence.
    if topic.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name from PUBLISH or a will.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    // Wildcards are for subscribers only [MQTT-3.3.2-2] [MQTT-4.7.1-1].
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter from SUBSCRIBE or UNSUBSCRIBE (including `$share/group/filter`).
///
/// A `$share/` filter whose group is empty or holds a wildcard, or that has no filter after
/// the group, is `InvalidSharedSubscription`; a filter part that breaks the ordinary rules
/// reports that rule's own error (e.g. `MisplacedWildcard` for `$share/g/a#`).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    match split_shared(filter) {
        None => check_filter_levels(filter),
        Some((group, inner)) => {
            // The group is one level of its own and must not be a pattern [MQTT-4.8.2-1/2].
            // `split_shared` already stopped the group at the first `/`.
            if group.is_empty() || group.bytes().any(|b| b == b'+' || b == b'#') {
                return Err(TopicError::InvalidSharedSubscription);
            }
            if inner.is_empty() {
                return Err(TopicError::InvalidSharedSubscription);
            }
            check_filter_levels(inner)
        }
    }
}

/// Wildcard placement in an ordinary (non-shared) filter. Empty levels are legal.
fn check_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        // `#` must be the whole final level [MQTT-4.7.1-2].
        if level.contains('#') && !(level == "#" && last) {
            return Err(TopicError::MisplacedWildcard);
        }
        // `+` must be a whole level, at any position [MQTT-4.7.1-3].
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `None` for an ordinary filter.
///
/// Without a group and a `/` after it (`$share/g`, `$share//a`) a filter is not shared but an
/// ordinary one that starts with `$share`, as mosquitto takes it. Otherwise it only splits,
/// never validates: `$share/g+/a` gives `("g+", "a")`, so callers that need a usable pair run
/// `validate_topic_filter` first.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    rest.split_once('/').filter(|(group, _)| !group.is_empty())
}

/// Whether a valid topic `filter` matches a valid topic `name`. A filter starting with a
/// wildcard does not match a name starting with `$` [MQTT-4.7.2-1].
///
/// A shared filter must be split with [`split_shared`] first: `$share/...` here is taken
/// literally. The result for an invalid filter is unspecified (but never a panic).
pub fn matches(filter: &str, name: &str) -> bool {
    // `$` topics (e.g. `$SYS`) are kept away from catch-all subscriptions [MQTT-4.7.2-1].
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // `#` covers the remaining levels, and also the parent when none remain
            // (`a/#` matches `a`) [MQTT-4.7.1-2].
            (Some("#"), _) => return true,
            // `+` stands for exactly one level, which may be empty.
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(case: &str, name: &str, want: Result<(), TopicError>) {
        assert_eq!(validate_topic_name(name), want, "{case}: name {name:?}");
    }

    fn check_filter(case: &str, filter: &str, want: Result<(), TopicError>) {
        assert_eq!(
            validate_topic_filter(filter),
            want,
            "{case}: filter {filter:?}"
        );
    }

    fn check_match(case: &str, filter: &str, name: &str, want: bool) {
        assert_eq!(
            matches(filter, name),
            want,
            "{case}: {filter:?} vs {name:?}"
        );
    }

    #[test]
    fn topic_names() {
        use TopicError::*;
        let long_ok = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        // Multi-byte characters count in bytes, not chars: 21846 * 3 bytes = 65538.
        let too_long_utf8 = "€".repeat(21_846);
        let cases: &[(&str, &str, Result<(), TopicError>)] = &[
            ("plain", "a/b/c", Ok(())),
            ("single level", "a", Ok(())),
            ("separator only", "/", Ok(())),
            ("leading separator", "/a", Ok(())),
            ("trailing separator", "a/", Ok(())),
            ("empty level", "a//b", Ok(())),
            ("space is a character", " ", Ok(())),
            ("dollar topic", "$SYS/broker/load", Ok(())),
            ("unicode", "zähler/€", Ok(())),
            ("MQTT-4.7.3-1 empty", "", Err(Empty)),
            ("max length", &long_ok, Ok(())),
            ("over max length", &too_long, Err(TooLong)),
            ("over max length in bytes", &too_long_utf8, Err(TooLong)),
            ("MQTT-4.7.3-2 null", "a/\0/b", Err(NullCharacter)),
            ("MQTT-4.7.3-2 only null", "\0", Err(NullCharacter)),
            ("MQTT-3.3.2-2 plus", "a/+/b", Err(WildcardInName)),
            ("MQTT-3.3.2-2 hash", "a/#", Err(WildcardInName)),
            ("MQTT-3.3.2-2 plus inside level", "a+b", Err(WildcardInName)),
            ("MQTT-3.3.2-2 hash inside level", "a#b", Err(WildcardInName)),
        ];
        for (case, name, want) in cases {
            check_name(case, name, *want);
        }
    }

    #[test]
    fn topic_filters() {
        use TopicError::*;
        let long_ok = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, &str, Result<(), TopicError>)] = &[
            ("plain", "a/b/c", Ok(())),
            ("MQTT-4.7.1-2 hash alone", "#", Ok(())),
            ("MQTT-4.7.1-2 hash last level", "a/#", Ok(())),
            ("MQTT-4.7.1-2 hash after empty level", "a//#", Ok(())),
            ("MQTT-4.7.1-2 hash after root separator", "/#", Ok(())),
            (
                "MQTT-4.7.1-2 hash glued to level",
                "a#",
                Err(MisplacedWildcard),
            ),
            (
                "MQTT-4.7.1-2 hash before level",
                "#a",
                Err(MisplacedWildcard),
            ),
            (
                "MQTT-4.7.1-2 hash in the middle",
                "a/#/b",
                Err(MisplacedWildcard),
            ),
            (
                "MQTT-4.7.1-2 hash then separator",
                "#/",
                Err(MisplacedWildcard),
            ),
            ("MQTT-4.7.1-2 double hash", "##", Err(MisplacedWildcard)),
            (
                "MQTT-4.7.1-2 two hash levels",
                "#/#",
                Err(MisplacedWildcard),
            ),
            ("MQTT-4.7.1-3 plus alone", "+", Ok(())),
            ("MQTT-4.7.1-3 plus middle", "a/+/b", Ok(())),
            ("MQTT-4.7.1-3 plus twice", "+/+", Ok(())),
            ("MQTT-4.7.1-3 plus and hash", "+/#", Ok(())),
            ("MQTT-4.7.1-3 plus first", "+/a", Ok(())),
            ("MQTT-4.7.1-3 plus last", "a/+", Ok(())),
            (
                "MQTT-4.7.1-3 plus glued after",
                "a+",
                Err(MisplacedWildcard),
            ),
            (
                "MQTT-4.7.1-3 plus glued before",
                "+a/b",
                Err(MisplacedWildcard),
            ),
            ("MQTT-4.7.1-3 double plus", "a/++", Err(MisplacedWildcard)),
            (
                "MQTT-4.7.1-3 plus hash level",
                "a/+#",
                Err(MisplacedWildcard),
            ),
            ("empty level", "a//b", Ok(())),
            ("leading separator", "/a", Ok(())),
            ("trailing separator", "a/", Ok(())),
            ("separator only", "/", Ok(())),
            ("dollar filter", "$SYS/#", Ok(())),
            ("MQTT-4.7.3-1 empty", "", Err(Empty)),
            ("max length", &long_ok, Ok(())),
            ("over max length", &too_long, Err(TooLong)),
            ("MQTT-4.7.3-2 null", "a/\0", Err(NullCharacter)),
            // `$share` without the trailing separator is an ordinary filter.
            ("not shared: bare $share", "$share", Ok(())),
            ("not shared: $shared prefix", "$shared/g/a", Ok(())),
            ("not shared: case differs", "$SHARE/g/a", Ok(())),
        ];
        for (case, filter, want) in cases {
            check_filter(case, filter, *want);
        }
    }

    #[test]
    fn shared_filters() {
        use TopicError::*;
        let cases: &[(&str, &str, Result<(), TopicError>)] = &[
            ("shared plain", "$share/g/a/b", Ok(())),
            ("shared hash", "$share/g/#", Ok(())),
            ("shared plus", "$share/group-1/+/x", Ok(())),
            ("shared filter of a separator", "$share/g//", Ok(())),
            ("shared dollar filter", "$share/g/$SYS/#", Ok(())),
            // Not shared at all, as mosquitto takes it: an ordinary filter.
            ("empty group", "$share//a", Ok(())),
            ("no filter", "$share/g", Ok(())),
            (
                "MQTT-4.8.2-2 plus group",
                "$share/+/a",
                Err(InvalidSharedSubscription),
            ),
            (
                "MQTT-4.8.2-2 hash group",
                "$share/#/a",
                Err(InvalidSharedSubscription),
            ),
            (
                "MQTT-4.8.2-2 group with plus",
                "$share/g+/a",
                Err(InvalidSharedSubscription),
            ),
            (
                "MQTT-4.8.2-2 group with hash",
                "$share/g#/a",
                Err(InvalidSharedSubscription),
            ),
            ("empty filter", "$share/g/", Err(InvalidSharedSubscription)),
            ("prefix only: an ordinary filter", "$share/", Ok(())),
            ("bad inner hash", "$share/g/a/#/b", Err(MisplacedWildcard)),
            ("bad inner plus", "$share/g/a+", Err(MisplacedWildcard)),
            ("null in group", "$share/\0/a", Err(NullCharacter)),
        ];
        for (case, filter, want) in cases {
            check_filter(case, filter, *want);
        }
    }

    #[test]
    fn split_shared_table() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("$share/g/a/b", Some(("g", "a/b"))),
            ("$share/g/#", Some(("g", "#"))),
            ("$share/g/", Some(("g", ""))),
            ("$share/g", None),
            ("$share//a", None),
            ("$share/", None),
            ("$share", None),
            ("$shared/g/a", None),
            ("a/$share/g/b", None),
            ("#", None),
        ];
        for (filter, want) in cases {
            assert_eq!(split_shared(filter), *want, "split {filter:?}");
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("exact", "a/b", "a/b", true),
            ("exact differs", "a/b", "a/c", false),
            ("case sensitive", "a/B", "a/b", false),
            ("filter shorter", "a", "a/b", false),
            ("filter longer", "a/b", "a", false),
            ("prefix is not a level", "a", "ab", false),
            ("plus one level", "a/+", "a/b", true),
            ("plus not two levels", "a/+", "a/b/c", false),
            ("plus not zero levels", "a/+", "a", false),
            ("plus empty level", "a/+", "a/", true),
            ("plus empty first level", "+/a", "/a", true),
            ("plus middle", "a/+/c", "a/b/c", true),
            ("plus middle empty", "a/+/c", "a//c", true),
            ("plus twice on separator", "+/+", "/", true),
            ("plus alone on separator", "+", "/", false),
            ("plus alone", "+", "a", true),
            ("hash all", "#", "a/b/c", true),
            ("hash single", "#", "a", true),
            ("hash separator", "#", "/", true),
            ("hash parent", "a/#", "a", true),
            ("hash child", "a/#", "a/b", true),
            ("hash grandchild", "a/#", "a/b/c", true),
            ("hash empty child", "a/#", "a/", true),
            ("hash other parent", "a/#", "b", false),
            ("hash not prefix", "a/#", "ab", false),
            ("hash deep parent", "a/b/#", "a", false),
            ("plus then hash", "+/#", "a", true),
            ("plus then hash deep", "+/#", "a/b/c", true),
            ("empty levels exact", "a//b", "a//b", true),
            ("empty level differs", "a//b", "a/b", false),
            ("leading separator", "/a", "/a", true),
            ("leading separator missing", "/a", "a", false),
            ("trailing separator", "a/", "a/", true),
            ("trailing separator missing", "a/", "a", false),
            ("MQTT-4.7.2-1 hash vs $", "#", "$SYS/x", false),
            ("MQTT-4.7.2-1 plus vs $", "+/x", "$SYS/x", false),
            ("MQTT-4.7.2-1 plus hash vs $", "+/#", "$SYS", false),
            ("MQTT-4.7.2-1 explicit $ hash", "$SYS/#", "$SYS/x", true),
            ("MQTT-4.7.2-1 explicit $ parent", "$SYS/#", "$SYS", true),
            ("MQTT-4.7.2-1 explicit $ plus", "$SYS/+", "$SYS/x", true),
            ("MQTT-4.7.2-1 exact $", "$SYS/x", "$SYS/x", true),
            ("$ later level is ordinary", "a/+", "a/$x", true),
            ("$ later level under hash", "#", "a/$x", true),
            ("dollar not first char", "+", "a$", true),
        ];
        for (case, filter, name, want) in cases {
            check_match(case, filter, name, *want);
        }
    }

    #[test]
    fn errors_display() {
        use TopicError::*;
        for e in [
            Empty,
            TooLong,
            WildcardInName,
            MisplacedWildcard,
            NullCharacter,
            InvalidSharedSubscription,
        ] {
            assert!(!e.to_string().is_empty(), "{e:?}");
        }
    }
}
