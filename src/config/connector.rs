//! Cloud connectors (`[[relay.connectors]]`): relay permission bound to an
//! organisation rather than to a network. Microsoft 365 and Google send for
//! every tenant in the world from the same addresses, so an address range
//! says nothing about whose mail it is; a client certificate from the
//! configured roots, with a matching name, plus the tenant stamped into the
//! message does.

use std::path::PathBuf;

/// One configured connector, validated.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    /// Name for logs and the queued message's client record (audit).
    pub name: String,
    /// Names the client certificate must carry (subject CN or a DNS SAN).
    pub cert_names: Vec<CertNamePattern>,
    /// PEM files or folders of CA certificates the client certificate must
    /// chain to.
    pub cert_roots: Vec<PathBuf>,
    /// Required `X-MS-Exchange-CrossTenant-Id` (lowercase), if any.
    pub tenant_id: Option<String>,
    /// Required `X-OriginatorOrg` (lowercase, no trailing dot), if any.
    pub originator_org: Option<String>,
    /// The roots are the organisation's own CA (`private_ca`): no tenant
    /// check needed. Refused at load if a root is a public one.
    pub private_ca: bool,
}

impl ConnectorSettings {
    /// Whether the message must carry tenant headers for this connector.
    pub fn checks_tenant(&self) -> bool {
        self.tenant_id.is_some() || self.originator_org.is_some()
    }
}

/// A configured certificate name: `host.example.org`, or `*.example.org`
/// for exactly one label in front of `example.org`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertNamePattern {
    /// The whole name, lowercase, no trailing dot.
    Exact(String),
    /// The part after `*.`, lowercase, no trailing dot.
    Wildcard(String),
}

impl CertNamePattern {
    /// Parses a configured name. A wildcard is only a whole leftmost label
    /// (`*.example.org`) followed by at least two labels, so `*.org`,
    /// `a*.example.org` and `a.*.example.org` are refused.
    pub fn parse(s: &str) -> Result<CertNamePattern, String> {
        let name = normalise(s);
        if let Some(suffix) = name.strip_prefix("*.") {
            if !is_dns_name(suffix) {
                return Err(format!(
                    "`{s}` is not `*.` followed by a host name such as *.mail.example.org"
                ));
            }
            if !suffix.contains('.') {
                return Err(format!(
                    "`{s}` is too wide: a wildcard needs at least two labels after `*.`"
                ));
            }
            return Ok(CertNamePattern::Wildcard(suffix.to_string()));
        }
        if name.contains('*') {
            return Err(format!(
                "`{s}`: a wildcard may only be the whole first label, as in *.example.org"
            ));
        }
        if !is_dns_name(&name) {
            return Err(format!("`{s}` is not a host name"));
        }
        Ok(CertNamePattern::Exact(name))
    }

    /// Whether a name presented in a certificate (a DNS SAN or the subject
    /// CN) falls under this pattern. A presented wildcard (`*.example.org`)
    /// matches only the same configured wildcard: it is not proof of any one
    /// host name.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = normalise(presented);
        match self {
            CertNamePattern::Exact(want) => !presented.contains('*') && presented == *want,
            CertNamePattern::Wildcard(suffix) => {
                let Some((first, rest)) = presented.split_once('.') else {
                    return false;
                };
                if rest != suffix {
                    return false;
                }
                first == "*" || (!first.is_empty() && !first.contains('*'))
            }
        }
    }
}

impl std::fmt::Display for CertNamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertNamePattern::Exact(n) => f.write_str(n),
            CertNamePattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Lowercase, surrounding space and one trailing dot removed.
fn normalise(s: &str) -> String {
    let s = s.trim();
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

/// Letters, digits, hyphens and underscores in non-empty labels of at most
/// 63 bytes (underscores occur in real certificate names).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `s` is a tenant id as Microsoft 365 writes it (a GUID,
/// `8-4-4-4-12` hex digits).
pub fn is_tenant_id(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> CertNamePattern {
        CertNamePattern::parse(s).unwrap()
    }

    #[test]
    fn exact_names_match_case_insensitively_and_ignore_a_trailing_dot() {
        let pat = p("Relay.Hospital.Example.");
        assert_eq!(pat, CertNamePattern::Exact("relay.hospital.example".into()));
        for yes in [
            "relay.hospital.example",
            "RELAY.HOSPITAL.EXAMPLE",
            "relay.hospital.example.",
        ] {
            assert!(pat.matches(yes), "{yes}");
        }
        for no in [
            "x.relay.hospital.example",
            "relay.hospital.example.evil.test",
            "relay.hospital.exampl",
            "elay.hospital.example",
            "*.hospital.example",
            "",
            ".",
        ] {
            assert!(!pat.matches(no), "{no}");
        }
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let pat = p("*.mail.protection.outlook.com");
        for yes in [
            "eur01.mail.protection.outlook.com",
            "EUR01.Mail.Protection.Outlook.Com.",
            "*.mail.protection.outlook.com",
        ] {
            assert!(pat.matches(yes), "{yes}");
        }
        for no in [
            // Not one label: none, or two.
            "mail.protection.outlook.com",
            "a.b.mail.protection.outlook.com",
            ".mail.protection.outlook.com",
            // Partial-label and misplaced wildcards in the certificate.
            "a*.mail.protection.outlook.com",
            "*a.mail.protection.outlook.com",
            "*.*.mail.protection.outlook.com",
            "a.*.protection.outlook.com",
            "*.protection.outlook.com",
            // Suffix tricks.
            "x.mail.protection.outlook.com.evil.test",
            "xmail.protection.outlook.com",
            "x.evilmail.protection.outlook.com",
            "",
        ] {
            assert!(!pat.matches(no), "{no}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "*",
            "*.",
            "*.com",
            "*.com.",
            "a*.example.org",
            "*a.example.org",
            "a.*.example.org",
            "*.*.example.org",
            "**.example.org",
            "ex*ample.org",
            "",
            " ",
            "a..b",
            "-a.example.org",
            "a b.example.org",
            "é.example.org",
        ] {
            assert!(
                CertNamePattern::parse(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(
            p("*.Example.ORG."),
            CertNamePattern::Wildcard("example.org".into())
        );
        assert_eq!(p("*.example.org").to_string(), "*.example.org");
    }

    #[test]
    fn tenant_ids_are_guids() {
        assert!(is_tenant_id("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        assert!(is_tenant_id("72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
        for bad in [
            "",
            "72f988bf86f141af91ab2d7cd011db47",
            "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
            "72f988bf-86f1-41af-91ab-2d7cd011db4",
            "72f988bf-86f1-41af-91ab-2d7cd011db47-",
            "g2f988bf-86f1-41af-91ab-2d7cd011db47",
            "hospital.example",
        ] {
            assert!(!is_tenant_id(bad), "{bad}");
        }
    }
}
