//! SMTP TLS Reporting (RFC 8460): counts TLS sessions per recipient policy
//! domain (successes, and failures by result type), keeps the counts on
//! disk per reporting period, and builds the aggregate JSON report that is
//! sent to the domain's `rua` addresses.

pub mod send;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::net::mta_sts::{PolicyFailure, PolicyFailureSink, StsMode, StsPolicy};

/// One failure line of a report (RFC 8460 section 4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub result_type: String,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<String>,
    /// `failure-reason-code`: a short code of ours (for example `http-404`
    /// for a policy fetch), never text a remote server chose.
    #[serde(default)]
    pub failure_reason_code: Option<String>,
    pub count: u64,
}

/// Counts for one applied policy of one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub policy_type: String,
    pub policy_string: Vec<String>,
    pub mx_host: Vec<String>,
    pub success: u64,
    pub failures: Vec<Failure>,
}

/// Counts of one reporting period, by domain then policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodCounts {
    pub start: i64,
    pub domains: BTreeMap<String, BTreeMap<String, PolicyCounts>>,
}

/// How a session ended, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult<'a> {
    Success,
    /// An RFC 8460 result type, e.g. `starttls-not-supported`.
    Failure(&'a str),
}

/// The policy that applied to a session.
pub enum AppliedPolicy<'a> {
    Sts(&'a StsPolicy),
    Tlsa(Vec<String>),
    None,
}

/// The counter, shared by delivery tasks.
pub struct TlsReporter {
    dir: PathBuf,
    period: i64,
    state: Mutex<PeriodCounts>,
}

impl TlsReporter {
    /// Counts kept in `dir`, in periods of `period_secs` (a day in
    /// production; RFC 8460 reports cover whole UTC days).
    pub fn new(dir: PathBuf, period_secs: u64) -> TlsReporter {
        let _ = std::fs::create_dir_all(&dir);
        let period = period_secs.max(1) as i64;
        let start = Utc::now().timestamp() / period * period;
        let state = std::fs::read(dir.join(format!("{start}.json")))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or(PeriodCounts {
                start,
                ..Default::default()
            });
        TlsReporter {
            dir,
            period,
            state: Mutex::new(state),
        }
    }

    /// Counts one session to `domain`.
    pub fn record(
        &self,
        domain: &str,
        policy: &AppliedPolicy<'_>,
        mx: &str,
        ip: &str,
        result: SessionResult<'_>,
    ) {
        let (ptype, pstring, mx_host) = match policy {
            AppliedPolicy::Sts(p) => {
                let mut s = vec![
                    "version: STSv1".to_string(),
                    format!("mode: {}", mode_name(p.mode)),
                ];
                s.extend(p.mx.iter().map(|m| format!("mx: {m}")));
                s.push(format!("max_age: {}", p.max_age));
                ("sts", s, p.mx.clone())
            }
            AppliedPolicy::Tlsa(records) => ("tlsa", records.clone(), Vec::new()),
            AppliedPolicy::None => ("no-policy-found", Vec::new(), Vec::new()),
        };
        let mut st = self.lock_current();
        let key = format!("{ptype}:{}", pstring.join("|"));
        let entry = st
            .domains
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .entry(key)
            .or_insert_with(|| PolicyCounts {
                policy_type: ptype.into(),
                policy_string: pstring,
                mx_host,
                ..Default::default()
            });
        match result {
            SessionResult::Success => entry.success += 1,
            SessionResult::Failure(kind) => {
                // A failure before connecting (no TLSA, an MX the policy
                // does not name) has no address to report.
                let ip = (!ip.is_empty()).then_some(ip);
                let found = entry.failures.iter_mut().find(|f| {
                    f.result_type == kind
                        && f.receiving_mx_hostname.as_deref() == Some(mx)
                        && f.receiving_ip.as_deref() == ip
                });
                match found {
                    Some(f) => f.count += 1,
                    None => entry.failures.push(Failure {
                        result_type: kind.into(),
                        receiving_mx_hostname: Some(mx.into()),
                        receiving_ip: ip.map(str::to_string),
                        count: 1,
                        ..Default::default()
                    }),
                }
            }
        }
    }

    /// Counts one failure to obtain the MTA-STS policy that `domain`
    /// announces (RFC 8460 section 4.3.2.2). It is reported under policy
    /// type `sts` with the policy domain and no `policy-string` or
    /// `mx-host` (there is no policy to show), and no MX host or address:
    /// the failure happened before any SMTP session.
    pub fn record_policy_failure(&self, domain: &str, failure: &PolicyFailure) {
        let kind = failure.kind.result_type();
        let mut st = self.lock_current();
        let entry = st
            .domains
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .entry("sts:".to_string())
            .or_insert_with(|| PolicyCounts {
                policy_type: "sts".into(),
                ..Default::default()
            });
        let found = entry.failures.iter_mut().find(|f| {
            f.result_type == kind
                && f.receiving_mx_hostname.is_none()
                && f.failure_reason_code.as_deref() == Some(failure.code.as_str())
        });
        match found {
            Some(f) => f.count += 1,
            None => entry.failures.push(Failure {
                result_type: kind.into(),
                failure_reason_code: Some(failure.code.clone()),
                count: 1,
                ..Default::default()
            }),
        }
    }

    /// The current period's counts, rolling over (and saving the old
    /// period) when a new one has begun.
    fn lock_current(&self) -> std::sync::MutexGuard<'_, PeriodCounts> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let start = Utc::now().timestamp() / self.period * self.period;
        if st.start != start {
            save(&self.dir, &st);
            *st = PeriodCounts {
                start,
                ..Default::default()
            };
        }
        st
    }

    /// Writes the current counts to disk (periodically and at shutdown).
    pub fn flush(&self) {
        let st = self.lock_current();
        save(&self.dir, &st);
    }

    /// Finished periods whose reports have not been sent yet.
    pub fn due_periods(&self) -> Vec<PeriodCounts> {
        self.flush();
        let current = Utc::now().timestamp() / self.period * self.period;
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(start) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<i64>().ok())
            else {
                continue;
            };
            if start >= current || self.dir.join(format!("{start}.sent")).exists() {
                continue;
            }
            if let Some(p) = std::fs::read(e.path())
                .ok()
                .and_then(|d| serde_json::from_slice::<PeriodCounts>(&d).ok())
            {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.start);
        out
    }

    /// Marks a period as reported (its counts file is kept for a while
    /// for operators, then removed).
    pub fn mark_sent(&self, start: i64) {
        let marker = self.dir.join(format!("{start}.sent"));
        if let Err(e) = crate::util::atomic_write(&marker, b"") {
            tracing::warn!(file = %marker.display(), error = %e, "cannot mark the TLS report as sent; it may be sent again");
        }
        let cutoff = Utc::now().timestamp() - 30 * 86400;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let num = name.split('.').next().and_then(|s| s.parse::<i64>().ok());
                if num.is_some_and(|n| n < cutoff) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The reporting period in seconds.
    pub fn period(&self) -> i64 {
        self.period
    }

    /// The counts of the current period (for `tls-report` and tests).
    pub fn current(&self) -> PeriodCounts {
        self.lock_current().clone()
    }
}

impl PolicyFailureSink for TlsReporter {
    fn policy_failure(&self, domain: &str, failure: &PolicyFailure) {
        self.record_policy_failure(domain, failure);
    }
}

fn save(dir: &std::path::Path, st: &PeriodCounts) {
    if st.domains.is_empty() {
        return;
    }
    let path = dir.join(format!("{}.json", st.start));
    let saved = serde_json::to_vec(st)
        .map_err(std::io::Error::other)
        .and_then(|data| crate::util::atomic_write(&path, &data));
    // The counts are reporting, not mail: a failed save is logged, the
    // counts stay in memory and the next save tries again.
    if let Err(e) = saved {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the TLS report counts");
    }
}

fn mode_name(m: StsMode) -> &'static str {
    match m {
        StsMode::Enforce => "enforce",
        StsMode::Testing => "testing",
        StsMode::None => "none",
    }
}

/// The RFC 8460 result type (section 4.3) for a TLS problem described by
/// `error`. A certificate that no TLSA record of the host's DANE policy
/// matches is `tlsa-invalid` (section 4.3.2.1), not a PKIX failure.
pub fn result_type(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("tlsa mismatch") {
        "tlsa-invalid"
    } else if e.contains("starttls") {
        "starttls-not-supported"
    } else if e.contains("notvalidforname") || e.contains("not valid for") {
        "certificate-host-mismatch"
    } else if e.contains("expired") {
        "certificate-expired"
    } else if e.contains("unknownissuer") || e.contains("certificate") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// Builds the aggregate report for one domain and period (RFC 8460
/// section 4.3).
pub fn report_json(
    domain: &str,
    counts: &BTreeMap<String, PolicyCounts>,
    start: i64,
    period: i64,
    organization: &str,
    contact: &str,
) -> serde_json::Value {
    let fmt = |t: i64| {
        DateTime::<Utc>::from_timestamp(t, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let policies: Vec<serde_json::Value> = counts
        .values()
        .map(|p| {
            let failures: Vec<serde_json::Value> = p
                .failures
                .iter()
                .map(|f| {
                    let mut v = json!({ "result-type": f.result_type, "failed-session-count": f.count });
                    if let Some(h) = &f.receiving_mx_hostname {
                        v["receiving-mx-hostname"] = json!(h);
                    }
                    if let Some(ip) = &f.receiving_ip {
                        v["receiving-ip"] = json!(ip);
                    }
                    if let Some(code) = &f.failure_reason_code {
                        v["failure-reason-code"] = json!(code);
                    }
                    v
                })
                .collect();
            let total_failures: u64 = p.failures.iter().map(|f| f.count).sum();
            let mut policy = json!({ "policy-type": p.policy_type, "policy-domain": domain });
            if !p.policy_string.is_empty() {
                policy["policy-string"] = json!(p.policy_string);
            }
            if !p.mx_host.is_empty() {
                policy["mx-host"] = json!(p.mx_host);
            }
            json!({
                "policy": policy,
                "summary": { "total-successful-session-count": p.success, "total-failure-session-count": total_failures },
                "failure-details": failures,
            })
        })
        .collect();
    json!({
        "organization-name": organization,
        "date-range": { "start-datetime": fmt(start), "end-datetime": fmt(start + period - 1) },
        "contact-info": contact,
        "report-id": format!("{}_{}", fmt(start), domain),
        "policies": policies,
    })
}

/// Parses the `_smtp._tls` TXT record: `v=TLSRPTv1; rua=mailto:a@b,https://...`.
pub fn parse_rua(records: &[String]) -> Vec<String> {
    let rec: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=TLSRPTv1"))
        .collect();
    if rec.len() != 1 {
        return Vec::new();
    }
    rec[0]
        .split(';')
        .map(str::trim)
        .filter_map(|f| f.strip_prefix("rua="))
        .flat_map(|v| v.split(','))
        .map(|u| u.trim().to_string())
        .filter(|u| u.starts_with("mailto:") || u.starts_with("https://"))
        .collect()
}

/// Gzips a report body.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let r = TlsReporter::new(dir.path().to_path_buf(), 86400);
        let p = StsPolicy {
            id: "x".into(),
            mode: StsMode::Enforce,
            mx: vec!["*.example.test".into()],
            max_age: 86400,
            fetched_at: Utc::now(),
        };
        r.record(
            "example.test",
            &AppliedPolicy::Sts(&p),
            "mx.example.test",
            "192.0.2.1",
            SessionResult::Success,
        );
        r.record(
            "example.test",
            &AppliedPolicy::Sts(&p),
            "mx.example.test",
            "192.0.2.1",
            SessionResult::Success,
        );
        r.record(
            "example.test",
            &AppliedPolicy::Sts(&p),
            "mx2.example.test",
            "192.0.2.2",
            SessionResult::Failure("certificate-expired"),
        );
        let cur = r.current();
        let rep = report_json(
            "example.test",
            &cur.domains["example.test"],
            cur.start,
            86400,
            "Org",
            "postmaster@gw.example.test",
        );
        assert_eq!(
            rep["policies"][0]["summary"]["total-successful-session-count"],
            2
        );
        assert_eq!(
            rep["policies"][0]["summary"]["total-failure-session-count"],
            1
        );
        assert_eq!(rep["policies"][0]["policy"]["policy-type"], "sts");
        assert_eq!(
            rep["policies"][0]["failure-details"][0]["result-type"],
            "certificate-expired"
        );
        assert!(
            rep["date-range"]["end-datetime"]
                .as_str()
                .unwrap()
                .ends_with("T23:59:59Z")
        );
        r.flush();
        let again = TlsReporter::new(dir.path().to_path_buf(), 86400);
        assert_eq!(again.current(), cur, "counts survive a restart");
    }

    #[test]
    fn rua_and_result_types() {
        assert_eq!(
            parse_rua(&["v=TLSRPTv1; rua=mailto:tls@example.test,https://r.example.test/x".into()]),
            vec!["mailto:tls@example.test", "https://r.example.test/x"]
        );
        assert!(parse_rua(&["v=TLSRPTv1; rua=ftp://x".into()]).is_empty());
        assert!(
            parse_rua(&[
                "v=TLSRPTv1; rua=mailto:a@b".into(),
                "v=TLSRPTv1; rua=mailto:c@d".into()
            ])
            .is_empty()
        );
        assert_eq!(
            result_type("mx does not offer STARTTLS"),
            "starttls-not-supported"
        );
        assert_eq!(
            result_type("invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
        assert_eq!(
            result_type("invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            result_type("invalid peer certificate: Expired"),
            "certificate-expired"
        );
        assert_eq!(
            result_type(
                "TLS handshake with mx failed: TLSA mismatch: no DANE-TA or DANE-EE record matches the presented certificate chain"
            ),
            "tlsa-invalid"
        );
    }

    #[test]
    fn dane_sessions_are_counted_under_tlsa() {
        let dir = tempfile::tempdir().unwrap();
        let r = TlsReporter::new(dir.path().to_path_buf(), 86400);
        let records = vec!["3 1 1 abcd".to_string()];
        r.record(
            "dane.example",
            &AppliedPolicy::Tlsa(records.clone()),
            "mx.dane.example",
            "127.0.0.2",
            SessionResult::Success,
        );
        r.record(
            "dane.example",
            &AppliedPolicy::Tlsa(records.clone()),
            "mx.dane.example",
            "",
            SessionResult::Failure("tlsa-invalid"),
        );
        let cur = r.current();
        let counts = &cur.domains["dane.example"];
        let report = report_json("dane.example", counts, cur.start, 86400, "org", "c@org");
        let policy = &report["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "tlsa");
        assert_eq!(policy["policy"]["policy-string"], json!(records));
        assert_eq!(policy["summary"]["total-successful-session-count"], 1);
        let failure = &policy["failure-details"][0];
        assert_eq!(failure["result-type"], "tlsa-invalid");
        assert!(
            failure.get("receiving-ip").is_none(),
            "no address is reported for a failure before connecting: {failure}"
        );
    }

    #[test]
    fn policy_failures_are_counted_under_sts_without_a_policy_string() {
        use crate::net::mta_sts::{PolicyFailure, PolicyFailureKind, PolicyFailureSink};
        let dir = tempfile::tempdir().unwrap();
        let r = TlsReporter::new(dir.path().to_path_buf(), 86400);
        let fetch = PolicyFailure {
            kind: PolicyFailureKind::FetchError,
            code: "http-404".into(),
        };
        let sink: &dyn PolicyFailureSink = &r;
        sink.policy_failure("Broken.Example", &fetch);
        sink.policy_failure("broken.example", &fetch);
        r.record_policy_failure(
            "broken.example",
            &PolicyFailure {
                kind: PolicyFailureKind::WebPkiInvalid,
                code: "certificate".into(),
            },
        );
        let cur = r.current();
        let report = report_json(
            "broken.example",
            &cur.domains["broken.example"],
            cur.start,
            86400,
            "org",
            "c@org",
        );
        let policies = report["policies"].as_array().unwrap();
        assert_eq!(policies.len(), 1, "{report}");
        let p = &policies[0];
        assert_eq!(
            p["policy"],
            json!({ "policy-type": "sts", "policy-domain": "broken.example" })
        );
        assert_eq!(p["summary"]["total-successful-session-count"], 0);
        assert_eq!(p["summary"]["total-failure-session-count"], 3);
        assert_eq!(
            p["failure-details"],
            json!([
                { "result-type": "sts-policy-fetch-error", "failure-reason-code": "http-404", "failed-session-count": 2 },
                { "result-type": "sts-webpki-invalid", "failure-reason-code": "certificate", "failed-session-count": 1 },
            ])
        );
        // Counts written before the reason code existed still load.
        let old: Failure = serde_json::from_str(
            r#"{"result_type":"tlsa-invalid","receiving_mx_hostname":"mx","receiving_ip":null,"count":1}"#,
        )
        .unwrap();
        assert_eq!(old.failure_reason_code, None);
    }
}
