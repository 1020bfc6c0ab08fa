//! The DANE probe (RFC 7672): what a destination's DNSSEC-signed MX and
//! TLSA records say about the TLS it can receive. The validating resolver
//! and the DANE certificate check it rests on live in `net::dane`, which
//! delivery uses too.

use std::sync::Arc;

use serde_json::json;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::capability::TlsRequirement;
use crate::net::dane::{Dane, Dnssec, HostTlsa, Tlsa};
use crate::net::route::MAX_MX_HOSTS;

/// The DANE probe.
pub struct DaneProbe(pub Arc<Dane>);

impl Probe for DaneProbe {
    fn name(&self) -> &'static str {
        "dane"
    }

    fn cache_key(&self, recipient: &str) -> String {
        crate::queue::domain_of(recipient)
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        Box::pin(async move { check(&self.0, &crate::queue::domain_of(recipient)).await })
    }
}

/// The DANE status of a destination domain, with evidence: `dane`
/// when a host of the secure MX set has usable TLSA records,
/// `encrypted` (mandatory TLS, RFC 7672 section 2.2) when the only
/// secure TLSA records there are unusable, nothing when no host has a
/// secure TLSA RRset or the MX set is insecure.
pub async fn check(dane: &Dane, domain: &str) -> ProbeAnswer {
    let (status, mut hosts) = match dane.validated_mx(domain).await {
        Ok(v) => v,
        Err(e) => {
            return ProbeAnswer {
                result: Err(e),
                evidence: json!({ "domain": domain, "dnssec": "bogus-or-failed" }),
            };
        }
    };
    if status == Dnssec::Insecure {
        return ProbeAnswer {
            result: Ok(Vec::new()),
            evidence: json!({ "domain": domain, "dnssec": "insecure", "dane": false }),
        };
    }
    // RFC 7505 null MX: the domain takes no mail; route.rs says so.
    if hosts.len() == 1 && hosts[0].1.is_empty() {
        return ProbeAnswer {
            result: Ok(Vec::new()),
            evidence: json!({ "domain": domain, "dnssec": "secure", "null_mx": true, "dane": false }),
        };
    }
    if hosts.is_empty() {
        hosts.push((0, domain.to_string()));
    }
    // As many as delivery tries, most preferred first.
    hosts.sort_by_key(|h| h.0);
    hosts.truncate(MAX_MX_HOSTS);
    let mut per_host = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut any_usable = false;
    let mut any_unusable = false;
    for (pref, host) in &hosts {
        match dane.tlsa(host).await {
            Ok(t) => {
                any_usable |= matches!(t, HostTlsa::Usable { .. });
                any_unusable |= matches!(t, HostTlsa::Unusable(_));
                per_host.push(json!({
                    "host": host, "preference": pref,
                    "tlsa": t.all().iter().map(Tlsa::describe).collect::<Vec<_>>(),
                    "usable": matches!(t, HostTlsa::Usable { .. }),
                    "tls_required": !matches!(t, HostTlsa::None),
                }));
            }
            Err(e) => {
                // RFC 7672 section 2.2: a host whose TLSA lookup is
                // bogus or fails is unusable; others may still serve.
                per_host.push(json!({ "host": host, "preference": pref, "error": e }));
                errors.push(e);
            }
        }
    }
    if !any_usable && !errors.is_empty() {
        return ProbeAnswer {
            result: Err(errors.join("; ")),
            evidence: json!({ "domain": domain, "dnssec": "secure", "mx": per_host }),
        };
    }
    let evidence =
        json!({ "domain": domain, "dnssec": "secure", "mx": per_host, "dane": any_usable });
    let caps = if any_usable {
        vec![Capability::Tls {
            level: TlsRequirement::Dane,
        }]
    } else if any_unusable {
        // Secure but unusable TLSA is not "no DANE": TLS is mandatory,
        // unauthenticated allowed, never cleartext.
        vec![Capability::Tls {
            level: TlsRequirement::Encrypted,
        }]
    } else {
        Vec::new()
    };
    ProbeAnswer {
        result: Ok(caps),
        evidence,
    }
}
