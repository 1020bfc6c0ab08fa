//! Policy: for each recipient of each message, at delivery time, decide how
//! it must be protected, and keep the reasons.
//!
//! This is the seam the policy engine grows into: a [`Decision`] per
//! recipient, with the method, the TLS requirement for the hop, the rule
//! that decided and the policy version. Until rule files are interpreted,
//! every recipient gets the built-in rule: opportunistic TLS.

use serde::{Deserialize, Serialize};

/// How a recipient is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// TLS with a certificate valid for the MX name under the configured roots.
    Verified,
    /// MTA-STS enforce (RFC 8461).
    MtaSts,
    /// DANE TLSA under DNSSEC (RFC 7672).
    Dane,
}

impl TlsRequirement {
    /// The name used in config, audit rows and `probe`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRequirement::Opportunistic => "opportunistic",
            TlsRequirement::Verified => "verified",
            TlsRequirement::MtaSts => "mta-sts",
            TlsRequirement::Dane => "dane",
        }
    }
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub method: Method,
    pub tls: TlsRequirement,
    pub sign: bool,
    /// Name of the rule that decided.
    pub rule: String,
    /// Hash of the loaded policy files.
    pub policy_version: String,
}

/// Errors loading policy files.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {path}: {reason}")]
    File { path: String, reason: String },
}

/// The loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    files: Vec<std::path::PathBuf>,
}

impl Policy {
    /// Loads the files matching `patterns` (in order); the version is the
    /// SHA-256 of their names and contents, so any change is visible in
    /// the audit rows.
    pub fn load(patterns: &[String]) -> Result<Policy, PolicyError> {
        let mut files = Vec::new();
        for pat in patterns {
            let paths = glob::glob(pat).map_err(|e| PolicyError::File {
                path: pat.clone(),
                reason: e.to_string(),
            })?;
            let mut matched: Vec<_> = paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            matched.sort();
            files.extend(matched);
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for f in &files {
            let data = std::fs::read(f).map_err(|e| PolicyError::File {
                path: f.display().to_string(),
                reason: e.to_string(),
            })?;
            ctx.update(f.display().to_string().as_bytes());
            ctx.update(&[0]);
            ctx.update(&data);
            ctx.update(&[0]);
        }
        let version = hex::encode(&ctx.finish().as_ref()[..8]);
        Ok(Policy { version, files })
    }

    /// The policy version (short hash).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The files that were loaded.
    pub fn files(&self) -> &[std::path::PathBuf] {
        &self.files
    }

    /// Decides for one recipient.
    pub fn decide(&self, _sender: &str, _recipient: &str) -> Decision {
        Decision {
            method: Method::Tls,
            tls: TlsRequirement::Opportunistic,
            sign: false,
            rule: "builtin-opportunistic".into(),
            policy_version: self.version.clone(),
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
        assert!(TlsRequirement::Verified > TlsRequirement::Opportunistic);
    }

    #[test]
    fn version_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, "x = 1").unwrap();
        let pat = vec![dir.path().join("*.toml").display().to_string()];
        let v1 = Policy::load(&pat).unwrap().version().to_string();
        std::fs::write(&f, "x = 2").unwrap();
        let v2 = Policy::load(&pat).unwrap().version().to_string();
        assert_ne!(v1, v2);
    }
}
