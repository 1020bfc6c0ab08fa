//! MTA-STS (RFC 8461): the `_mta-sts` TXT record announces a policy id; the
//! policy is fetched over HTTPS from `mta-sts.<domain>`, parsed strictly,
//! and cached on disk (it survives restarts) until `max_age`, refreshed
//! when the id changes or half its life has passed, and by a background
//! task before it expires even when nobody mails the domain (RFC 8461
//! section 10.2). `enforce` means: deliver only to MX hosts matching the
//! policy, over TLS with a certificate valid for the MX name. A domain that
//! announces a policy we cannot obtain is told to a [`PolicyFailureSink`]
//! (the TLS-RPT counter) with its RFC 8460 result type.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::https::{Fetched, HttpsError};

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
        self.is_fresh_at(Utc::now())
    }

    /// When the policy stops applying: `max_age` after it was fetched.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.fetched_at + chrono::Duration::seconds(self.max_age.min(MAX_AGE_LIMIT) as i64)
    }

    /// Whether the policy is still valid at `now`.
    pub fn is_fresh_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at()
    }

    /// Whether the policy is due to be fetched again by `now + horizon`:
    /// once it is [`refresh_after`] old (half its `max_age`, at most a
    /// day), or at once if it claims to come from the future (a clock set
    /// back). The background refresh passes its interval as `horizon`, so
    /// a policy is fetched again in the round before the one in which it
    /// would be due, and never lapses between two rounds.
    pub fn refresh_due(&self, now: DateTime<Utc>, horizon: Duration) -> bool {
        let age = now - self.fetched_at;
        if age < chrono::Duration::zero() {
            return true;
        }
        let horizon = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX);
        let by = age.checked_add(&horizon).unwrap_or(chrono::Duration::MAX);
        by.num_seconds() as u64 >= refresh_after(self.max_age)
    }
}

/// Why a domain that announces MTA-STS has no policy we could use: the
/// MTA-STS failure classes of RFC 8460 section 4.3.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFailureKind {
    /// The HTTPS fetch failed: the host has no address or cannot be
    /// reached, the request timed out, the answer was not HTTP 200, not
    /// `text/plain`, larger than [`MAX_POLICY`] or not HTTP at all.
    FetchError,
    /// The policy text, or the `_mta-sts` record announcing it, is not
    /// valid.
    Invalid,
    /// The policy host's certificate is not valid for
    /// `mta-sts.<domain>` (PKIX validation failed).
    WebPkiInvalid,
}

impl PolicyFailureKind {
    /// The RFC 8460 `result-type`.
    pub fn result_type(self) -> &'static str {
        match self {
            PolicyFailureKind::FetchError => "sts-policy-fetch-error",
            PolicyFailureKind::Invalid => "sts-policy-invalid",
            PolicyFailureKind::WebPkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// One failure to obtain a domain's policy: its class, and a short reason
/// code of our own (`failure-reason-code` in the report) from a small
/// fixed set, never text the remote server chose, so that a hostile
/// server cannot grow the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub kind: PolicyFailureKind,
    pub code: String,
}

impl PolicyFailure {
    fn new(kind: PolicyFailureKind, code: impl Into<String>) -> PolicyFailure {
        PolicyFailure {
            kind,
            code: code.into(),
        }
    }

    /// The class of an HTTPS request that did not get an answer.
    pub fn of_https_error(e: &HttpsError) -> PolicyFailure {
        use PolicyFailureKind::*;
        match e {
            HttpsError::Connect {
                bad_certificate: true,
                ..
            } => PolicyFailure::new(WebPkiInvalid, "certificate"),
            HttpsError::Connect { .. } => PolicyFailure::new(FetchError, "connect"),
            HttpsError::BadUrl { .. } => PolicyFailure::new(FetchError, "bad-url"),
            HttpsError::Resolve { .. } | HttpsError::NoAddress { .. } => {
                PolicyFailure::new(FetchError, "no-address")
            }
            HttpsError::Protocol { .. } => PolicyFailure::new(FetchError, "malformed-http"),
            HttpsError::TooLarge { .. } => PolicyFailure::new(FetchError, "too-large"),
            HttpsError::Timeout { .. } => PolicyFailure::new(FetchError, "timeout"),
        }
    }
}

/// Told of each failure to obtain the policy of a domain that announces
/// one (its `_mta-sts` record exists) while no valid cached policy
/// applies. The TLS-RPT counter implements it, so that this module does
/// not depend on `outbound/`; only the daemon attaches one (`sealgate
/// probe` reports nothing).
pub trait PolicyFailureSink: Send + Sync {
    fn policy_failure(&self, domain: &str, failure: &PolicyFailure);
}

/// Reads a fetch's answer (RFC 8461 section 3.3: HTTP 200 only, redirects
/// not followed, `text/plain`) into the policy `id` names, or says why it
/// is not one, with a message for the evidence.
pub fn read_answer(
    answer: Result<Fetched, HttpsError>,
    host: &str,
    id: &str,
) -> Result<(StsPolicy, String), (PolicyFailure, String)> {
    use PolicyFailureKind::*;
    let url = format!("https://{host}/.well-known/mta-sts.txt");
    let f = answer.map_err(|e| (PolicyFailure::of_https_error(&e), e.to_string()))?;
    if f.status != 200 {
        return Err((
            PolicyFailure::new(FetchError, format!("http-{}", f.status)),
            format!("{url} answered HTTP {}", f.status),
        ));
    }
    if !f.is_text_plain() {
        return Err((
            PolicyFailure::new(FetchError, "content-type"),
            format!(
                "{url} is not text/plain (Content-Type: {})",
                f.content_type
                    .as_deref()
                    .map(|c| c.chars().take(80).collect::<String>())
                    .unwrap_or_else(|| "none".into())
            ),
        ));
    }
    let text = String::from_utf8_lossy(&f.body);
    match StsPolicy::parse(&text, id) {
        Ok(p) => Ok((p, f.peer)),
        Err(e) => Err((
            PolicyFailure::new(Invalid, "policy-syntax"),
            format!("policy from https://{host} is invalid: {e}"),
        )),
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
    /// Where failures to obtain an announced policy are reported (set
    /// once, by the daemon).
    sink: OnceLock<Arc<dyn PolicyFailureSink>>,
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
            sink: OnceLock::new(),
        }
    }

    /// Reports failures to obtain announced policies to `sink` from now
    /// on (a second call is ignored).
    pub fn report_failures_to(&self, sink: Arc<dyn PolicyFailureSink>) {
        let _ = self.sink.set(sink);
    }

    fn report(&self, domain: &str, failure: &PolicyFailure) {
        tracing::info!(
            domain = %domain,
            result_type = failure.kind.result_type(),
            reason = %failure.code,
            "the MTA-STS policy announced by the domain could not be obtained"
        );
        if let Some(sink) = self.sink.get() {
            sink.policy_failure(domain, failure);
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
    pub async fn policy(&self, domain: &str) -> Discovery {
        self.discover_within(domain, false).await
    }

    /// Fetches the cached policy of `domain` again now, whatever its age
    /// (the background refresh): the same discovery as [`MtaSts::policy`],
    /// within the same time, and a failure keeps the cached policy until
    /// its `max_age`.
    pub async fn refresh(&self, domain: &str) -> Discovery {
        self.discover_within(domain, true).await
    }

    /// Discovery within the discovery timeout. The policy fetch gets its
    /// own timeout, ending at the same deadline, so that a slow policy
    /// host is reported as such (`sts-policy-fetch-error`); the guard
    /// around the whole, a little later, catches a TXT lookup that hangs.
    async fn discover_within(&self, domain: &str, force: bool) -> Discovery {
        let cached = self.cached(domain).filter(StsPolicy::is_fresh);
        let deadline = tokio::time::Instant::now() + self.discovery_timeout;
        let guard = self.discovery_timeout + self.discovery_timeout / 10;
        match tokio::time::timeout(
            guard,
            self.discover(domain, cached.clone(), deadline, force),
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
        deadline: tokio::time::Instant,
        force: bool,
    ) -> Discovery {
        let name = format!("_mta-sts.{domain}.");
        // The record's id, or why there is none: a failed lookup, or
        // records that are not a valid announcement (`true`).
        let txt: Result<Option<String>, (String, bool)> =
            match self.resolver.txt_lookup(name.clone()).await {
                Ok(l) => {
                    let records: Vec<String> = l
                        .iter()
                        .map(|t| {
                            t.txt_data()
                                .iter()
                                .map(|d| String::from_utf8_lossy(d).into_owned())
                                .collect::<String>()
                        })
                        .collect();
                    parse_txt(&records).map_err(|e| (e, true))
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
                Err(e) => Err((format!("TXT lookup of {name} failed: {e}"), false)),
            };
        let due = force
            || cached
                .as_ref()
                .is_some_and(|p| p.refresh_due(Utc::now(), Duration::ZERO));
        let id = match txt {
            Ok(Some(id)) => id,
            // No record, or no answer: a still-valid cached policy keeps
            // applying (an attacker can hide a TXT record), and is
            // refreshed under its own id when due.
            other => {
                let (key, note) = match &other {
                    Ok(_) => ("txt", serde_json::Value::Null),
                    Err((e, _)) => ("txt_error", json!(e)),
                };
                return match (cached, other) {
                    (Some(p), _) if due => {
                        let id = p.id.clone();
                        self.fetch(domain, Some(p), &id, deadline).await
                    }
                    (Some(p), _) => (
                        Ok(Some(p.clone())),
                        json!({ key: note, "policy": p, "source": "cache" }),
                    ),
                    (None, Ok(_)) => (Ok(None), json!({ "txt": null })),
                    (None, Err((e, invalid))) => {
                        if invalid {
                            // RFC 8461 section 3.1: more than one STSv1
                            // record, or an invalid one, means the domain
                            // has no available policy (reported in TLS-RPT).
                            let failure =
                                PolicyFailure::new(PolicyFailureKind::Invalid, "txt-record");
                            self.report(domain, &failure);
                            (
                                Ok(None),
                                json!({ "txt_invalid": e, "result_type": failure.kind.result_type() }),
                            )
                        } else {
                            (Err(e.clone()), json!({ "txt_error": e }))
                        }
                    }
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
        self.fetch(domain, cached, &id, deadline).await
    }

    /// Fetches the policy by `deadline`, stores it under `id`, or falls
    /// back to `cached`.
    async fn fetch(
        &self,
        domain: &str,
        cached: Option<StsPolicy>,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Discovery {
        let host = format!("mta-sts.{domain}");
        let refresh = cached.is_some();
        let answer = super::https::fetch(
            &self.resolver,
            self.tls.clone(),
            &host,
            "/.well-known/mta-sts.txt",
            None,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            MAX_POLICY,
        )
        .await;
        match read_answer(answer, &host, id) {
            Ok((p, peer)) => {
                self.store(domain, &p).await;
                (
                    Ok(Some(p.clone())),
                    json!({
                        "txt_id": id, "policy": p, "source": "fetched",
                        "refresh": refresh, "from": peer,
                    }),
                )
            }
            Err((failure, error)) => self.fallback(domain, cached, failure, error, id),
        }
    }

    fn fallback(
        &self,
        domain: &str,
        cached: Option<StsPolicy>,
        failure: PolicyFailure,
        error: String,
        id: &str,
    ) -> Discovery {
        let result_type = failure.kind.result_type();
        match cached {
            // The valid cached policy keeps applying: the domain's
            // sessions are reported under it, not as a policy failure.
            Some(p) => (
                Ok(Some(p.clone())),
                json!({
                    "txt_id": id, "fetch_error": error, "result_type": result_type,
                    "policy": p, "source": "cache",
                }),
            ),
            // A domain that announces MTA-STS but whose policy cannot be
            // fetched has no policy (RFC 8461 section 5.1); this is not an
            // error of ours, so the probe reports "no policy", and TLS-RPT
            // counts the failure for the domain.
            None => {
                self.report(domain, &failure);
                (
                    Ok(None),
                    json!({ "txt_id": id, "fetch_error": error, "result_type": result_type }),
                )
            }
        }
    }

    /// The domains with a policy in the persistent cache, and the policy
    /// (valid or not). Files whose name is not a host name with a dot
    /// (hex-encoded hostile names) are left out: they cannot be fetched.
    pub fn cached_domains(&self) -> Vec<(String, StsPolicy)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let domain = name.strip_suffix(".json")?.to_string();
                if !domain.contains('.') || !crate::config::is_hostname(&domain) {
                    return None;
                }
                let p = self.cached(&domain)?;
                Some((domain, p))
            })
            .collect()
    }

    /// One round of the background refresh: the cached policies that
    /// [`refresh_candidates`] picks are fetched again, [`REFRESH_CONCURRENCY`]
    /// at a time. Returns how many were refreshed and how many failed
    /// (those keep their cached policy).
    pub async fn refresh_round(&self, now: DateTime<Utc>, horizon: Duration) -> (usize, usize) {
        use futures_util::StreamExt;
        // Reading every cache file blocks: not on a runtime worker's time.
        let cached = tokio::task::block_in_place(|| self.cached_domains());
        let due = refresh_candidates(cached, now, horizon, REFRESH_PER_ROUND);
        if due.is_empty() {
            return (0, 0);
        }
        let outcomes: Vec<bool> = futures_util::stream::iter(due)
            .map(|domain| async move {
                let (result, evidence) = self.refresh(&domain).await;
                let fetched = evidence["source"] == "fetched";
                if fetched {
                    tracing::info!(domain = %domain, "MTA-STS policy refreshed before it expires");
                } else {
                    let error = ["fetch_error", "discovery_error", "txt_error"]
                        .iter()
                        .find_map(|k| evidence[*k].as_str())
                        .unwrap_or_default()
                        .to_string();
                    tracing::warn!(
                        domain = %domain,
                        error = %error,
                        keeps_cached = matches!(result, Ok(Some(_))),
                        "MTA-STS policy refresh failed; the cached policy applies until its max_age"
                    );
                }
                fetched
            })
            .buffer_unordered(REFRESH_CONCURRENCY)
            .collect()
            .await;
        let refreshed = outcomes.iter().filter(|f| **f).count();
        (refreshed, outcomes.len() - refreshed)
    }

    /// Runs [`MtaSts::refresh_round`] every `every` (jittered by ±10% so
    /// that gateways started together do not fetch together), the first
    /// round a minute (at most `every`) after start.
    pub async fn refresh_loop(self: Arc<Self>, every: Duration) {
        let mut wait = every.min(Duration::from_secs(60));
        loop {
            tokio::time::sleep(jittered(wait)).await;
            wait = every;
            let (refreshed, failed) = self.refresh_round(Utc::now(), every).await;
            if refreshed + failed > 0 {
                tracing::info!(refreshed, failed, "MTA-STS refresh round done");
            }
        }
    }
}

/// What discovery answers: the policy (or none, or why it cannot be told)
/// and the evidence behind it.
pub type Discovery = (Result<Option<StsPolicy>, String>, serde_json::Value);

/// At most this many policies are fetched again per refresh round (the
/// most urgent first; the rest wait for the next round).
pub const REFRESH_PER_ROUND: usize = 100;
/// At most this many refresh fetches run at once.
pub const REFRESH_CONCURRENCY: usize = 2;

/// The domains a refresh round at `now` fetches again: those whose cached
/// policy is still valid and due by the next round (`now + horizon`, see
/// [`StsPolicy::refresh_due`]), the nearest to expiring first, at most
/// `limit`. An expired policy is not refreshed: it no longer applies, and
/// the next message to the domain discovers it afresh.
pub fn refresh_candidates(
    cached: Vec<(String, StsPolicy)>,
    now: DateTime<Utc>,
    horizon: Duration,
    limit: usize,
) -> Vec<String> {
    let mut due: Vec<(DateTime<Utc>, String)> = cached
        .into_iter()
        .filter(|(_, p)| p.is_fresh_at(now) && p.refresh_due(now, horizon))
        .map(|(d, p)| (p.expires_at(), d))
        .collect();
    due.sort();
    due.into_iter().take(limit).map(|(_, d)| d).collect()
}

/// `d` scaled by a random factor between 0.9 and 1.1.
fn jittered(d: Duration) -> Duration {
    let r = u16::from_le_bytes(crate::util::random_bytes::<2>()) as f64 / u16::MAX as f64;
    d.mul_f64(0.9 + 0.2 * r)
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

    fn fetched(status: u16, content_type: Option<&str>, body: &str) -> Result<Fetched, HttpsError> {
        Ok(Fetched {
            status,
            content_type: content_type.map(str::to_string),
            body: body.as_bytes().to_vec(),
            peer: "192.0.2.7".into(),
        })
    }

    #[test]
    fn each_failure_to_get_a_policy_has_its_result_type() {
        use PolicyFailureKind::*;
        let ok = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n";
        let url = "https://mta-sts.example.test/.well-known/mta-sts.txt".to_string();
        let peer: std::net::SocketAddr = "192.0.2.7:443".parse().unwrap();
        let cases: Vec<(Result<Fetched, HttpsError>, PolicyFailureKind, &str)> = vec![
            (fetched(404, Some("text/plain"), ok), FetchError, "http-404"),
            (fetched(500, Some("text/plain"), ok), FetchError, "http-500"),
            (fetched(301, None, ""), FetchError, "http-301"),
            (
                fetched(200, Some("text/html"), ok),
                FetchError,
                "content-type",
            ),
            (fetched(200, None, ok), FetchError, "content-type"),
            (
                Err(HttpsError::Timeout {
                    url: url.clone(),
                    after: "10s".into(),
                }),
                FetchError,
                "timeout",
            ),
            (
                Err(HttpsError::Connect {
                    url: url.clone(),
                    tries: "192.0.2.7:443: connection refused".into(),
                    bad_certificate: false,
                }),
                FetchError,
                "connect",
            ),
            (
                Err(HttpsError::Resolve {
                    url: url.clone(),
                    reason: "NXDOMAIN".into(),
                }),
                FetchError,
                "no-address",
            ),
            (
                Err(HttpsError::NoAddress {
                    url: url.clone(),
                    host: "mta-sts.example.test".into(),
                }),
                FetchError,
                "no-address",
            ),
            (
                Err(HttpsError::Protocol {
                    url: url.clone(),
                    peer,
                    reason: "bad chunk".into(),
                }),
                FetchError,
                "malformed-http",
            ),
            (
                Err(HttpsError::TooLarge {
                    url: url.clone(),
                    limit: MAX_POLICY,
                }),
                FetchError,
                "too-large",
            ),
            (
                Err(HttpsError::Connect {
                    url: url.clone(),
                    tries: "192.0.2.7:443: TLS: invalid peer certificate: NotValidForName".into(),
                    bad_certificate: true,
                }),
                WebPkiInvalid,
                "certificate",
            ),
            (
                fetched(
                    200,
                    Some("text/plain; charset=utf-8"),
                    "version: STSv1\nmode: strict\n",
                ),
                Invalid,
                "policy-syntax",
            ),
            (
                fetched(200, Some("text/plain"), "<html>"),
                Invalid,
                "policy-syntax",
            ),
        ];
        for (answer, kind, code) in cases {
            let shown = format!("{answer:?}");
            let (failure, message) =
                read_answer(answer, "mta-sts.example.test", "id1").unwrap_err();
            assert_eq!(failure, PolicyFailure::new(kind, code), "{shown}");
            assert!(!message.is_empty());
        }
        assert_eq!(FetchError.result_type(), "sts-policy-fetch-error");
        assert_eq!(Invalid.result_type(), "sts-policy-invalid");
        assert_eq!(WebPkiInvalid.result_type(), "sts-webpki-invalid");
        let (p, peer) = read_answer(
            fetched(200, Some("TEXT/PLAIN"), ok),
            "mta-sts.example.test",
            "id1",
        )
        .unwrap();
        assert_eq!(
            (p.id.as_str(), p.mode, peer.as_str()),
            ("id1", StsMode::Enforce, "192.0.2.7")
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cached(max_age: u64, fetched_at: &str) -> StsPolicy {
        StsPolicy {
            id: "x".into(),
            mode: StsMode::Enforce,
            mx: vec!["mx.example.test".into()],
            max_age,
            fetched_at: at(fetched_at),
        }
    }

    #[test]
    fn refresh_decision() {
        let hour = Duration::from_secs(3600);
        let week = 7 * 86_400;
        let p = cached(week, "2026-12-01T00:00:00Z");
        // A week-long policy is due once a day old, and the hourly round
        // takes it in the hour before.
        assert!(!p.refresh_due(at("2026-12-01T01:00:00Z"), Duration::ZERO));
        assert!(!p.refresh_due(at("2026-12-01T22:59:59Z"), hour));
        assert!(p.refresh_due(at("2026-12-01T23:00:00Z"), hour));
        assert!(!p.refresh_due(at("2026-12-01T23:00:00Z"), Duration::ZERO));
        assert!(p.refresh_due(at("2026-12-02T00:00:00Z"), Duration::ZERO));
        // A two-hour policy is due at half its life.
        let short = cached(7200, "2026-12-01T00:00:00Z");
        assert!(!short.refresh_due(at("2026-12-01T00:59:59Z"), Duration::ZERO));
        assert!(short.refresh_due(at("2026-12-01T01:00:00Z"), Duration::ZERO));
        // A policy shorter than the round interval is due at once, so it
        // never lapses between rounds.
        assert!(cached(600, "2026-12-01T00:00:00Z").refresh_due(at("2026-12-01T00:00:01Z"), hour));
        // A policy from the future (the clock was set back) is due.
        assert!(p.refresh_due(at("2026-11-30T00:00:00Z"), Duration::ZERO));
        assert!(p.is_fresh_at(at("2026-12-07T23:59:59Z")));
        assert!(!p.is_fresh_at(at("2026-12-08T00:00:00Z")));

        let now = at("2026-12-05T00:00:00Z");
        let all = vec![
            // fetched 4 days ago, expires in 3 days: due
            ("a.test".to_string(), cached(week, "2026-12-01T00:00:00Z")),
            // fetched an hour ago: not due
            ("b.test".to_string(), cached(week, "2026-12-04T23:00:00Z")),
            // expired: no longer applies, not refreshed
            ("c.test".to_string(), cached(86_400, "2026-12-03T00:00:00Z")),
            // due and nearer to expiring than a.test
            ("d.test".to_string(), cached(86_400, "2026-12-04T06:00:00Z")),
            ("e.test".to_string(), cached(week, "2026-11-30T00:00:00Z")),
        ];
        assert_eq!(
            refresh_candidates(all.clone(), now, hour, 10),
            vec!["d.test", "e.test", "a.test"]
        );
        // At most `limit` a round, the most urgent first.
        assert_eq!(
            refresh_candidates(all, now, hour, 2),
            vec!["d.test", "e.test"]
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(3600));
            assert!(
                j >= Duration::from_secs(3240) && j <= Duration::from_secs(3960),
                "{j:?}"
            );
        }
    }
}
