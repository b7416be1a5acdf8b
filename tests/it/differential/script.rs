//! The exchanges' script language (see the harness's doc comment): parsing the
//! `tests/data/differential/*.txt` files into cases.
//!
//! Owns: `Case`, `Step` and the byte notation. Must not: talk to a broker.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) enum Step {
    Send(String, Vec<u8>),
    Expect(String),
    Close(String),
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub name: String,
    pub origin: String,
    pub steps: Vec<Step>,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/differential")
}

pub(super) fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = fs::read_dir(data_dir())
        .expect("tests/data/differential exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read a script");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        parse_script(&name, &text, &mut cases);
    }
    let mut names = BTreeSet::new();
    for case in &cases {
        assert!(names.insert(&case.name), "case {} twice", case.name);
    }
    cases
}

fn parse_script(file: &str, text: &str, cases: &mut Vec<Case>) {
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{file}:{}", n + 1);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if word == "case" {
            cases.push(Case {
                name: rest.to_string(),
                origin,
                steps: Vec::new(),
            });
            continue;
        }
        let case = cases
            .last_mut()
            .unwrap_or_else(|| panic!("{origin}: step before any case"));
        let step = if word == "wait" {
            Step::Wait(Duration::from_millis(
                rest.parse().unwrap_or_else(|_| panic!("{origin}: wait MS")),
            ))
        } else {
            let client = word.to_string();
            let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
            match verb {
                "send" => Step::Send(
                    client,
                    parse_bytes(args).unwrap_or_else(|e| panic!("{origin}: {e}")),
                ),
                "expect" => Step::Expect(client),
                "close" => Step::Close(client),
                _ => panic!("{origin}: unknown step {line:?}"),
            }
        };
        case.steps.push(step);
    }
}

/// Strips a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

/// Parses BYTES (see the module doc).
fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let bytes = parse_seq(&chars, &mut pos)?;
    if pos != chars.len() {
        return Err(format!("unexpected {:?} at {pos}", chars[pos]));
    }
    Ok(bytes)
}

fn parse_seq(chars: &[char], pos: &mut usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut nibble: Option<u8> = None;
    while *pos < chars.len() {
        let c = chars[*pos];
        if c == ']' {
            break;
        }
        *pos += 1;
        match c {
            ' ' | '\t' => {}
            '[' => {
                let inner = parse_seq(chars, pos)?;
                if chars.get(*pos) != Some(&']') {
                    return Err("unclosed [".into());
                }
                *pos += 1;
                write_varint(&mut out, inner.len());
                out.extend_from_slice(&inner);
            }
            '"' | '\'' => {
                let end = chars[*pos..]
                    .iter()
                    .position(|&x| x == c)
                    .ok_or("unclosed quote")?;
                let mut text: String = chars[*pos..*pos + end].iter().collect();
                *pos += end + 1;
                if chars.get(*pos) == Some(&'*') {
                    *pos += 1;
                    let digits: String = chars[*pos..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    *pos += digits.len();
                    let times: usize = digits.parse().map_err(|_| "x*N needs N")?;
                    text = text.repeat(times);
                }
                if c == '\'' {
                    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                }
                out.extend_from_slice(text.as_bytes());
            }
            h if h.is_ascii_hexdigit() => {
                let v = h.to_digit(16).expect("hex digit") as u8;
                match nibble.take() {
                    Some(high) => out.push(high << 4 | v),
                    None => nibble = Some(v),
                }
            }
            other => return Err(format!("unexpected {other:?}")),
        }
        if nibble.is_some() && !chars.get(*pos).is_some_and(|c| c.is_ascii_hexdigit()) {
            return Err("odd number of hex digits".into());
        }
    }
    Ok(out)
}

fn write_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_notation() {
        let cases: &[(&str, &[u8])] = &[
            ("10 02 00ff", &[0x10, 0x02, 0x00, 0xff]),
            ("'ab'", &[0, 2, b'a', b'b']),
            ("\"ab\"", b"ab"),
            ("30[ 'a' \"x\" ]", &[0x30, 4, 0, 1, b'a', b'x']),
            ("[]", &[0]),
            ("\"xy\"*3", b"xyxyxy"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text).as_deref(), Ok(*want), "{text}");
        }
        let long = parse_bytes("[\"a\"*200]").expect("valid");
        assert_eq!(&long[..2], &[0xC8, 0x01], "a two-byte length");
        for bad in ["1", "[00", "'ab", "zz"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn comments_outside_quotes_only() {
        assert_eq!(strip_comment("a send 00 # note"), "a send 00 ");
        assert_eq!(strip_comment("a send '#' # x"), "a send '#' ");
    }
}
