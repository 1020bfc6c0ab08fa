//! Planning a group's delivery: the hosts it may go to, the TLS each must
//! meet and how each is authenticated (route, MTA-STS, DANE, smarthost),
//! before any connection is made.

use std::collections::HashMap;

use super::{AttemptEvidence, Deliverer, HopTlsa, classify, describe_all, tlsrpt};
use crate::capability::TlsRequirement;
use crate::net::dane::{HostTlsa, Tlsa};
use crate::net::mta_sts::{StsMode, StsPolicy};
use crate::net::route::Route;
use crate::policy::{Decision, Method};
use crate::queue::{QueuedMessage, RecipientOutcome, Verdict};

/// Usable TLSA records by host, and every host's records as RFC 8460
/// policy strings.
type TlsaHosts = (HashMap<String, Vec<Tlsa>>, HashMap<String, Vec<String>>);

/// What [`Deliverer::plan`] decided for a group.
pub(super) struct Plan {
    pub route: Route,
    /// What every connection must meet (at least the decision's level).
    pub requirement: TlsRequirement,
    /// Hosts authenticated by their usable TLSA records.
    pub dane_hosts: HashMap<String, Vec<Tlsa>>,
    /// Each DANE host's TLSA records, for TLS-RPT.
    pub tlsa_policies: HashMap<String, Vec<String>>,
    /// The MTA-STS policy TLS-RPT counts sessions under.
    pub sts_policy: Option<StsPolicy>,
}

impl Plan {
    /// What RFC 8460 counts `host`'s sessions under: its TLSA records,
    /// else the MTA-STS policy, if any.
    pub fn applied_for(&self, host: &str) -> tlsrpt::AppliedPolicy<'_> {
        match (self.tlsa_policies.get(host), &self.sts_policy) {
            (Some(records), _) => tlsrpt::AppliedPolicy::Tlsa(records.clone()),
            (None, Some(p)) => tlsrpt::AppliedPolicy::Sts(p),
            (None, None) => tlsrpt::AppliedPolicy::None,
        }
    }
}

impl Deliverer {
    /// Where and how a group goes: its hosts, the TLS each must meet and
    /// how each is authenticated, in the order the checks bind: methods
    /// this version can apply, the route, MTA-STS, DANE, the smarthost.
    pub(super) async fn plan(
        &self,
        msg: &QueuedMessage,
        domain: &str,
        members: &[(usize, Decision)],
        evidence: &mut AttemptEvidence,
    ) -> Result<Plan, RecipientOutcome> {
        let requirement = members
            .first()
            .map(|m| m.1.tls)
            .unwrap_or(TlsRequirement::Opportunistic);
        let requiretls = members.iter().any(|m| m.1.requiretls);
        let smarthost = self.uses_smarthost();
        // The domain's cached MTA-STS policy, looked up once: it binds the
        // route (enforce) and names what TLS-RPT counts sessions under.
        let sts = if smarthost {
            None
        } else {
            self.mta_sts.cached(domain).filter(|p| p.is_fresh())
        };
        if members
            .iter()
            .any(|m| !matches!(m.1.method, Method::Tls | Method::Pgp))
        {
            // Fail closed: this version cannot apply S/MIME or the portal,
            // so the recipient waits rather than going with less
            // protection than decided.
            let o = RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!(
                    "{} TLS cannot be verified by this version of sealgate; the message waits rather than going with less protection",
                    requirement.as_str()
                ),
                enhanced: Some("4.7.5".into()),
                remote: None,
            };
            return Err(o);
        }
        let (mut route, dnssec_mx, sts_cached) = self
            .route_step(msg, domain, members, requirement, requiretls, sts.as_ref())
            .await?;
        evidence.dnssec_mx = dnssec_mx;
        let mut requirement =
            self.sts_step(domain, &mut route, requirement, sts_cached, evidence)?;
        let (mut dane_hosts, tlsa_policies) = if dnssec_mx {
            self.dane_step(domain, &mut route, requirement, evidence)
                .await?
        } else {
            Default::default()
        };
        if smarthost {
            requirement = self
                .smarthost_step(domain, requirement, &mut dane_hosts)
                .await?;
        }
        evidence.route = Some(route.kind);
        evidence.hosts = route.hops.iter().map(|h| h.name.clone()).collect();
        evidence.tls_enforced = Some(requirement);
        // What RFC 8460 reports count for this domain's sessions: the TLSA
        // records of a DANE host, else the MTA-STS policy, if any.
        let sts_policy = sts.filter(|p| p.mode != StsMode::None);
        Ok(Plan {
            route,
            requirement,
            dane_hosts,
            tlsa_policies,
            sts_policy,
        })
    }

    /// The hosts for a group: exactly the validated MX set when the
    /// decision rests on DNSSEC or REQUIRETLS needs it, else the plain
    /// lookup (or the smarthost). Also the valid cached MTA-STS enforce
    /// policy, if one binds the delivery.
    async fn route_step(
        &self,
        msg: &QueuedMessage,
        domain: &str,
        members: &[(usize, Decision)],
        requirement: TlsRequirement,
        requiretls: bool,
        sts: Option<&StsPolicy>,
    ) -> Result<(Route, bool, Option<StsPolicy>), RecipientOutcome> {
        let smarthost = self.uses_smarthost();
        // A decision that rests on DNSSEC (DANE, or the mandatory TLS of a
        // secure but unusable TLSA RRset) is delivered to exactly the hosts
        // of the validated MX RRset, every name through the validating
        // resolver (RFC 7672 section 2.2.1): one forged answer from the
        // plain resolver must not choose the host.
        let published_ignored = members.iter().all(|m| m.1.published_ignored);
        let sts_cached = sts
            .filter(|p| !published_ignored && p.mode == StsMode::Enforce)
            .cloned();
        // REQUIRETLS needs MX names from DNSSEC unless an MTA-STS policy
        // confirms them (RFC 8689 section 4.2.1): checked again here, as
        // the zone may have changed since the decision.
        let secure_mx_needed = requirement == TlsRequirement::Dane
            || (requiretls && !smarthost && sts_cached.is_none());
        let dnssec_mx = !smarthost && (secure_mx_needed || members.iter().any(|m| m.1.dnssec_mx));
        let route = if dnssec_mx {
            self.validated_route_for(domain, secure_mx_needed).await
        } else {
            self.route_for(domain).await
        };
        let route = match route {
            Ok(r) => r,
            Err(e) => {
                let o = classify::route_error(&e);
                tracing::info!(queue_id = %msg.id, domain = %domain, error = %e, "no route");
                return Err(o);
            }
        };
        Ok((route, dnssec_mx, sts_cached))
    }

    /// MTA-STS binds: only the MX hosts the policy names, each over TLS
    /// with a certificate valid for its name (checked when connecting).
    fn sts_step(
        &self,
        domain: &str,
        route: &mut Route,
        requirement: TlsRequirement,
        sts_cached: Option<StsPolicy>,
        evidence: &mut AttemptEvidence,
    ) -> Result<TlsRequirement, RecipientOutcome> {
        let smarthost = self.uses_smarthost();
        let mut requirement = requirement;
        // MTA-STS (RFC 8461 section 4) binds every delivery to a domain with
        // a valid cached enforce policy, whatever level the decision named
        // and whatever the content method. DANE takes precedence (RFC 8461
        // section 2); an honoured `TLS-Required: No` sets it aside.
        let sts_enforce = if requirement == TlsRequirement::Dane {
            None
        } else {
            sts_cached
        };
        if requirement == TlsRequirement::MtaSts && sts_enforce.is_none() && !smarthost {
            let o = RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!(
                    "the MTA-STS policy of {domain} is no longer available; waiting rather than delivering without it"
                ),
                enhanced: Some("4.7.5".into()),
                remote: None,
            };
            return Err(o);
        }
        if let Some(policy) = &sts_enforce {
            // Only MX hosts the policy names, each over TLS with a
            // certificate valid for its name (checked when connecting).
            requirement = requirement.max(TlsRequirement::MtaSts);
            evidence.mta_sts =
                Some(serde_json::json!({ "id": policy.id, "mode": policy.mode, "mx": policy.mx }));
            let all: Vec<String> = route.hops.iter().map(|h| h.name.clone()).collect();
            route.hops.retain(|h| policy.matches(&h.name));
            if route.hops.is_empty() {
                let o = RecipientOutcome {
                    verdict: Verdict::Temporary,
                    reply: format!(
                        "no MX host of {domain} ({}) matches its MTA-STS policy ({})",
                        all.join(", "),
                        policy.mx.join(", ")
                    ),
                    enhanced: Some("4.7.5".into()),
                    remote: None,
                };
                for name in &all {
                    self.tlsrpt.record(
                        domain,
                        &tlsrpt::AppliedPolicy::Sts(policy),
                        name,
                        "",
                        tlsrpt::SessionResult::Failure("validation-failure"),
                    );
                }
                evidence.hosts = all;
                return Err(o);
            }
        }
        Ok(requirement)
    }

    /// The TLSA records of every host of a DNSSEC-secure MX set: the hosts
    /// that can be used and how each is authenticated.
    async fn dane_step(
        &self,
        domain: &str,
        route: &mut Route,
        requirement: TlsRequirement,
        evidence: &mut AttemptEvidence,
    ) -> Result<TlsaHosts, RecipientOutcome> {
        // DANE (RFC 7672 section 2.2): a `dane` decision goes only to hosts
        // with usable TLSA records, each authenticated by them; under the
        // mandatory TLS of an unusable TLSA RRset every host of the secure
        // MX set takes TLS (never cleartext) but a host whose TLSA lookup
        // is bogus or failed is skipped.
        let mut dane_hosts: HashMap<String, Vec<Tlsa>> = HashMap::new();
        let mut tlsa_policies: HashMap<String, Vec<String>> = HashMap::new();
        {
            let all: Vec<String> = route.hops.iter().map(|h| h.name.clone()).collect();
            let mut notes = Vec::new();
            let mut usable_hosts: Vec<String> = Vec::new();
            let record_failure = |host: &str, records: Vec<String>, kind: &'static str| {
                self.tlsrpt.record(
                    domain,
                    &tlsrpt::AppliedPolicy::Tlsa(records),
                    host,
                    "",
                    tlsrpt::SessionResult::Failure(kind),
                );
            };
            let answers = self.tlsa_of_hops(&route.hops).await;
            for (hop, answer) in route.hops.iter().zip(answers) {
                let dane_required = requirement == TlsRequirement::Dane;
                match answer {
                    Ok(HostTlsa::Usable { usable, all }) => {
                        tlsa_policies.insert(hop.name.clone(), describe_all(&all));
                        dane_hosts.insert(hop.name.clone(), usable);
                        usable_hosts.push(hop.name.clone());
                    }
                    Ok(HostTlsa::Unusable(all)) => {
                        let records = describe_all(&all);
                        if dane_required {
                            notes.push(format!(
                                "{}: only TLSA records unusable for SMTP ({})",
                                hop.name,
                                records.join(", ")
                            ));
                            record_failure(&hop.name, records, "tlsa-invalid");
                        } else {
                            tlsa_policies.insert(hop.name.clone(), records);
                            usable_hosts.push(hop.name.clone());
                        }
                    }
                    Ok(HostTlsa::None) => {
                        if dane_required {
                            notes.push(format!("{}: no usable TLSA records", hop.name));
                            record_failure(&hop.name, Vec::new(), "dane-required");
                        } else {
                            usable_hosts.push(hop.name.clone());
                        }
                    }
                    Err(e) => {
                        notes.push(format!("{}: {e}", hop.name));
                        record_failure(&hop.name, Vec::new(), "dnssec-invalid");
                    }
                }
            }
            route.hops.retain(|h| usable_hosts.contains(&h.name));
            if route.hops.is_empty() {
                let o = RecipientOutcome {
                    verdict: Verdict::Temporary,
                    reply: format!(
                        "no MX host of {domain} can be {} ({})",
                        if requirement == TlsRequirement::Dane {
                            "authenticated by DANE"
                        } else {
                            "reached with the TLS its DNSSEC-signed records require"
                        },
                        notes.join("; ")
                    ),
                    enhanced: Some("4.7.5".into()),
                    remote: None,
                };
                evidence.hosts = all;
                evidence.earlier_failures = notes;
                return Err(o);
            }
            evidence.earlier_failures.extend(notes);
        }
        Ok((dane_hosts, tlsa_policies))
    }

    /// The smarthost's floor and its own TLSA records.
    async fn smarthost_step(
        &self,
        domain: &str,
        requirement: TlsRequirement,
        dane_hosts: &mut HashMap<String, Vec<Tlsa>>,
    ) -> Result<TlsRequirement, RecipientOutcome> {
        let mut requirement = requirement;
        // On a smarthost route (see `probe::smarthost`): never less than
        // `[delivery] smarthost_min_tls`, and the smarthost's own TLSA
        // records, looked up again for every delivery, authenticate it
        // whenever they are usable (a `dane` decision waits if they are
        // gone) and make TLS mandatory when they are not.
        {
            requirement = requirement.max(self.smarthost_floor());
            match self.smarthost_tlsa(domain, requirement).await {
                Ok(HopTlsa::Usable(usable)) => {
                    requirement = TlsRequirement::Dane;
                    dane_hosts.insert(domain.to_string(), usable);
                }
                Ok(HopTlsa::Unusable) => {
                    requirement = requirement.max(TlsRequirement::Encrypted);
                }
                Ok(HopTlsa::None) => {}
                Err(why) => {
                    let o = RecipientOutcome {
                        verdict: Verdict::Temporary,
                        reply: why,
                        enhanced: Some("4.7.5".into()),
                        remote: None,
                    };
                    return Err(o);
                }
            }
        }
        Ok(requirement)
    }
}
