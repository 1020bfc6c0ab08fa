//! MTA-STS (RFC 8461): the `_mta-sts` TXT record announces a policy id; the
//! policy is fetched over HTTPS from `mta-sts.<domain>`, parsed strictly,
//! and cached on disk (it survives restarts) until `max_age`, refreshed
//! when the id changes. `enforce` means: deliver only to MX hosts matching
//! the policy, over TLS with a certificate valid for the MX name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Capability, Probe, ProbeAnswer, ProbeFuture};
use crate::policy::TlsRequirement;

/// Policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

/// A parsed MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    pub id: String,
    pub mode: StsMode,
    /// `mx` patterns, lowercased; `*.example.org` matches one label.
    pub mx: Vec<String>,
    pub max_age: u64,
    pub fetched_at: DateTime<Utc>,
}

/// Largest policy accepted (RFC 8461 section 3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;
/// `max_age` upper bound (RFC 8461 section 3.2: one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

impl StsPolicy {
    /// Parses a policy body (RFC 8461 section 3.2). `version: STSv1` must
    /// come first; `mode` and `max_age` exactly once; `mx` at least once
    /// unless the mode is `none`; unknown keys are ignored.
    pub fn parse(text: &str, id: &str) -> Result<StsPolicy, String> {
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.is_empty());
        match lines
            .next()
            .map(|l| l.split_once(':').map(|(k, v)| (k.trim(), v.trim())))
        {
            Some(Some(("version", "STSv1"))) => {}
            _ => return Err("policy must start with `version: STSv1`".into()),
        }
        let (mut mode, mut max_age, mut mx) = (None, None, Vec::new());
        for line in lines {
            let (k, v) = line.split_once(':').ok_or_else(|| {
                format!(
                    "malformed policy line `{}`",
                    line.chars().take(80).collect::<String>()
                )
            })?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "version" => return Err("`version` given twice".into()),
                "mode" => {
                    if mode.is_some() {
                        return Err("`mode` given twice".into());
                    }
                    mode = Some(match v {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        other => return Err(format!("unknown mode `{other}`")),
                    });
                }
                "max_age" => {
                    if max_age.is_some() {
                        return Err("`max_age` given twice".into());
                    }
                    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!("max_age `{v}` is not a number of seconds"));
                    }
                    let n: u64 = v
                        .parse()
                        .map_err(|_| format!("max_age `{v}` is not a number"))?;
                    if n > MAX_AGE_LIMIT {
                        return Err(format!("max_age {n} is more than one year"));
                    }
                    max_age = Some(n);
                }
                "mx" => {
                    let p = v.to_ascii_lowercase();
                    let body = p.strip_prefix("*.").unwrap_or(&p);
                    if body.contains('*') || !crate::config::is_hostname(body) {
                        return Err(format!("mx pattern `{v}` is not a host name or *.domain"));
                    }
                    mx.push(p.trim_end_matches('.').to_string());
                }
                _ => {}
            }
        }
        let mode = mode.ok_or("policy has no `mode`")?;
        let max_age = max_age.ok_or("policy has no `max_age`")?;
        if mx.is_empty() && mode != StsMode::None {
            return Err("policy has no `mx`".into());
        }
        Ok(StsPolicy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
            fetched_at: Utc::now(),
        })
    }

    /// Whether `host` matches an `mx` pattern (a wildcard stands for
    /// exactly one leftmost label).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }

    /// Whether the cached policy is still valid.
    pub fn is_fresh(&self) -> bool {
        Utc::now()
            < self.fetched_at + chrono::Duration::seconds(self.max_age.min(MAX_AGE_LIMIT) as i64)
    }
}

/// Parses the `_mta-sts` TXT records (RFC 8461 section 3.1): records
/// whose first field is not exactly `v=STSv1` are not MTA-STS records and
/// are ignored (`v=STSv10` is not `v=STSv1`); exactly one may remain, and
/// its `id` (1–32 letters and digits) is returned. Spaces around `=` and
/// `;` are tolerated, empty fields (`;;`, a trailing `;`) skipped, other
/// fields (extensions) ignored.
pub fn parse_txt(records: &[String]) -> Result<Option<String>, String> {
    /// `key = value` with the spaces around both taken off.
    fn field(f: &str) -> Option<(&str, &str)> {
        f.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
    }
    let fields = |r: &'_ String| -> Vec<String> {
        r.split(';')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    };
    let sts: Vec<Vec<String>> = records
        .iter()
        .map(fields)
        .filter(|f| f.first().and_then(|v| field(v)) == Some(("v", "STSv1")))
        .collect();
    match sts.as_slice() {
        [] => Ok(None),
        [one] => {
            let mut id = None;
            for f in &one[1..] {
                let Some((k, v)) = field(f) else {
                    return Err(format!(
                        "_mta-sts record field `{}` is not key=value",
                        f.chars().take(40).collect::<String>()
                    ));
                };
                if k == "id" {
                    if id.is_some() {
                        return Err("_mta-sts record has two ids".into());
                    }
                    id = Some(v.to_string());
                }
            }
            let id = id.ok_or("_mta-sts record has no id")?;
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!(
                    "_mta-sts id `{}` is not 1-32 letters and digits",
                    id.chars().take(40).collect::<String>()
                ));
            }
            Ok(Some(id))
        }
        _ => Err("more than one _mta-sts record: the domain has no valid MTA-STS policy".into()),
    }
}

/// The MTA-STS cache and fetcher, shared by the probe and delivery.
pub struct MtaSts {
    resolver: hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    dir: PathBuf,
    /// Bounds the TXT lookup and policy fetch together: shorter than the
    /// probe's timeout, so that when they hang a valid cached policy still
    /// answers before the probe gives up (a probe timeout would drop the
    /// policy's protection for that attempt).
    discovery_timeout: Duration,
    mem: Mutex<HashMap<String, StsPolicy>>,
}

/// The share of the probe timeout given to discovery.
fn discovery_timeout(probe_timeout: Duration) -> Duration {
    probe_timeout * 2 / 3
}

/// A cached policy is fetched again, even when its id has not changed,
/// once it is this old: half its `max_age`, and at least daily (RFC 8461
/// sections 3.3 and 10.2: refresh before it expires, so that a policy in
/// use never lapses while an attacker hides the TXT record).
fn refresh_after(max_age: u64) -> u64 {
    (max_age / 2).min(86_400)
}

impl MtaSts {
    /// A cache persisted in `dir` (created if missing); `probe_timeout` is
    /// the probe's, of which discovery gets two thirds.
    pub fn new(
        resolver: hickory_resolver::TokioResolver,
        tls: Arc<rustls::ClientConfig>,
        dir: PathBuf,
        probe_timeout: Duration,
    ) -> MtaSts {
        let _ = std::fs::create_dir_all(&dir);
        MtaSts {
            resolver,
            tls,
            dir,
            discovery_timeout: discovery_timeout(probe_timeout),
            mem: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, domain: &str) -> PathBuf {
        // Domain names are letters, digits, dots and hyphens; anything else
        // is hex-encoded so a hostile name cannot escape the folder.
        let safe = if domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !domain.starts_with('.')
        {
            domain.to_string()
        } else {
            hex::encode(domain)
        };
        self.dir.join(format!("{safe}.json"))
    }

    /// The cached policy for `domain` (memory, then disk), fresh or not.
    pub fn cached(&self, domain: &str) -> Option<StsPolicy> {
        if let Some(p) = self
            .mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
        {
            return Some(p.clone());
        }
        let data = std::fs::read(self.file(domain)).ok()?;
        let p: StsPolicy = serde_json::from_slice(&data).ok()?;
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), p.clone());
        Some(p)
    }

    async fn store(&self, domain: &str, p: &StsPolicy) {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), p.clone());
        let path = self.file(domain);
        // The cache only saves fetches: a failed write is logged, and the
        // old file (or none) stays, never a half-written one.
        let written = match serde_json::to_vec(p) {
            Ok(data) => {
                let at = path.clone();
                tokio::task::spawn_blocking(move || crate::util::atomic_write(&at, &data))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the MTA-STS policy cache");
        }
    }

    /// The policy that applies to `domain` now, with evidence: the TXT
    /// record decides whether to fetch; a cached policy past half its life
    /// is fetched again; a failed or timed-out lookup or fetch falls back
    /// to a still-valid cached policy (RFC 8461 section 5.1), so an
    /// enforce policy keeps applying while its refresh fails.
    pub async fn policy(
        &self,
        domain: &str,
    ) -> (Result<Option<StsPolicy>, String>, serde_json::Value) {
        let cached = self.cached(domain).filter(StsPolicy::is_fresh);
        match tokio::time::timeout(
            self.discovery_timeout,
            self.discover(domain, cached.clone()),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                let error = format!(
                    "MTA-STS discovery for {domain} timed out after {}",
                    crate::util::format_duration(self.discovery_timeout)
                );
                match cached {
                    Some(p) => (
                        Ok(Some(p.clone())),
                        json!({ "discovery_error": error, "policy": p, "source": "cache" }),
                    ),
                    None => (Err(error.clone()), json!({ "discovery_error": error })),
                }
            }
        }
    }

    async fn discover(
        &self,
        domain: &str,
        cached: Option<StsPolicy>,
    ) -> (Result<Option<StsPolicy>, String>, serde_json::Value) {
        let name = format!("_mta-sts.{domain}.");
        let txt: Result<Vec<String>, String> = match self.resolver.txt_lookup(name.clone()).await {
            Ok(l) => Ok(l
                .iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(format!("TXT lookup of {name} failed: {e}")),
        };
        let due = cached.as_ref().is_some_and(|p| {
            let age = (Utc::now() - p.fetched_at).num_seconds();
            age < 0 || age as u64 >= refresh_after(p.max_age)
        });
        let id = match txt.and_then(|r| parse_txt(&r)) {
            Ok(Some(id)) => id,
            // No record, or no answer: a still-valid cached policy keeps
            // applying (an attacker can hide a TXT record), and is
            // refreshed under its own id when due.
            other => {
                let (key, note) = match &other {
                    Ok(_) => ("txt", serde_json::Value::Null),
                    Err(e) => ("txt_error", json!(e)),
                };
                return match (cached, other) {
                    (Some(p), _) if due => {
                        let id = p.id.clone();
                        self.fetch(domain, Some(p), &id).await
                    }
                    (Some(p), _) => (
                        Ok(Some(p.clone())),
                        json!({ key: note, "policy": p, "source": "cache" }),
                    ),
                    (None, Ok(_)) => (Ok(None), json!({ "txt": null })),
                    (None, Err(e)) => (Err(e.clone()), json!({ "txt_error": e })),
                };
            }
        };
        if let Some(p) = &cached {
            if p.id == id && !due {
                return (
                    Ok(Some(p.clone())),
                    json!({ "txt_id": id, "policy": p, "source": "cache" }),
                );
            }
        }
        self.fetch(domain, cached, &id).await
    }

    /// Fetches the policy (RFC 8461 section 3.3: HTTP 200 only, redirects
    /// not followed, `text/plain`), stores it under `id`, or falls back to
    /// `cached`.
    async fn fetch(
        &self,
        domain: &str,
        cached: Option<StsPolicy>,
        id: &str,
    ) -> (Result<Option<StsPolicy>, String>, serde_json::Value) {
        let host = format!("mta-sts.{domain}");
        let url = format!("https://{host}/.well-known/mta-sts.txt");
        let refresh = cached.is_some();
        match super::https::fetch(
            &self.resolver,
            self.tls.clone(),
            &host,
            "/.well-known/mta-sts.txt",
            None,
            self.discovery_timeout,
            MAX_POLICY,
        )
        .await
        {
            Ok(f) if f.status != 200 => {
                self.fallback(cached, format!("{url} answered HTTP {}", f.status), id)
            }
            Ok(f) if !f.is_text_plain() => self.fallback(
                cached,
                format!(
                    "{url} is not text/plain (Content-Type: {})",
                    f.content_type
                        .as_deref()
                        .map(|c| c.chars().take(80).collect::<String>())
                        .unwrap_or_else(|| "none".into())
                ),
                id,
            ),
            Ok(f) => {
                let text = String::from_utf8_lossy(&f.body);
                match StsPolicy::parse(&text, id) {
                    Ok(p) => {
                        self.store(domain, &p).await;
                        (
                            Ok(Some(p.clone())),
                            json!({
                                "txt_id": id, "policy": p, "source": "fetched",
                                "refresh": refresh, "from": f.peer,
                            }),
                        )
                    }
                    Err(e) => self.fallback(
                        cached,
                        format!("policy from https://{host} is invalid: {e}"),
                        id,
                    ),
                }
            }
            Err(e) => self.fallback(cached, e.to_string(), id),
        }
    }

    fn fallback(
        &self,
        cached: Option<StsPolicy>,
        error: String,
        id: &str,
    ) -> (Result<Option<StsPolicy>, String>, serde_json::Value) {
        match cached {
            Some(p) => (
                Ok(Some(p.clone())),
                json!({ "txt_id": id, "fetch_error": error, "policy": p, "source": "cache" }),
            ),
            // A domain that announces MTA-STS but whose policy cannot be
            // fetched has no policy (RFC 8461 section 5.1); this is not an
            // error of ours, so the probe reports "no policy".
            None => (Ok(None), json!({ "txt_id": id, "fetch_error": error })),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let ok = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";
        let p = StsPolicy::parse(ok, "20261129").unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert!(
            p.matches("mail.example.com")
                && p.matches("MX1.example.net.")
                && !p.matches("a.b.example.net")
                && !p.matches("example.net")
        );
        let bad = [
            (
                "mode: enforce\nversion: STSv1\nmx: a.test\nmax_age: 1\n",
                "start with",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no `mx`"),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\n",
                "no `max_age`",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 5\n",
                "twice",
            ),
            (
                "version: STSv1\nmode: enforce\ngarbage line\nmx: a.test\nmax_age: 5\n",
                "malformed",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 5\n",
                "mx pattern",
            ),
        ];
        for (text, want) in bad {
            let e = StsPolicy::parse(text, "x").unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let none = StsPolicy::parse(
            "version: STSv1\nmode: none\nmax_age: 86400\nextension: ignored\n",
            "x",
        )
        .unwrap();
        assert_eq!(none.mode, StsMode::None);
    }

    #[test]
    fn txt_record_edge_cases() {
        let id = |r: &str| parse_txt(&[r.to_string()]);
        let ok = |r: &str| assert_eq!(id(r), Ok(Some("abc123".into())), "{r:?}");
        ok("v=STSv1; id=abc123");
        ok("v=STSv1;id=abc123");
        ok("v=STSv1; id=abc123;");
        ok("v = STSv1 ; id = abc123 ;");
        ok("  v=STSv1 ;; id=abc123");
        ok("v=STSv1; ext=value; id=abc123");
        // Not MTA-STS records at all: ignored.
        for other in [
            "v=STSv10; id=abc123",
            "v=STSv1x; id=abc123",
            "v=stsv1; id=abc123",
            "id=abc123; v=STSv1",
            "xv=STSv1; id=abc123",
            "",
        ] {
            assert_eq!(id(other), Ok(None), "{other:?}");
        }
        // `v=STSv10` beside a real record does not make two.
        assert_eq!(
            parse_txt(&["v=STSv10; id=zzz".into(), "v=STSv1; id=abc123".into()]),
            Ok(Some("abc123".into()))
        );
        for bad in [
            "v=STSv1",
            "v=STSv1; id=",
            "v=STSv1; id=abc; id=def",
            "v=STSv1; garbage; id=abc123",
            "v=STSv1; id=abc 123",
            "v=STSv1; ID=abc123",
            "v=STSv1; id=123456789012345678901234567890123",
        ] {
            assert!(id(bad).is_err(), "{bad:?}: {:?}", id(bad));
        }
    }

    #[test]
    fn txt_records() {
        assert_eq!(
            parse_txt(&["v=STSv1; id=20260101T00;".into()]),
            Ok(Some("20260101T00".into()))
        );
        assert_eq!(parse_txt(&["v=spf1 -all".into()]), Ok(None));
        assert!(parse_txt(&["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]).is_err());
        assert!(parse_txt(&["v=STSv1; id=has-dash".into()]).is_err());
        assert!(parse_txt(&["v=STSv1;".into()]).is_err());
    }
}
