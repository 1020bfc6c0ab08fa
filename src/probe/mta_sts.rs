//! The MTA-STS probe (RFC 8461): an `enforce` policy raises the TLS
//! requirement to `mta-sts`. Policy discovery, the cache and the refresh
//! live in `net::mta_sts`, which delivery uses too.

use std::sync::Arc;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::capability::TlsRequirement;
use crate::net::mta_sts::{MtaSts, StsMode};

/// The MTA-STS probe: `enforce` policies raise the TLS requirement.
pub struct MtaStsProbe(pub Arc<MtaSts>);

impl Probe for MtaStsProbe {
    fn name(&self) -> &'static str {
        "mta-sts"
    }

    fn cache_key(&self, recipient: &str) -> String {
        crate::queue::domain_of(recipient)
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move {
            let domain = crate::queue::domain_of(recipient);
            let (res, evidence) = self.0.policy(&domain).await;
            let result = res.map(|p| match p {
                Some(p) if p.mode == StsMode::Enforce => vec![Capability::Tls {
                    level: TlsRequirement::MtaSts,
                }],
                _ => Vec::new(),
            });
            ProbeAnswer { result, evidence }
        })
    }
}
