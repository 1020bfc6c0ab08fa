//! MTA-STS against a real HTTPS policy server (private CA) on loopback
//! port 443 and test MX hosts.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{self, Gateway};
use crate::world::{MxOptions, TestMx};

/// Serves `/.well-known/mta-sts.txt` over HTTPS on `ip:443`.
struct PolicyServer {
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    async fn start(w: &World, ip: Ipv4Addr, domain: &str, status: u16, body: &str) -> PolicyServer {
        let host = format!("mta-sts.{domain}");
        w.zone.add_a(&host, ip);
        let cert = w.ca.issue(&[&host]);
        let config = cert.server_config().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind((ip, 443))
            .await
            .expect("bind 443 (the tests run as root)");
        let state = Arc::new(Mutex::new((status, body.to_string())));
        let hits = Arc::new(Mutex::new(0));
        let (s2, h2) = (state.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (s3, h3) = (s2.clone(), h2.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    *h3.lock().unwrap() += 1;
                    let (status, body) = s3.lock().unwrap().clone();
                    let ok = String::from_utf8_lossy(&req)
                        .starts_with("GET /.well-known/mta-sts.txt HTTP/1.1");
                    let (status, body) = if ok {
                        (status, body)
                    } else {
                        (404, String::new())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            body: state,
            hits,
            task,
        }
    }

    fn set(&self, status: u16, body: &str) {
        *self.body.lock().unwrap() = (status, body.to_string());
    }

    fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn ev(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap()
}

/// A world with sts.example.test announcing MTA-STS and one TLS MX.
async fn setup(
    mode: &str,
    mx_pattern: &str,
    mx_opts: impl FnOnce(&World) -> MxOptions,
) -> (World, PolicyServer, TestMx, Gateway) {
    let w = World::new().await;
    w.domain("sts.example.test", "mx.sts.example.test");
    w.zone
        .add_txt("_mta-sts.sts.example.test", "v=STSv1; id=first1;");
    let web_ip = gateway::fresh_ip();
    let web = PolicyServer::start(
        &w,
        web_ip,
        "sts.example.test",
        200,
        &policy(mode, mx_pattern),
    )
    .await;
    let opts = mx_opts(&w);
    let mx = w.mx(opts).await;
    let gw = w.gateway().unwrap();
    (w, web, mx, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_matching_mx_and_valid_certificate_delivers() {
    let (w, web, mx, gw) = setup("enforce", "*.sts.example.test", |w| {
        let cert = w.ca.issue(&["mx.sts.example.test"]);
        MxOptions::new("mx.sts.example.test").tls(&cert)
    })
    .await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls.is_some());
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["tls_requirement"], "mta-sts");
    assert_eq!(rows[0]["outcome"], "delivered");
    let e = ev(&rows[0]);
    assert_eq!(e["attempt"]["mta_sts"]["id"], "first1");
    assert_eq!(e["attempt"]["mta_sts"]["mode"], "enforce");
    let probe = e["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "mta-sts")
        .unwrap()
        .clone();
    assert_eq!(probe["evidence"]["source"], "fetched");
    assert_eq!(web.hits(), 1);

    // A new id is picked up: the policy is fetched again.
    web.set(200, &policy("enforce", "mx.sts.example.test"));
    w.zone.remove_rrset(
        "_mta-sts.sts.example.test",
        hickory_proto::rr::RecordType::TXT,
    );
    w.zone
        .add_txt("_mta-sts.sts.example.test", "v=STSv1; id=second2;");
    // The probe cache lives 1 minute in tests; a restart clears it, while
    // the MTA-STS cache on disk survives.
    let mut gw = gw;
    gw.stop().unwrap();
    gw.spawn().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["c@sts.example.test"],
        &message("sts2", "x"),
    )
    .unwrap();
    mx.wait_for(2, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    assert_eq!(ev(&rows[1])["attempt"]["mta_sts"]["id"], "second2");
    assert_eq!(web.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_defers_for_a_non_matching_mx_a_bad_certificate_or_no_starttls() {
    // MX name not in the policy.
    let (_w, _web, mx, gw) = setup("enforce", "other.example.test", |w| {
        let cert = w.ca.issue(&["mx.sts.example.test"]);
        MxOptions::new("mx.sts.example.test").tls(&cert)
    })
    .await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    assert!(
        rows[0]["smtp_reply"]
            .as_str()
            .unwrap()
            .contains("matches its MTA-STS policy"),
        "{}",
        rows[0]
    );
    assert_eq!(mx.connections(), 0);

    // Certificate not trusted.
    let (_w, _web, mx, gw) = setup("enforce", "*.sts.example.test", |_| {
        let cert = crate::world::pki::self_signed(&["mx.sts.example.test"]);
        MxOptions::new("mx.sts.example.test").tls(&cert)
    })
    .await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred", "{}", rows[0]);
    assert_eq!(
        mx.data_commands(),
        0,
        "never sends DATA to an unverified host"
    );

    // STARTTLS stripped.
    let (w, _web, mx, gw) = setup("enforce", "*.sts.example.test", |_| {
        MxOptions::new("mx.sts.example.test")
    })
    .await;
    // ... while a domain without MTA-STS still gets mail over plain SMTP.
    let ip2 = gateway::fresh_ip();
    w.zone
        .add_mx("plain.example.test", 10, "mx.plain.example.test");
    w.zone.add_a("mx.plain.example.test", ip2);
    let plain = TestMx::start(MxOptions::new("mx.plain.example.test").ip(ip2).port(w.port)).await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test", "c@plain.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    plain.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() >= 2).await.unwrap();
    let sts = rows
        .iter()
        .find(|r| r["recipient"] == "b@sts.example.test")
        .unwrap();
    assert_eq!(sts["outcome"], "deferred");
    assert!(
        sts["smtp_reply"].as_str().unwrap().contains("STARTTLS"),
        "{sts}"
    );
    assert_eq!(mx.data_commands(), 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_mode_delivers_and_records() {
    let (_w, _web, mx, gw) = setup("testing", "other.example.test", |_| {
        MxOptions::new("mx.sts.example.test")
    })
    .await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered");
    assert_eq!(rows[0]["tls_requirement"], "opportunistic");
    let probe = ev(&rows[0])["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "mta-sts")
        .unwrap()
        .clone();
    assert_eq!(probe["evidence"]["policy"]["mode"], "testing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_policy_is_no_policy() {
    let (_w, web, mx, gw) = setup("enforce", "*.sts.example.test", |_| {
        MxOptions::new("mx.sts.example.test")
    })
    .await;
    web.set(
        200,
        "mode: enforce\r\nversion: STSv1\r\nmx: *.sts.example.test\r\nmax_age: 86400\r\n",
    );
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let probe = ev(&rows[0])["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "mta-sts")
        .unwrap()
        .clone();
    assert!(
        probe["evidence"]["fetch_error"]
            .as_str()
            .unwrap()
            .contains("version: STSv1"),
        "{probe}"
    );
}

/// RFC 8461 section 3.1: two `v=STSv1` records mean the domain has no
/// available policy (not an error that makes mail wait), and no policy is
/// fetched; a `v=STSv10` record is not an STS record at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sts_records_mean_no_policy() {
    let (w, web, mx, gw) = setup("enforce", "*.other.example.test", |_| {
        MxOptions::new("mx.sts.example.test")
    })
    .await;
    w.zone
        .add_txt("_mta-sts.sts.example.test", "v=STSv1; id=second2;");
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    // The enforce policy names other MX hosts: applied, it would defer.
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered", "{}", rows[0]);
    let probe = ev(&rows[0])["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "mta-sts")
        .unwrap()
        .clone();
    assert!(probe["result"]["capabilities"].is_array(), "{probe}");
    assert!(probe["evidence"]["txt_invalid"].is_string(), "{probe}");
    assert_eq!(*web.hits.lock().unwrap(), 0, "no policy fetched");
    let _ = w;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_end_to_end() {
    let w = World::new().await;
    // good: verified certificate and REQUIRETLS; norequire: verified but no REQUIRETLS.
    w.domain("good.example.test", "mx.good.example.test");
    let cert = w.ca.issue(&["mx.good.example.test"]);
    let good = w
        .mx(MxOptions::new("mx.good.example.test")
            .tls(&cert)
            .ehlo_keyword("REQUIRETLS"))
        .await;
    let ip2 = gateway::fresh_ip();
    w.zone
        .add_mx("norequire.example.test", 10, "mx.norequire.example.test");
    w.zone.add_a("mx.norequire.example.test", ip2);
    let cert2 = w.ca.issue(&["mx.norequire.example.test"]);
    let norequire = TestMx::start(
        MxOptions::new("mx.norequire.example.test")
            .ip(ip2)
            .port(w.port)
            .tls(&cert2),
    )
    .await;
    let gw_cert = w.ca.issue(&["gateway.example.test"]);
    let (c, k) = gw_cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.tls = Some((c, k));
    let gw = Gateway::start(opts).unwrap();

    let mut client = crate::world::SmtpClient::connect(gw.addr).await.unwrap();
    let kws = client.ehlo("client.example.test").await.unwrap();
    assert!(
        !kws.contains(&"REQUIRETLS".to_string()),
        "not offered before TLS"
    );
    let r = client
        .cmd("MAIL FROM:<a@clinic.example.test> REQUIRETLS")
        .await
        .unwrap();
    assert_eq!(r.0, 530, "REQUIRETLS refused without TLS: {r:?}");
    let mut client = client
        .starttls(w.ca.client_config(), "gateway.example.test")
        .await
        .unwrap();
    let kws = client.ehlo("client.example.test").await.unwrap();
    assert!(kws.contains(&"REQUIRETLS".to_string()));
    client
        .expect("MAIL FROM:<a@clinic.example.test> REQUIRETLS", 250)
        .await
        .unwrap();
    client
        .expect("RCPT TO:<x@good.example.test>", 250)
        .await
        .unwrap();
    client
        .expect("RCPT TO:<y@norequire.example.test>", 250)
        .await
        .unwrap();
    assert_eq!(
        client.data(&message("requiretls", "x")).await.unwrap().0,
        250
    );

    let got = good.wait_for(1, WAIT).await.unwrap();
    assert!(
        got[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("REQUIRETLS")),
        "{:?}",
        got[0].mail_params
    );
    assert!(got[0].tls.is_some());
    let rows = gw.wait_audit(WAIT, |r| r.len() >= 2).await.unwrap();
    let y = rows
        .iter()
        .find(|r| r["recipient"] == "y@norequire.example.test")
        .unwrap();
    // RFC 8689 section 5: a host that, inside a verified TLS session, does
    // not offer REQUIRETLS gets 5.7.30, and with no other MX the message
    // comes back to the sender.
    assert_eq!(y["outcome"], "bounced", "{y}");
    assert!(
        y["smtp_reply"].as_str().unwrap().contains("REQUIRETLS"),
        "{y}"
    );
    let y_ev: serde_json::Value = serde_json::from_str(y["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(y_ev["status"], "5.7.30", "{y}");
    assert_eq!(norequire.data_commands(), 0);
    assert_eq!(norequire.transactions(), 0);
    let x = rows
        .iter()
        .find(|r| r["recipient"] == "x@good.example.test")
        .unwrap();
    assert_eq!(x["tls_requirement"], "verified");
}

/// Checks a report against the structure RFC 8460 section 4.4 requires.
pub(crate) fn check_report_schema(r: &serde_json::Value) {
    for k in ["organization-name", "contact-info", "report-id"] {
        assert!(r[k].is_string(), "{k} must be a string: {r}");
    }
    for k in ["start-datetime", "end-datetime"] {
        let t = r["date-range"][k].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{k} must be RFC 3339: {t}"
        );
    }
    let policies = r["policies"].as_array().expect("policies array");
    assert!(!policies.is_empty());
    for p in policies {
        let t = p["policy"]["policy-type"].as_str().unwrap();
        assert!(["tlsa", "sts", "no-policy-found"].contains(&t));
        assert!(p["policy"]["policy-domain"].is_string());
        if let Some(s) = p["policy"].get("policy-string") {
            assert!(s.as_array().unwrap().iter().all(|x| x.is_string()));
        }
        assert!(p["summary"]["total-successful-session-count"].is_u64());
        assert!(p["summary"]["total-failure-session-count"].is_u64());
        for f in p["failure-details"].as_array().into_iter().flatten() {
            let rt = f["result-type"].as_str().unwrap();
            let known = [
                "starttls-not-supported",
                "certificate-host-mismatch",
                "certificate-expired",
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
                "certificate-not-trusted",
                "sts-policy-invalid",
                "sts-webpki-invalid",
                "validation-failure",
                "sts-policy-fetch-error",
            ];
            assert!(known.contains(&rt), "{rt}");
            assert!(f["failed-session-count"].is_u64());
            for k in [
                "receiving-mx-hostname",
                "receiving-ip",
                "failure-reason-code",
            ] {
                assert!(
                    f.get(k).is_none_or(|v| v.is_string()),
                    "{k} must be a string: {f}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_report_is_sent_with_the_right_counts() {
    let w = World::new().await;
    // sts.example.test: enforce policy, MX with an untrusted certificate.
    w.domain("sts.example.test", "mx.sts.example.test");
    w.zone
        .add_txt("_mta-sts.sts.example.test", "v=STSv1; id=r1;");
    w.zone.add_txt(
        "_smtp._tls.sts.example.test",
        "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example.test",
    );
    let web_ip = gateway::fresh_ip();
    let _web = PolicyServer::start(
        &w,
        web_ip,
        "sts.example.test",
        200,
        &policy("enforce", "*.sts.example.test"),
    )
    .await;
    let cert = crate::world::pki::self_signed(&["mx.sts.example.test"]);
    let _bad_mx = w.mx(MxOptions::new("mx.sts.example.test").tls(&cert)).await;
    // reports.example.test receives the report.
    let ip2 = gateway::fresh_ip();
    w.zone
        .add_mx("reports.example.test", 10, "mx.reports.example.test");
    w.zone.add_a("mx.reports.example.test", ip2);
    let reports = TestMx::start(
        MxOptions::new("mx.reports.example.test")
            .ip(ip2)
            .port(w.port),
    )
    .await;
    let mut opts = w.options();
    opts.extra = "[tls_report]\norganization = \"Test Clinic\"\nperiod = \"4s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    let got = reports.wait_for(1, Duration::from_secs(30)).await.unwrap();
    let m = &got[0];
    assert_eq!(m.rcpt_to, vec!["tlsrpt@reports.example.test"]);
    let text = m.data_str();
    assert!(text.contains("report-type=\"tlsrpt\""), "{text}");
    assert!(text.contains("TLS-Report-Domain: sts.example.test"));
    // Python's email package reads it as RFC 8460 section 5.3 says: a
    // multipart/report of type tlsrpt with a gzip'd JSON attachment that
    // decodes to the same report.
    let tree = crate::common::python_mime_tree(
        &m.data,
        r#"
import gzip, json
att = [p for p in msg.walk() if p.get_content_type() == 'application/tlsrpt+gzip'][0]
report = json.loads(gzip.decompress(att.get_content()))
print(att.get_filename().endswith('.json.gz'), report['policies'][0]['policy']['policy-domain'])
"#,
    );
    assert!(tree.starts_with("0 multipart/report "), "{tree}");
    assert!(tree.contains("('report-type', 'tlsrpt')"), "{tree}");
    assert!(tree.contains("\n1 application/tlsrpt+gzip"), "{tree}");
    assert!(tree.ends_with("True sts.example.test\n"), "{tree}");
    assert!(!tree.contains("Defect"), "{tree}");
    // Decode the gzip attachment.
    let b64: String = text
        .split("Content-Type: application/tlsrpt+gzip")
        .nth(1)
        .unwrap()
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("--")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    use base64::Engine;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let mut json = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    check_report_schema(&r);
    assert_eq!(r["organization-name"], "Test Clinic");
    let p = &r["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "sts.example.test");
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert!(
        p["summary"]["total-failure-session-count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
    assert_eq!(
        p["failure-details"][0]["receiving-mx-hostname"],
        "mx.sts.example.test"
    );
}

/// Records HTTPS POSTs on `ip:443`.
pub(crate) async fn post_collector(
    w: &World,
    ip: Ipv4Addr,
    host: &str,
) -> (
    Arc<Mutex<Vec<(String, String, Vec<u8>)>>>,
    tokio::task::JoinHandle<()>,
) {
    w.zone.add_a(host, ip);
    let cert = w.ca.issue(&[host]);
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind((ip, 443))
        .await
        .expect("bind 443 (tests run as root)");
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, g3) = (acceptor.clone(), g2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..p]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= p + 4 + len {
                            let line = head.lines().next().unwrap_or("").to_string();
                            let ct = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Type: "))
                                .unwrap_or("")
                                .to_string();
                            g3.lock()
                                .unwrap()
                                .push((line, ct, data[p + 4..p + 4 + len].to_vec()));
                            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (got, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_report_is_posted_to_an_https_rua() {
    let w = World::new().await;
    w.domain("plain.example.test", "mx.plain.example.test");
    w.zone.add_txt(
        "_smtp._tls.plain.example.test",
        "v=TLSRPTv1; rua=https://reports.example.test/v1/tlsrpt",
    );
    let mx = w.mx(MxOptions::new("mx.plain.example.test")).await;
    let (posts, task) = post_collector(&w, gateway::fresh_ip(), "reports.example.test").await;
    let mut opts = w.options();
    opts.extra = "[tls_report]\nperiod = \"4s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@plain.example.test"],
        &message("rpt", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while posts.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no report posted\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (line, ct, body) = posts.lock().unwrap()[0].clone();
    assert!(line.starts_with("POST /v1/tlsrpt HTTP/1.1"), "{line}");
    assert_eq!(ct, "application/tlsrpt+gzip");
    let mut json = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut json)
        .unwrap();
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    check_report_schema(&r);
    let p = &r["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "starttls-not-supported"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_enforce_policy_binds_delivery_when_the_probe_fails() {
    let (w, _web, mx, gw) = setup("enforce", "mx.sts.example.test", |w| {
        let cert = w.ca.issue(&["mx.sts.example.test"]);
        MxOptions::new("mx.sts.example.test").tls(&cert)
    })
    .await;
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@sts.example.test"],
        &message("sts", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    // Now a preferred MX the policy does not name (a forged MX answer),
    // and the MTA-STS probe cannot finish: its TXT lookup hangs past the
    // probe timeout, so the decision falls to opportunistic.
    let rogue_ip = gateway::fresh_ip();
    w.zone
        .add_mx("sts.example.test", 5, "mx.rogue.example.test");
    w.zone.add_a("mx.rogue.example.test", rogue_ip);
    let rogue = TestMx::start(
        MxOptions::new("mx.rogue.example.test")
            .ip(rogue_ip)
            .port(w.port),
    )
    .await;
    w.zone.set_behaviour(
        "_mta-sts.sts.example.test",
        crate::world::Behaviour::Timeout,
    );
    let mut gw = gw;
    gw.stop().unwrap();
    gw.spawn().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["c@sts.example.test"],
        &message("sts2", "x"),
    )
    .unwrap();
    let got = mx.wait_for(2, WAIT).await.unwrap();
    assert!(got[1].tls.is_some());
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    let r = rows
        .iter()
        .find(|r| r["recipient"] == "c@sts.example.test")
        .unwrap();
    assert_eq!(r["outcome"], "delivered", "{r}");
    assert_eq!(r["remote_host"], "mx.sts.example.test", "{r}");
    let e = ev(r);
    let probe = e["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "mta-sts")
        .unwrap()
        .clone();
    // The probe timed out refreshing; the cached policy still answered
    // (or, failing that, delivery applied it by itself).
    assert!(
        probe["result"]["error"].is_string()
            || (probe["evidence"]["source"] == "cache"
                && probe["evidence"]["discovery_error"].is_string()),
        "{probe}"
    );
    assert_eq!(e["attempt"]["mta_sts"]["id"], "first1", "{e}");
    assert_eq!(e["attempt"]["tls_enforced"], "mta-sts", "{e}");
    assert_eq!(e["attempt"]["tls"]["cert_verified"], true, "{e}");
    assert_eq!(rogue.connections(), 0, "the MX the policy does not name");
}
