//! The subject of an X.509 certificate, for `use_identity_as_username` and
//! `use_subject_as_username`.
//!
//! Owns: a minimal DER walk from a certificate to its subject name, and the subject's two
//! renderings (the common name, and the RFC 2253 string that mosquitto takes from OpenSSL).
//! Must not: verify anything; rustls has verified the certificate before this reads it.

/// One attribute of a subject: its type (an OID's DER bytes) and its value as text.
struct Attribute {
    oid: Vec<u8>,
    value: String,
}

/// A subject name: its relative distinguished names in certificate order, each a set of
/// attributes.
pub(super) struct Subject {
    rdns: Vec<Vec<Attribute>>,
}

/// OID 2.5.4.3, commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Short names OpenSSL prints for the usual attribute types.
const SHORT_NAMES: &[(&[u8], &str)] = &[
    (COMMON_NAME, "CN"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x09], "street"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "UID",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

impl Subject {
    /// The first common name, as `use_identity_as_username` takes it.
    pub(super) fn common_name(&self) -> Option<String> {
        self.rdns
            .iter()
            .flatten()
            .find(|a| a.oid == COMMON_NAME)
            .map(|a| a.value.clone())
    }

    /// The RFC 2253 rendering (last RDN first, `,` between RDNs, `+` within one), as
    /// `use_subject_as_username` takes it.
    pub(super) fn rfc2253(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.rdns.iter().rev().enumerate() {
            if i > 0 {
                out.push(',');
            }
            for (j, attribute) in rdn.iter().enumerate() {
                if j > 0 {
                    out.push('+');
                }
                match SHORT_NAMES.iter().find(|(oid, _)| *oid == attribute.oid) {
                    Some((_, name)) => out.push_str(name),
                    None => out.push_str(&dotted(&attribute.oid)),
                }
                out.push('=');
                escape_into(&attribute.value, &mut out);
            }
        }
        out
    }
}

/// Reads the subject of a DER certificate; None if it is not one.
pub(super) fn subject(der: &[u8]) -> Option<Subject> {
    let (certificate, _) = element(der, 0x30)?;
    let (tbs, _) = element(certificate, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    rest = element(rest, 0x02)?.1; // serialNumber
    rest = element(rest, 0x30)?.1; // signature algorithm
    rest = element(rest, 0x30)?.1; // issuer
    rest = element(rest, 0x30)?.1; // validity
    let (mut name, _) = element(rest, 0x30)?; // subject
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, after) = element(name, 0x31)?;
        name = after;
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (pair, after) = element(set, 0x30)?;
            set = after;
            let (oid, value) = element(pair, 0x06)?;
            let (&tag, _) = value.split_first()?;
            let (bytes, _) = element(value, tag)?;
            rdn.push(Attribute {
                oid: oid.to_vec(),
                value: text(tag, bytes),
            });
        }
        rdns.push(rdn);
    }
    Some(Subject { rdns })
}

/// The contents of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let count = usize::from(len & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A string attribute value as text; other types as `#` and their hex, as RFC 2253 says.
fn text(tag: u8, bytes: &[u8]) -> String {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => String::from_utf8_lossy(bytes).into_owned(),
        // TeletexString: taken as Latin-1, as OpenSSL does
        0x14 => bytes.iter().map(|&b| char::from(b)).collect(),
        // BMPString: UTF-16BE
        0x1e => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => {
            let mut hex = String::from("#");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        }
    }
}

/// An OID's dotted form, for attribute types without a short name.
fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first);
                parts.push(value - first * 40);
            } else {
                parts.push(value);
            }
            value = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// RFC 2253 section 2.4: `,+"\<>;` escaped, and a leading `#` or space and a trailing space.
fn escape_into(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element of `tag` around `content`.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn rdn(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let pair = [der(0x06, oid), der(tag, value.as_bytes())].concat();
        der(0x31, &der(0x30, &pair))
    }

    fn certificate(subject: &[u8]) -> Vec<u8> {
        let tbs = [
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1, 2, 3]),
            der(0x30, &der(0x06, &[0x2a, 0x86, 0x48])),
            der(0x30, &rdn(COMMON_NAME, 0x0c, "issuer")),
            der(
                0x30,
                &[der(0x17, b"250101000000Z"), der(0x17, b"350101000000Z")].concat(),
            ),
            der(0x30, subject),
            der(0x30, &[0; 200]),
        ]
        .concat();
        der(0x30, &[der(0x30, &tbs), der(0x30, &[])].concat())
    }

    #[test]
    fn common_name_and_rfc2253_subject() {
        let subject = [
            rdn(&[0x55, 0x04, 0x06], 0x13, "GB"),
            rdn(&[0x55, 0x04, 0x0a], 0x0c, "Acme, Inc"),
            rdn(COMMON_NAME, 0x0c, "sensor-7"),
        ]
        .concat();
        let parsed = super::subject(&certificate(&subject)).expect("a certificate");
        assert_eq!(parsed.common_name().as_deref(), Some("sensor-7"));
        assert_eq!(parsed.rfc2253(), "CN=sensor-7,O=Acme\\, Inc,C=GB");
    }

    #[test]
    fn unknown_types_print_dotted_and_no_common_name_is_none() {
        let subject = rdn(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37], 0x0c, "x");
        let parsed = super::subject(&certificate(&subject)).expect("a certificate");
        assert_eq!(parsed.common_name(), None);
        assert_eq!(parsed.rfc2253(), "1.3.6.1.4.1.311=x");
    }

    #[test]
    fn truncated_input_is_none() {
        let cert = certificate(&rdn(COMMON_NAME, 0x0c, "a"));
        for cut in [0, 1, 5, cert.len() / 2, cert.len() - 1] {
            assert!(super::subject(&cert[..cut]).is_none(), "cut at {cut}");
        }
    }
}
