//! The TLS-offered probe: connects to the destination's first reachable
//! host, asks for STARTTLS, and checks the certificate against the
//! configured roots for the host name. A valid certificate means the
//! destination can meet the `verified` requirement; any destination can
//! meet `opportunistic`.

use std::sync::Arc;

use serde_json::json;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::capability::TlsRequirement;
use crate::outbound::Deliverer;
use crate::outbound::client::Connection;

/// See the module documentation.
pub struct TlsOffered {
    deliverer: Arc<Deliverer>,
}

impl TlsOffered {
    /// A probe that uses the delivery engine's resolver, roots and timeouts.
    pub fn new(deliverer: Arc<Deliverer>) -> TlsOffered {
        TlsOffered { deliverer }
    }

    async fn check(&self, domain: &str) -> ProbeAnswer {
        // A DNSSEC-signed MX set is taken as validated, as delivery takes
        // it: one forged answer from the plain resolver must not even get
        // a probe connection. Otherwise (unsigned, or no validating
        // resolver) the plain route, as before.
        let validated = self.deliverer.validated_route_for(domain, true).await.ok();
        let route = match validated {
            Some(r) => Ok(r),
            None => self.deliverer.route_for(domain).await,
        };
        let route = match route {
            Ok(r) => r,
            Err(e) => {
                return ProbeAnswer {
                    result: Err(e.to_string()),
                    evidence: json!({ "domain": domain }),
                };
            }
        };
        let mut failures = Vec::new();
        for hop in &route.hops {
            for addr in &hop.addrs {
                let mut conn =
                    match Connection::connect(&hop.name, *addr, self.deliverer.timeouts()).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(greeting)) => {
                            failures.push(format!(
                                "{} [{}]: {}",
                                hop.name,
                                addr.ip(),
                                greeting.one_line()
                            ));
                            continue;
                        }
                        Err(e) => {
                            failures.push(e.to_string());
                            continue;
                        }
                    };
                let helo = self.deliverer.helo_name().to_string();
                let answer = async {
                    let r = conn.ehlo(&helo).await.map_err(|e| e.to_string())?;
                    if r.code != 250 || !conn.ext.starttls {
                        return Ok::<_, String>(json!({ "host": hop.name, "ip": addr.ip().to_string(), "starttls": false }));
                    }
                    match conn.starttls(self.deliverer.tls_clients().opportunistic.clone(), &hop.name).await {
                        Ok(Ok(())) => {}
                        Ok(Err(refused)) => {
                            return Ok(json!({ "host": hop.name, "ip": addr.ip().to_string(), "starttls": true, "refused": refused.one_line() }));
                        }
                        Err(e) => return Ok(json!({ "host": hop.name, "ip": addr.ip().to_string(), "starttls": true, "handshake_error": e.to_string() })),
                    }
                    let facts = conn.tls.clone().unwrap_or_default();
                    let ev = self.deliverer.tls_evidence(&facts, &hop.name);
                    Ok(json!({ "host": hop.name, "ip": addr.ip().to_string(), "starttls": true, "tls": ev }))
                }
                .await;
                tokio::spawn(conn.quit());
                return match answer {
                    Ok(evidence) => {
                        // A TLS session whose certificate does not verify
                        // still meets an `encrypted` floor.
                        let level = if evidence["tls"]["cert_verified"] == true {
                            TlsRequirement::Verified
                        } else if evidence["tls"].is_object() {
                            TlsRequirement::Encrypted
                        } else {
                            TlsRequirement::Opportunistic
                        };
                        ProbeAnswer {
                            result: Ok(vec![Capability::Tls { level }]),
                            evidence: json!({ "route": route.kind, "checked": evidence, "earlier_failures": failures }),
                        }
                    }
                    Err(e) => ProbeAnswer {
                        result: Err(e),
                        evidence: json!({ "route": route.kind, "earlier_failures": failures }),
                    },
                };
            }
        }
        ProbeAnswer {
            result: Err(format!("no host for {domain} could be reached")),
            evidence: json!({ "route": route.kind, "failures": failures }),
        }
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
