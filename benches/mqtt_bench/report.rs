//! Result lines: one per scenario, as text for people, JSON, or key=value for scripts.
//!
//! Owns: the `Line` type and its three renderings. Must not: measure or judge anything; the
//! code that ran the scenario fills the fields and lists the problems.

use std::fmt::Write;

use crate::options::Format;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

/// The result of one scenario against one broker.
#[derive(Debug, Clone)]
pub struct Line {
    pub scenario: String,
    pub label: String,
    /// Named figures, in the order they are written.
    pub fields: Vec<(&'static str, Value)>,
    /// The figures as a person reads them.
    pub summary: String,
    /// Failed checks and errors; empty when the run passed.
    pub problems: Vec<String>,
}

impl Line {
    pub fn new(scenario: &str, label: &str) -> Self {
        Line {
            scenario: scenario.to_owned(),
            label: label.to_owned(),
            fields: Vec::new(),
            summary: String::new(),
            problems: Vec::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn int(&mut self, name: &'static str, value: u64) {
        self.fields.push((name, Value::Int(value)));
    }

    pub fn float(&mut self, name: &'static str, value: f64) {
        self.fields.push((name, Value::Float(value)));
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => self.render_json(),
            Format::Kv => self.render_kv(),
        }
    }

    fn render_text(&self) -> String {
        let mut out = String::new();
        if !self.label.is_empty() {
            let _ = write!(out, "{:<10} ", self.label);
        }
        let _ = write!(out, "{:<12} {}", self.scenario, self.summary);
        if self.ok() {
            out.push_str("  [ok]");
        } else {
            let _ = write!(out, "  [FAIL: {}]", self.problems.join("; "));
        }
        out
    }

    fn render_json(&self) -> String {
        let mut out = String::from("{");
        let _ = write!(
            out,
            "\"scenario\":{},\"broker\":{},\"ok\":{}",
            json_string(&self.scenario),
            json_string(&self.label),
            self.ok()
        );
        for (name, value) in &self.fields {
            let _ = write!(out, ",\"{name}\":");
            match value {
                Value::Int(v) => {
                    let _ = write!(out, "{v}");
                }
                Value::Float(v) if v.is_finite() => {
                    let _ = write!(out, "{v:.3}");
                }
                Value::Float(_) => out.push_str("null"),
            }
        }
        let problems: Vec<String> = self.problems.iter().map(|p| json_string(p)).collect();
        let _ = write!(out, ",\"problems\":[{}]}}", problems.join(","));
        out
    }

    /// `key=value` pairs separated by spaces; values never contain spaces (they become `_`).
    fn render_kv(&self) -> String {
        let mut out = format!(
            "RESULT scenario={} broker={} ok={}",
            kv(&self.scenario),
            kv(&self.label),
            u8::from(self.ok())
        );
        for (name, value) in &self.fields {
            let _ = match value {
                Value::Int(v) => write!(out, " {name}={v}"),
                Value::Float(v) => write!(out, " {name}={v:.3}"),
            };
        }
        if !self.ok() {
            let _ = write!(out, " problems={}", kv(&self.problems.join(";")));
        }
        out
    }
}

fn kv(text: &str) -> String {
    if text.is_empty() {
        return "-".into();
    }
    text.chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A latency in nanoseconds as milliseconds with three significant decimals.
pub fn millis(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// A size in KiB as MiB.
pub fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Line {
        let mut line = Line::new("fanout-q1", "ours");
        line.int("delivered", 10);
        line.float("rate", 2.5);
        line.summary = "10 delivered".into();
        line
    }

    #[test]
    fn renderings() {
        let mut line = sample();
        assert_eq!(
            line.render(Format::Json),
            r#"{"scenario":"fanout-q1","broker":"ours","ok":true,"delivered":10,"rate":2.500,"problems":[]}"#
        );
        assert_eq!(
            line.render(Format::Kv),
            "RESULT scenario=fanout-q1 broker=ours ok=1 delivered=10 rate=2.500"
        );
        line.problems.push("loss 3".into());
        assert!(line
            .render(Format::Kv)
            .ends_with("ok=0 delivered=10 rate=2.500 problems=loss_3"));
        assert_eq!(
            line.render(Format::Text),
            "ours       fanout-q1    10 delivered  [FAIL: loss 3]"
        );
    }
}
