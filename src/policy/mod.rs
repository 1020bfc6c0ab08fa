//! Policy: for each recipient of each message, at delivery time, decide how
//! it must be protected, and keep the reasons.
//!
//! A [`Decision`] per recipient: the action, the method, the TLS
//! requirement for the hop, the rule that decided, the policy version and
//! the evidence. Rules come from TOML policy files (`file.rs`); what a
//! recipient can receive comes from the probes (`crate::probe`). Decisions
//! are made at delivery time, so a retried message is decided afresh.

pub mod detectors;
mod engine;
pub mod extract;
pub mod facts;
pub mod file;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod html;
pub mod pattern;
pub mod sandbox;

use serde::{Deserialize, Serialize};

pub use engine::*;

/// How a recipient is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Transport security only.
    Tls,
    /// OpenPGP end to end.
    Pgp,
    /// S/MIME end to end.
    Smime,
    /// Stored at the secure portal, notification sent.
    Portal,
    /// Refused by policy.
    Reject,
}

impl Method {
    /// Parses a method name from a policy file.
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "tls" => Method::Tls,
            "pgp" => Method::Pgp,
            "smime" => Method::Smime,
            "portal" => Method::Portal,
            "reject" => Method::Reject,
            _ => return None,
        })
    }

    /// The name used in config, audit rows and `probe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Tls => "tls",
            Method::Pgp => "pgp",
            Method::Smime => "smime",
            Method::Portal => "portal",
            Method::Reject => "reject",
        }
    }
}

/// What the hop to the recipient's mail server must prove, weakest first;
/// compared, never matched as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsRequirement {
    /// TLS when offered, plaintext otherwise (RFC 7435).
    Opportunistic,
    /// TLS required, the certificate not authenticated: never plaintext.
    /// What a DNSSEC-secure TLSA RRset with only unusable records asks for
    /// (RFC 7672 section 2.2).
    Encrypted,
    /// TLS with a certificate valid for the MX name under the configured roots.
    Verified,
    /// MTA-STS enforce (RFC 8461).
    MtaSts,
    /// DANE TLSA under DNSSEC (RFC 7672).
    Dane,
}

impl TlsRequirement {
    /// Parses a requirement name from a policy file.
    pub fn parse(s: &str) -> Option<TlsRequirement> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "opportunistic" => TlsRequirement::Opportunistic,
            "encrypted" => TlsRequirement::Encrypted,
            "verified" => TlsRequirement::Verified,
            "mta-sts" => TlsRequirement::MtaSts,
            "dane" => TlsRequirement::Dane,
            _ => return None,
        })
    }

    /// The name used in config, audit rows and `probe`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRequirement::Opportunistic => "opportunistic",
            TlsRequirement::Encrypted => "encrypted",
            TlsRequirement::Verified => "verified",
            TlsRequirement::MtaSts => "mta-sts",
            TlsRequirement::Dane => "dane",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_ordered() {
        assert!(TlsRequirement::Dane > TlsRequirement::MtaSts);
        assert!(TlsRequirement::MtaSts > TlsRequirement::Verified);
        assert!(TlsRequirement::Verified > TlsRequirement::Encrypted);
        assert!(TlsRequirement::Encrypted > TlsRequirement::Opportunistic);
        for t in [
            TlsRequirement::Opportunistic,
            TlsRequirement::Encrypted,
            TlsRequirement::Verified,
            TlsRequirement::MtaSts,
            TlsRequirement::Dane,
        ] {
            assert_eq!(TlsRequirement::parse(t.as_str()), Some(t));
        }
    }
}
