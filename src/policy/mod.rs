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
/// Address and domain patterns (shared with the declared-capabilities probe).
pub use crate::util::pattern;
pub mod sandbox;
pub mod sniff;

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

/// What the hop must prove: the shared vocabulary (see
/// [`crate::capability`]).
pub use crate::capability::TlsRequirement;
