//! Probes: what each recipient can really receive, with evidence.
//!
//! A probe takes a recipient and returns capabilities (a TLS level, an
//! OpenPGP key, an S/MIME certificate, the portal) with the evidence behind
//! them. Probes run concurrently for all recipients of a message, each
//! bounded by a timeout, and their results are cached with a TTL. A probe
//! that fails or times out yields an error, never a capability: the policy
//! then skips the methods that depend on it (fail closed).

pub mod dane;
pub mod keys;
pub mod mta_sts;
pub mod smarthost;
pub mod static_caps;
pub mod tls_offered;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::capability::{Capability, ProbeReport};

/// A probe's answer before caching.
#[derive(Debug, Clone)]
pub struct ProbeAnswer {
    pub result: Result<Vec<Capability>, String>,
    pub evidence: serde_json::Value,
}

/// A boxed future, so probes can be trait objects.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = ProbeAnswer> + Send + 'a>>;

/// A source of capabilities.
pub trait Probe: Send + Sync {
    /// Name in the evidence (`tls-offered`, `static`, `dane`, `wkd`...).
    fn name(&self) -> &'static str;
    /// What the answer depends on (the recipient domain for TLS, the full
    /// address for keys): answers are cached under this key.
    fn cache_key(&self, recipient: &str) -> String;
    /// Asks.
    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a>;
}

/// A boxed future of any output.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the connection probes (`tls-offered`, `smarthost`) ask of the
/// delivery side: sessions opened exactly as delivery opens them (same
/// route, resolver, roots, timeouts and HELO name), so what a probe sees
/// is what delivery will get. `outbound::Deliverer` provides it; the
/// probes never import `outbound`.
pub trait Dialer: Send + Sync {
    /// EHLO and STARTTLS (any certificate accepted, then checked) at the
    /// first reachable host of `domain`'s route: the DNSSEC-validated one
    /// when the MX set is signed, else the plain one.
    fn starttls_offered<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, tls_offered::Offered>;
    /// The configured smarthost, if any.
    fn smarthost(&self) -> Option<(&str, u16)>;
    /// `[delivery] smarthost_min_tls`.
    fn smarthost_floor(&self) -> crate::capability::TlsRequirement;
    /// A session to the smarthost as delivery opens it (AUTH included),
    /// authenticated by `tlsa` when given: the host and address that
    /// answered, and the TLS session it showed.
    fn smarthost_session<'a>(
        &'a self,
        tlsa: Option<&'a [crate::net::dane::Tlsa]>,
    ) -> BoxFuture<'a, Result<(String, Option<crate::net::tls::TlsEvidence>), String>>;
}

struct CacheEntry {
    expires: Instant,
    answer: ProbeAnswer,
}

/// The probes in use, with their cache and limits.
pub struct Probes {
    probes: Vec<Arc<dyn Probe>>,
    timeout: Duration,
    ttl: Duration,
    error_ttl: Duration,
    cache: Mutex<HashMap<(&'static str, String), CacheEntry>>,
    inflight: Mutex<HashMap<(&'static str, String), Arc<tokio::sync::OnceCell<ProbeAnswer>>>>,
}

impl Probes {
    /// Probes with a per-probe timeout and cache lifetimes (errors are
    /// cached for a shorter time, so a passing fault is retried soon).
    pub fn new(probes: Vec<Arc<dyn Probe>>, timeout: Duration, ttl: Duration) -> Probes {
        Probes {
            probes,
            timeout,
            ttl,
            error_ttl: ttl.min(Duration::from_secs(60)),
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Names of the probes in use.
    pub fn names(&self) -> Vec<&'static str> {
        self.probes.iter().map(|p| p.name()).collect()
    }

    /// Runs the probes accepted by `wanted` for `recipient`, concurrently.
    pub async fn run(&self, recipient: &str, wanted: impl Fn(&str) -> bool) -> Vec<ProbeReport> {
        let jobs = self
            .probes
            .iter()
            .filter(|p| wanted(p.name()))
            .map(|p| self.one(p.clone(), recipient));
        futures_util::future::join_all(jobs).await
    }

    async fn one(&self, probe: Arc<dyn Probe>, recipient: &str) -> ProbeReport {
        let key = (probe.name(), probe.cache_key(recipient));
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = cache.get(&key) {
                if e.expires > Instant::now() {
                    return ProbeReport {
                        probe: probe.name(),
                        result: e.answer.result.clone(),
                        evidence: e.answer.evidence.clone(),
                        cached: true,
                    };
                }
            }
        }
        // Single flight: concurrent deliveries to one domain share one
        // lookup instead of each asking the same questions.
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight
                .entry(key.clone())
                .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                .clone()
        };
        let timeout = self.timeout;
        let answer = cell
            .get_or_init(|| async {
                match tokio::time::timeout(timeout, probe.probe(recipient)).await {
                    Ok(a) => a,
                    Err(_) => ProbeAnswer {
                        result: Err(format!(
                            "{} probe timed out after {}",
                            probe.name(),
                            crate::util::format_duration(timeout)
                        )),
                        evidence: serde_json::Value::Null,
                    },
                }
            })
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        let ttl = if answer.result.is_ok() {
            self.ttl
        } else {
            self.error_ttl
        };
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 100_000 {
                let now = Instant::now();
                cache.retain(|_, e| e.expires > now);
            }
            cache.insert(
                key,
                CacheEntry {
                    expires: Instant::now() + ttl,
                    answer: answer.clone(),
                },
            );
        }
        ProbeReport {
            probe: probe.name(),
            result: answer.result,
            evidence: answer.evidence,
            cached: false,
        }
    }

    /// Forgets cached answers (after a policy reload the static capabilities
    /// may have changed).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize, Duration);

    impl Probe for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn cache_key(&self, recipient: &str) -> String {
            crate::queue::domain_of(recipient)
        }
        fn probe<'a>(&'a self, _recipient: &'a str) -> ProbeFuture<'a> {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.1).await;
                ProbeAnswer {
                    result: Ok(vec![Capability::Portal]),
                    evidence: serde_json::Value::Null,
                }
            })
        }
    }

    #[tokio::test]
    async fn answers_are_cached_per_key() {
        let p = Arc::new(Counting(AtomicUsize::new(0), Duration::ZERO));
        let probes = Probes::new(
            vec![p.clone()],
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let a = probes.run("a@x.test", |_| true).await;
        let b = probes.run("b@x.test", |_| true).await;
        let c = probes.run("c@y.test", |_| true).await;
        assert!(!a[0].cached && b[0].cached && !c[0].cached);
        assert_eq!(p.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hanging_probe_times_out_as_an_error() {
        let p = Arc::new(Counting(AtomicUsize::new(0), Duration::from_secs(3600)));
        let probes = Probes::new(vec![p], Duration::from_millis(50), Duration::from_secs(60));
        let r = probes.run("a@x.test", |_| true).await;
        assert!(r[0].result.as_ref().unwrap_err().contains("timed out"));
    }
}
