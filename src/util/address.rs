//! The one canonical form of a mail address, shared by the listener (which
//! normalises every address once, when it parses MAIL and RCPT) and the
//! policy files (whose patterns must be written in the same form to match).
//!
//! Domain: A-labels (RFC 5890) through UTS #46 with the STD3 rules,
//! lowercase, without the trailing root dot; this is the form DNS, routing
//! and certificates use. Local part: its case is kept (it belongs to the
//! receiving system); quotes are dropped where they change nothing
//! (`"ceo"` is `ceo`) and kept, minimally escaped, where they are needed.

/// Longest domain in octets, without the trailing dot (RFC 1035 2.3.4).
const DOMAIN_MAX: usize = 253;
/// Longest label in octets.
const LABEL_MAX: usize = 63;

/// Why a domain has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("the domain is empty")]
    Empty,
    #[error("the domain has an empty label (two dots in a row, or a dot at the start)")]
    EmptyLabel,
    #[error("a domain label is longer than 63 octets")]
    LabelTooLong,
    #[error("the domain is longer than 253 octets")]
    TooLong,
    #[error("a domain label may hold only letters, digits and hyphens")]
    BadCharacter,
    #[error("a domain label may not start or end with a hyphen")]
    Hyphen,
    #[error("the domain is not a valid internationalised domain name (IDNA)")]
    Idna,
}

/// Why a local part has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("the local part is empty")]
    Empty,
    #[error("the local part is not a dot-atom or quoted string")]
    Syntax,
    #[error("the quoted local part has a character that may not be quoted")]
    BadQuotedCharacter,
}

/// The canonical form of `domain` (not an address literal): A-labels,
/// lowercase, one trailing root dot removed.
pub fn canonical_domain(domain: &str) -> Result<String, DomainError> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    if d.is_empty() {
        return Err(DomainError::Empty);
    }
    // ASCII names are checked first so the error says what is wrong; UTS
    // #46 then validates any `xn--` label (a fake A-label is refused) and
    // turns U-labels into A-labels.
    if d.is_ascii() {
        check_ascii(d)?;
    }
    let ascii = idna::uts46::Uts46::new()
        .to_ascii(
            d.as_bytes(),
            idna::uts46::AsciiDenyList::STD3,
            idna::uts46::Hyphens::CheckFirstLast,
            idna::uts46::DnsLength::Ignore,
        )
        .map_err(|_| DomainError::Idna)?;
    check_ascii(&ascii)?;
    Ok(ascii.into_owned())
}

/// Length, label and character rules of an ASCII host name.
fn check_ascii(d: &str) -> Result<(), DomainError> {
    if d.len() > DOMAIN_MAX {
        return Err(DomainError::TooLong);
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if label.len() > LABEL_MAX {
            return Err(DomainError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(DomainError::BadCharacter);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::Hyphen);
        }
    }
    Ok(())
}

/// RFC 5322 `atext`, extended to UTF-8 by RFC 6531.
pub fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// RFC 5321 `Dot-string`.
pub fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// The text a local part stands for: a dot-string as it is, a quoted
/// string with its quotes and escapes removed.
pub fn unquoted_local(local: &str) -> Result<String, LocalError> {
    let Some(inner) = local.strip_prefix('"') else {
        return if is_dot_string(local) {
            Ok(local.to_string())
        } else if local.is_empty() {
            Err(LocalError::Empty)
        } else {
            Err(LocalError::Syntax)
        };
    };
    let inner = inner.strip_suffix('"').ok_or(LocalError::Syntax)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        // RFC 5321 qtextSMTP and quoted-pairSMTP (plus UTF-8, RFC 6531).
        let c = match c {
            '\\' => match chars.next() {
                Some(e) if (' '..='~').contains(&e) => e,
                _ => return Err(LocalError::BadQuotedCharacter),
            },
            '"' => return Err(LocalError::Syntax),
            c if (' '..='~').contains(&c) || !c.is_ascii() => c,
            _ => return Err(LocalError::BadQuotedCharacter),
        };
        out.push(c);
    }
    if out.is_empty() {
        return Err(LocalError::Empty);
    }
    Ok(out)
}

/// The canonical wire form of a local part: unquoted when the text is a
/// dot-string, else quoted with only `"` and `\` escaped.
pub fn canonical_local(local: &str) -> Result<String, LocalError> {
    let text = unquoted_local(local)?;
    if is_dot_string(&text) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let long_label = "a".repeat(64);
        let long_domain = format!("{}.test", vec!["a".repeat(63); 4].join("."));
        // 61 characters, but its A-label has 68.
        let long_u_label = format!("ä{}.example", "x".repeat(60));
        let cases: Vec<(&str, Result<&str, DomainError>)> = vec![
            ("example.org", Ok("example.org")),
            ("Example.ORG", Ok("example.org")),
            ("gmail.com.", Ok("gmail.com")),
            ("bücher.example", Ok("xn--bcher-kva.example")),
            ("BÜCHER.example", Ok("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Ok("xn--bcher-kva.example")),
            ("XN--BCHER-KVA.EXAMPLE", Ok("xn--bcher-kva.example")),
            ("bücher.example.", Ok("xn--bcher-kva.example")),
            // Cyrillic "а" in a Latin name: a distinct A-label, never the
            // Latin name it imitates.
            ("pаypal.example", Ok("xn--pypal-4ve.example")),
            ("a--b.example", Ok("a--b.example")),
            ("", Err(DomainError::Empty)),
            (".", Err(DomainError::Empty)),
            ("b.c..", Err(DomainError::EmptyLabel)),
            ("example..org", Err(DomainError::EmptyLabel)),
            (".example.org", Err(DomainError::EmptyLabel)),
            (&long_label, Err(DomainError::LabelTooLong)),
            (&long_domain, Err(DomainError::TooLong)),
            ("ex_ample.org", Err(DomainError::BadCharacter)),
            ("-example.org", Err(DomainError::Hyphen)),
            ("example-.org", Err(DomainError::Hyphen)),
            // Fake A-labels: invalid Punycode, and Punycode of plain ASCII.
            ("xn--a.example", Err(DomainError::Idna)),
            ("xn--abc-.example", Err(DomainError::Hyphen)),
            // Latin and Hebrew in one label break the bidi rule.
            ("aא.example", Err(DomainError::Idna)),
            // A U-label whose A-label is longer than 63 octets.
            (&long_u_label, Err(DomainError::LabelTooLong)),
        ];
        for (input, want) in cases {
            assert_eq!(
                canonical_domain(input).as_deref().map_err(Clone::clone),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn local_parts() {
        let cases: Vec<(&str, Result<&str, LocalError>)> = vec![
            ("ceo", Ok("ceo")),
            ("CEO.Office", Ok("CEO.Office")),
            ("\"ceo\"", Ok("ceo")),
            ("\"c\\eo\"", Ok("ceo")),
            ("\"first.last\"", Ok("first.last")),
            ("\"john smith\"", Ok("\"john smith\"")),
            ("\"a..b\"", Ok("\"a..b\"")),
            ("\".a\"", Ok("\".a\"")),
            ("\"a\\\"b\"", Ok("\"a\\\"b\"")),
            ("\"a\\\\b\"", Ok("\"a\\\\b\"")),
            ("\"ü\"", Ok("ü")),
            ("\"\"", Err(LocalError::Empty)),
            ("\"a\tb\"", Err(LocalError::BadQuotedCharacter)),
            ("\"a\\\"", Err(LocalError::BadQuotedCharacter)),
            ("\"a\"b\"", Err(LocalError::Syntax)),
            ("a..b", Err(LocalError::Syntax)),
            ("", Err(LocalError::Empty)),
        ];
        for (input, want) in cases {
            assert_eq!(
                canonical_local(input).as_deref().map_err(Clone::clone),
                want,
                "{input}"
            );
        }
        assert_eq!(unquoted_local("\"a@b\"").as_deref(), Ok("a@b"));
        assert_eq!(unquoted_local("\"a%b\"").as_deref(), Ok("a%b"));
    }
}
