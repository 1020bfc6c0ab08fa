//! The TLS-offered probe: connects to the destination's first reachable
//! host, asks for STARTTLS, and checks the certificate against the
//! configured roots for the host name. A valid certificate means the
//! destination can meet the `verified` requirement; any destination can
//! meet `opportunistic`.

use std::sync::Arc;

use serde_json::json;

use super::{Capability, Dialer, Probe, ProbeAnswer, ProbeFuture};
use crate::capability::TlsRequirement;

/// What a STARTTLS check of a destination found, as the delivery side
/// reports it (see `Dialer::starttls_offered`).
pub enum Offered {
    /// No route: the MX lookup failed or the domain takes no mail.
    NoRoute(String),
    /// The first host that answered, with what its session showed (`host`,
    /// `ip`, `starttls`, and `tls` evidence or why STARTTLS failed), or why
    /// the check failed after it answered; `failures` are the hosts that
    /// could not be reached before it.
    Checked {
        route: serde_json::Value,
        answer: Result<serde_json::Value, String>,
        failures: Vec<String>,
    },
    /// No host of the route could be reached.
    Unreachable {
        route: serde_json::Value,
        failures: Vec<String>,
    },
}

/// See the module documentation.
pub struct TlsOffered {
    dialer: Arc<dyn Dialer>,
}

impl TlsOffered {
    /// A probe that connects as delivery does (its resolver, roots and
    /// timeouts).
    pub fn new(dialer: Arc<dyn Dialer>) -> TlsOffered {
        TlsOffered { dialer }
    }

    async fn check(&self, domain: &str) -> ProbeAnswer {
        match self.dialer.starttls_offered(domain).await {
            Offered::NoRoute(e) => ProbeAnswer {
                result: Err(e),
                evidence: json!({ "domain": domain }),
            },
            Offered::Checked {
                route,
                answer: Ok(evidence),
                failures,
            } => ProbeAnswer {
                result: Ok(vec![Capability::Tls {
                    level: level_of(&evidence),
                }]),
                evidence: json!({ "route": route, "checked": evidence, "earlier_failures": failures }),
            },
            Offered::Checked {
                route,
                answer: Err(e),
                failures,
            } => ProbeAnswer {
                result: Err(e),
                evidence: json!({ "route": route, "earlier_failures": failures }),
            },
            Offered::Unreachable { route, failures } => ProbeAnswer {
                result: Err(format!("no host for {domain} could be reached")),
                evidence: json!({ "route": route, "failures": failures }),
            },
        }
    }
}

/// The floor a checked session meets. A TLS session whose certificate does
/// not verify still meets an `encrypted` floor.
fn level_of(evidence: &serde_json::Value) -> TlsRequirement {
    if evidence["tls"]["cert_verified"] == true {
        TlsRequirement::Verified
    } else if evidence["tls"].is_object() {
        TlsRequirement::Encrypted
    } else {
        TlsRequirement::Opportunistic
    }
}

impl Probe for TlsOffered {
    fn name(&self) -> &'static str {
        "tls-offered"
    }

    fn cache_key(&self, recipient: &str) -> String {
        crate::queue::domain_of(recipient)
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move { self.check(&crate::queue::domain_of(recipient)).await })
    }
}
