//! The vocabulary the stages share, beneath all of them: what a hop must
//! prove (`TlsRequirement`, ordered weakest first) and what a recipient
//! can receive (`Capability`, reported by the probes as `ProbeReport`s and
//! weighed by the policy), and what an operator declares a recipient can
//! receive (`Declared`). Plain values, no I/O.

use serde::{Deserialize, Serialize};

use crate::util::pattern::Pattern;

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

/// Something a recipient can receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Capability {
    /// The strongest TLS requirement the destination can satisfy.
    Tls { level: TlsRequirement },
    /// An OpenPGP key for the address.
    Pgp { fingerprint: String, source: String },
    /// A key was found but must not be used yet (it changed since the one
    /// last used, or the key store could not say which one that was): the
    /// recipient is held with `reason` until an operator decides, never
    /// sent with a weaker method meanwhile.
    PgpHeld { reason: String },
    /// An S/MIME certificate for the address.
    Smime { serial: String, source: String },
    /// The secure portal can serve the address.
    Portal,
}

/// What one probe said about one recipient.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub probe: &'static str,
    /// `Ok(capabilities)` or the reason the probe failed.
    #[serde(serialize_with = "ser_result")]
    pub result: Result<Vec<Capability>, String>,
    /// What the probe looked at (hosts, records, certificates).
    pub evidence: serde_json::Value,
    /// Whether the answer came from the cache.
    pub cached: bool,
}

fn ser_result<S: serde::Serializer>(
    r: &Result<Vec<Capability>, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    match r {
        Ok(c) => m.serialize_entry("capabilities", c)?,
        Err(e) => m.serialize_entry("error", e)?,
    }
    m.end()
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

/// One declaration: recipients matching `patterns` have `capabilities`.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub patterns: Vec<Pattern>,
    pub capabilities: Vec<Capability>,
    /// Where it was declared (`file:line`), for the evidence.
    pub origin: String,
}
