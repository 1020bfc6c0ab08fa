//! Sending the RFC 8460 aggregate reports that `tlsrpt` counts: as mail
//! through our own queue (`mailto:`) or as an HTTPS POST (`https:`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::config::Settings;
use crate::outbound::Deliverer;
use crate::queue::Queue;

/// Sends the RFC 8460 aggregate reports of finished periods to the
/// domains that publish `_smtp._tls` with an `rua`.
pub async fn tls_reports(settings: Arc<Settings>, deliverer: Arc<Deliverer>, queue: Queue) {
    let reporter = deliverer.tls_reporter();
    let every =
        (settings.tls_report.period / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        reporter.flush();
        if !settings.tls_report.enabled {
            continue;
        }
        for period in reporter.due_periods() {
            for (domain, counts) in &period.domains {
                send_tls_report(
                    &settings,
                    &deliverer,
                    &queue,
                    domain,
                    counts,
                    period.start,
                    reporter.period(),
                )
                .await;
            }
            reporter.mark_sent(period.start);
        }
    }
}

async fn send_tls_report(
    settings: &Settings,
    deliverer: &Deliverer,
    queue: &Queue,
    domain: &str,
    counts: &std::collections::BTreeMap<String, crate::outbound::tlsrpt::PolicyCounts>,
    start: i64,
    period: i64,
) {
    use crate::outbound::tlsrpt;
    let name = format!("_smtp._tls.{domain}.");
    let records: Vec<String> = match deliverer.resolver().txt_lookup(name).await {
        Ok(l) => l
            .iter()
            .map(|t| {
                t.txt_data()
                    .iter()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .collect()
            })
            .collect(),
        Err(_) => return,
    };
    let rua = tlsrpt::parse_rua(&records);
    if rua.is_empty() {
        return;
    }
    let tr = &settings.tls_report;
    let report = tlsrpt::report_json(domain, counts, start, period, &tr.organization, &tr.contact);
    let json = serde_json::to_vec(&report).unwrap_or_default();
    let gz = tlsrpt::gzip(&json);
    let report_id = report["report-id"].as_str().unwrap_or_default().to_string();
    for target in rua {
        if let Some(addr) = target.strip_prefix("mailto:") {
            let host = &settings.server.hostname;
            let content = tls_report_mail(
                host,
                &tr.organization,
                domain,
                &report_id,
                &addr,
                start,
                period,
                &gz,
            );
            let sender = format!("postmaster@{host}");
            match queue
                .enqueue_local(&sender, addr, &content, None, false, false)
                .await
            {
                Ok(id) => tracing::info!(domain, queue_id = %id, "TLS report queued"),
                Err(e) => tracing::warn!(domain, error = %e, "cannot queue the TLS report"),
            }
        } else if let Some(rest) = target.strip_prefix("https://") {
            let (host, path) = rest
                .split_once('/')
                .map(|(h, p)| (h, format!("/{p}")))
                .unwrap_or((rest, "/".into()));
            let tls = deliverer.tls_clients().verified.clone();
            match crate::net::https::post(
                deliverer.resolver(),
                tls,
                host,
                &path,
                "application/tlsrpt+gzip",
                &gz,
                settings.probe.timeout,
            )
            .await
            {
                Ok(f) if (200..300).contains(&f.status) => {
                    tracing::info!(domain, url = %target, "TLS report posted")
                }
                Ok(f) => {
                    tracing::warn!(domain, url = %target, status = f.status, "TLS report refused")
                }
                Err(e) => tracing::warn!(domain, error = %e, "cannot post the TLS report"),
            }
        }
    }
}

/// The report mail of RFC 8460 section 5.3.
#[allow(clippy::too_many_arguments)]
fn tls_report_mail(
    host: &str,
    org: &str,
    domain: &str,
    report_id: &str,
    to: &str,
    start: i64,
    period: i64,
    gz: &[u8],
) -> Vec<u8> {
    let boundary = format!("sealgate-tlsrpt-{}", crate::util::random_hex_id());
    let body = crate::util::base64_lines(gz);
    let filename = format!("{org}!{domain}!{start}!{}.json.gz", start + period - 1);
    format!(
        "From: TLS reporting <postmaster@{host}>\r\nTo: <{to}>\r\nSubject: Report Domain: {domain} Submitter: {org} Report-ID: <{report_id}>\r\n\
         TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {org}\r\nDate: {date}\r\nMessage-ID: <{mid}@{host}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis is an aggregate TLS report from {org} for {domain}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{body}\r\n--{boundary}--\r\n",
        date = Utc::now().to_rfc2822(),
        mid = crate::util::random_hex_id(),
    )
    .into_bytes()
}
