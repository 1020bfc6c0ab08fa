//! Address and domain patterns used in rules: `*` matches any run of
//! characters, `*.example.org` matches subdomains of example.org (not the
//! apex), a bare domain or address matches exactly; case-insensitive.
//!
//! Addresses reach the policy in their canonical form (A-label domain, no
//! trailing dot, needless quotes removed: [`crate::util::address`]), so
//! address and domain patterns are put into the same form when a policy
//! file is compiled: a rule written for `bücher.example` or
//! `gmail.com.` matches `xn--bcher-kva.example` and `gmail.com`.

use crate::util::address;

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    parts: Vec<String>,
}

impl Pattern {
    /// Compiles a pattern; `None` for an empty one.
    pub fn new(source: &str) -> Option<Pattern> {
        let s = source.trim().to_lowercase();
        if s.is_empty() {
            return None;
        }
        Some(Pattern {
            parts: s.split('*').map(str::to_string).collect(),
            source: s,
        })
    }

    /// Compiles a domain pattern in canonical form (A-labels, no trailing
    /// dot); a label holding `*` stays as written and must be ASCII.
    pub fn domain(source: &str) -> Result<Pattern, String> {
        let canonical = canonical_domain_pattern(source.trim())?;
        Pattern::new(&canonical).ok_or_else(|| "empty pattern".to_string())
    }

    /// Compiles an address pattern (`local@domain`, either side may hold
    /// `*`) with its domain in canonical form and needless quotes removed
    /// from its local part. A pattern without `@` (such as `*`) is kept.
    pub fn address(source: &str) -> Result<Pattern, String> {
        let s = source.trim();
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Pattern::new(s).ok_or_else(|| "empty pattern".to_string());
        };
        let local = if local.starts_with('"') && !local.contains('*') {
            address::canonical_local(local).map_err(|e| e.to_string())?
        } else {
            local.to_string()
        };
        let domain = canonical_domain_pattern(domain)?;
        Pattern::new(&format!("{local}@{domain}")).ok_or_else(|| "empty pattern".to_string())
    }

    /// The pattern as written (lowercased).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let t = text.to_lowercase();
        let parts = &self.parts;
        if parts.len() == 1 {
            return t == parts[0];
        }
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if !t.starts_with(first.as_str())
            || !t.ends_with(last.as_str())
            || t.len() < first.len() + last.len()
        {
            return false;
        }
        let mut rest = &t[first.len()..t.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid.as_str()) {
                Some(i) => rest = &rest[i + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A domain pattern in the canonical form of the domains it is matched
/// against. Wildcard labels cannot be converted to A-labels, so they must
/// be ASCII already.
fn canonical_domain_pattern(source: &str) -> Result<String, String> {
    if source.is_empty() {
        return Err("empty pattern".into());
    }
    if !source.contains('*') {
        return address::canonical_domain(source).map_err(|e| e.to_string());
    }
    let s = source.strip_suffix('.').unwrap_or(source);
    let mut labels = Vec::new();
    for label in s.split('.') {
        if label.contains('*') {
            if !label.is_ascii() {
                return Err(format!(
                    "`{label}`: a label with `*` must be ASCII; write the A-label (xn--...) form"
                ));
            }
            labels.push(label.to_ascii_lowercase());
        } else {
            labels.push(address::canonical_domain(label).map_err(|e| e.to_string())?);
        }
    }
    Ok(labels.join("."))
}

/// Any of `patterns` matches `text` (an empty list matches nothing).
pub fn any(patterns: &[Pattern], text: &str) -> bool {
    patterns.iter().any(|p| p.matches(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("example.org", "example.org", true),
            ("example.org", "EXAMPLE.org", true),
            ("example.org", "mail.example.org", false),
            ("*.example.org", "mail.example.org", true),
            ("*.example.org", "example.org", false),
            ("*@clinic.example", "dr.a@clinic.example", true),
            ("*@clinic.example", "dr.a@clinic.example.evil", false),
            ("billing-*@x.test", "billing-01@x.test", true),
            ("billing-*@x.test", "admin@x.test", false),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Pattern::new(p).unwrap().matches(t), want, "{p} ~ {t}");
        }
        assert!(Pattern::new("  ").is_none());
    }

    #[test]
    fn domain_and_address_patterns_take_the_canonical_form() {
        let cases = [
            // (pattern, kind, canonical text it matches, what must not match)
            ("gmail.com", "domain", "gmail.com", "gmail.com.evil"),
            ("gmail.com.", "domain", "gmail.com", "mail.gmail.com"),
            ("GMAIL.Com", "domain", "gmail.com", "gmail.co"),
            (
                "bücher.example",
                "domain",
                "xn--bcher-kva.example",
                "bucher.example",
            ),
            (
                "XN--BCHER-KVA.example",
                "domain",
                "xn--bcher-kva.example",
                "bücher.example",
            ),
            (
                "*.bücher.example",
                "domain",
                "a.xn--bcher-kva.example",
                "xn--bcher-kva.example",
            ),
            ("*", "domain", "anything.example", ""),
            (
                "*@bücher.example",
                "address",
                "dr.a@xn--bcher-kva.example",
                "dr.a@bucher.example",
            ),
            (
                "\"ceo\"@example.org",
                "address",
                "ceo@example.org",
                "\"ceo\"@example.org",
            ),
            ("v@gmail.com.", "address", "v@gmail.com", "v@gmail.com.evil"),
            (
                "*@*.bücher.example",
                "address",
                "a@b.xn--bcher-kva.example",
                "a@xn--bcher-kva.example",
            ),
            ("*", "address", "a@b.example", ""),
        ];
        for (p, kind, yes, no) in cases {
            let pat = match kind {
                "domain" => Pattern::domain(p),
                _ => Pattern::address(p),
            }
            .unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(pat.matches(yes), "{p} ~ {yes}");
            if !no.is_empty() {
                assert!(!pat.matches(no), "{p} !~ {no}");
            }
        }
        for bad in ["*ü.example", "a..b", "xn--a.example", "", "-a.example"] {
            assert!(Pattern::domain(bad).is_err(), "{bad}");
            assert!(Pattern::address(&format!("x@{bad}")).is_err(), "x@{bad}");
        }
    }
}
