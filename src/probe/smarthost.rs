//! The smarthost probe: what the TLS floor means when every message goes
//! through `[delivery] smarthost`.
//!
//! The smarthost is a hop the operator chose, by name, in the
//! configuration: that name comes from an authenticated source, as an
//! MTA-STS policy's MX names do. So on a smarthost route
//!
//! - `dane` is met when the smarthost's own name publishes usable TLSA
//!   records under DNSSEC (`_port._tcp.host`) and the session is
//!   authenticated by them; when it publishes them, they must be used;
//! - `mta-sts` and `verified` are met when the smarthost's certificate
//!   verifies for the configured name under the system roots and
//!   `[tls] extra_ca` (what MTA-STS asks of an MX host);
//! - `encrypted` is met by TLS whose certificate does not verify;
//! - `opportunistic` by a smarthost without STARTTLS.
//!
//! Below `[delivery] smarthost_min_tls` (default `verified`) the probe
//! fails, so nothing is sent: an attacker who strips STARTTLS or offers
//! a bad certificate while the probe looks cannot open a weaker path for
//! a cache period. Credentials are sent only to an authenticated
//! smarthost (see `outbound`).
//!
//! The recipient domain's own DANE and MTA-STS policies govern the
//! smarthost's next hop, not ours: they are not probed. The probe connects
//! as delivery does (AUTH included, so wrong credentials show here) and
//! its answer is cached like any other; delivery checks the same again on
//! every connection, so a certificate that stops verifying makes mail
//! wait, never go with less.

use std::sync::Arc;

use serde_json::json;

use super::{Capability, Dialer, Probe, ProbeAnswer, ProbeFuture};
use crate::capability::TlsRequirement;
use crate::net::dane::{Dane, HostTlsa};
use crate::net::tls::TlsEvidence;

/// See the module documentation.
pub struct SmarthostProbe {
    dialer: Arc<dyn Dialer>,
    dane: Arc<Dane>,
}

impl SmarthostProbe {
    /// A probe of the configured smarthost.
    pub fn new(dialer: Arc<dyn Dialer>, dane: Arc<Dane>) -> SmarthostProbe {
        SmarthostProbe { dialer, dane }
    }

    async fn check(&self) -> ProbeAnswer {
        let Some((host, port)) = self.dialer.smarthost() else {
            return failed(json!({}), "no smarthost is configured".into());
        };
        let (host, port) = (host.to_string(), port);
        let at = format!("{host}:{port}");
        let mut unusable = false;
        let tlsa = match self.dane.tlsa_at(&host, port).await {
            Ok(HostTlsa::Usable { usable, .. }) => Some(usable),
            Ok(HostTlsa::Unusable(_)) => {
                unusable = true;
                None
            }
            Ok(HostTlsa::None) => None,
            // A bogus answer for our own hop: nothing about it can be
            // trusted (RFC 7672 section 2.2).
            Err(e) => {
                return failed(
                    json!({ "smarthost": at }),
                    format!("the DNSSEC answers for the smarthost {host} failed validation: {e}"),
                );
            }
        };
        let dane = tlsa.is_some();
        match self.dialer.smarthost_session(tlsa.as_deref()).await {
            Ok((checked, tls)) => {
                let level = level_of(dane, tls.as_ref());
                let floor = self.dialer.smarthost_floor();
                // Secure but unusable TLSA records make TLS mandatory
                // (RFC 7672 section 2.2); below the operator's floor the
                // smarthost is not used at all (a STARTTLS stripped while
                // probing must not open plaintext for a cache period).
                let needed = if unusable {
                    floor.max(TlsRequirement::Encrypted)
                } else {
                    floor
                };
                if level < needed {
                    return failed(
                        json!({ "smarthost": at, "checked": checked, "tls": tls, "meets": level.as_str() }),
                        format!(
                            "the smarthost {host} meets only {} TLS, below the {} it needs ({})",
                            level.as_str(),
                            needed.as_str(),
                            if unusable && needed > floor {
                                "its TLSA records make TLS mandatory"
                            } else {
                                "[delivery] smarthost_min_tls"
                            }
                        ),
                    );
                }
                ProbeAnswer {
                    result: Ok(vec![Capability::Tls { level }]),
                    evidence: json!({
                        "smarthost": at,
                        "checked": checked,
                        "tls": tls,
                        "meets": level.as_str(),
                        "why": why(level),
                    }),
                }
            }
            Err(e) if dane => failed(
                json!({ "smarthost": at, "tlsa": "usable" }),
                format!(
                    "the smarthost {host} publishes TLSA records but could not be reached authenticated by them: {e}"
                ),
            ),
            Err(e) => failed(
                json!({ "smarthost": at }),
                format!("the smarthost {host} could not be checked: {e}"),
            ),
        }
    }
}

/// The floor a checked smarthost session meets (see the module
/// documentation).
fn level_of(dane: bool, tls: Option<&TlsEvidence>) -> TlsRequirement {
    match tls {
        _ if dane => TlsRequirement::Dane,
        Some(t) if t.cert_verified => TlsRequirement::MtaSts,
        Some(_) => TlsRequirement::Encrypted,
        None => TlsRequirement::Opportunistic,
    }
}

fn why(level: TlsRequirement) -> &'static str {
    match level {
        TlsRequirement::Dane => "the smarthost was authenticated by its own TLSA records",
        TlsRequirement::MtaSts | TlsRequirement::Verified => {
            "the smarthost is named in the configuration and its certificate verified for that name, which meets the verified and mta-sts floors"
        }
        TlsRequirement::Encrypted => {
            "the smarthost's certificate did not verify for its name: only the encrypted floor is met"
        }
        TlsRequirement::Opportunistic => "the smarthost does not offer STARTTLS",
    }
}

fn failed(evidence: serde_json::Value, why: String) -> ProbeAnswer {
    ProbeAnswer {
        result: Err(why),
        evidence,
    }
}

impl Probe for SmarthostProbe {
    fn name(&self) -> &'static str {
        "smarthost"
    }

    /// One hop for every recipient.
    fn cache_key(&self, _recipient: &str) -> String {
        String::new()
    }

    fn probe<'a>(&'a self, _recipient: &'a str) -> ProbeFuture<'a> {
        Box::pin(self.check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(verified: bool) -> TlsEvidence {
        TlsEvidence {
            version: "TLSv1_3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            cert_verified: verified,
            cert_error: None,
            peer_cert_sha256: None,
            dane_match: None,
        }
    }

    #[test]
    fn each_kind_of_session_meets_its_floor_and_no_more() {
        assert_eq!(level_of(true, Some(&tls(false))), TlsRequirement::Dane);
        assert_eq!(level_of(false, Some(&tls(true))), TlsRequirement::MtaSts);
        assert_eq!(
            level_of(false, Some(&tls(false))),
            TlsRequirement::Encrypted
        );
        assert_eq!(level_of(false, None), TlsRequirement::Opportunistic);
    }
}
