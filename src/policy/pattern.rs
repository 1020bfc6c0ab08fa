//! Address and domain patterns used in rules: `*` matches any run of
//! characters, `*.example.org` matches subdomains of example.org (not the
//! apex), a bare domain or address matches exactly; case-insensitive.

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
}
