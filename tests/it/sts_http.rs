//! MTA-STS policies served by an HTTPS server we did not write (Python's
//! `http.server` with `ssl`), answering the ways real and hostile servers
//! do: chunked, kept alive, a 1xx first, the wrong content type, a chunk
//! size of `ffffffffffffffff`, too large, too slow, redirected, and from a
//! host whose first address refuses. Each case is read from `sealgate
//! probe --json`, which runs the same probes as delivery.

use std::time::{Duration, Instant};

use crate::common::{World, message, python_send};
use crate::gateway::{self, Gateway};
use crate::world::Behaviour;
use crate::world::pyhttps::{Mode, PyHttps};

const ENFORCE: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n";

/// `mta-sts.{domain}` served by Python in `mode`, `_mta-sts.{domain}`
/// announcing `id`.
async fn policy_host(w: &World, domain: &str, id: &str, mode: Mode, body: &str) -> PyHttps {
    let ip = gateway::fresh_ip();
    let host = format!("mta-sts.{domain}");
    w.zone.add_a(&host, ip);
    w.zone
        .add_txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id};"));
    serve(w, ip, &host, mode, body).await
}

async fn serve(w: &World, ip: std::net::Ipv4Addr, host: &str, mode: Mode, body: &str) -> PyHttps {
    let cert = w.ca.issue(&[host]);
    let dir = w.dir.path().join(host);
    let (c, k) = cert.write(&dir, "tls").unwrap();
    PyHttps::start(ip, 443, &c, &k, &dir.join("state"), mode, body)
        .await
        .expect("python3 http.server (the tests run as root for port 443)")
}

/// The mta-sts probe's report for each address, from `sealgate probe`.
fn probe(gw: &Gateway, addrs: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["probe", "--json"];
    args.extend_from_slice(addrs);
    let out = gw.cli(&args);
    assert!(
        out.status.success(),
        "sealgate probe failed (a panic?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["decision"]["explanation"]["probes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["probe"] == "mta-sts")
                .cloned()
                .unwrap_or_else(|| panic!("no mta-sts probe in {r}"))
        })
        .collect()
}

/// Whether the probe found an enforce policy (the capability delivery
/// needs for `mta-sts`).
fn enforces(p: &serde_json::Value) -> bool {
    p["result"]["capabilities"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["level"] == "mta-sts"))
}

fn error_of(p: &serde_json::Value) -> String {
    let e = &p["evidence"];
    ["fetch_error", "discovery_error"]
        .iter()
        .find_map(|k| e[k].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_from_an_independent_https_server() {
    let w = World::new().await;
    let cases = [
        ("chunked.example.test", Mode::Chunked),
        ("keepalive.example.test", Mode::Plain),
        ("info.example.test", Mode::Informational),
        ("wrongtype.example.test", Mode::WrongType),
        ("hugechunk.example.test", Mode::HugeChunk),
        ("big.example.test", Mode::Big),
        ("redirect.example.test", Mode::Redirect),
    ];
    let mut servers = Vec::new();
    for (domain, mode) in cases {
        servers.push(policy_host(&w, domain, "one1", mode, ENFORCE).await);
    }
    // A host with two addresses, the first of which refuses connections.
    let refusing = gateway::fresh_ip();
    let serving = gateway::fresh_ip();
    w.zone.add_a("mta-sts.twoaddr.example.test", refusing);
    w.zone.add_a("mta-sts.twoaddr.example.test", serving);
    w.zone
        .add_txt("_mta-sts.twoaddr.example.test", "v=STSv1; id=one1;");
    let two = serve(
        &w,
        serving,
        "mta-sts.twoaddr.example.test",
        Mode::Chunked,
        ENFORCE,
    )
    .await;
    let gw = w.gateway().unwrap();
    let addrs: Vec<String> = cases
        .iter()
        .map(|(d, _)| format!("b@{d}"))
        .chain(["b@twoaddr.example.test".to_string()])
        .collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let started = Instant::now();
    let got = probe(&gw, &addrs);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a kept-alive connection must not wait for the server to close"
    );
    let by = |d: &str| {
        let i = addrs.iter().position(|a| a.ends_with(d)).unwrap();
        got[i].clone()
    };
    for d in [
        "chunked.example.test",
        "keepalive.example.test",
        "info.example.test",
        "twoaddr.example.test",
    ] {
        let p = by(d);
        assert_eq!(p["evidence"]["source"], "fetched", "{d}: {p}");
        assert_eq!(p["evidence"]["policy"]["mx"][0], "mx.example.test", "{d}");
        assert!(enforces(&p), "{d}: {p}");
    }
    assert_eq!(
        by("twoaddr.example.test")["evidence"]["from"],
        serving.to_string()
    );
    assert_eq!(two.requests().len(), 1);
    let refused = [
        ("wrongtype.example.test", "text/plain"),
        ("hugechunk.example.test", "malformed HTTP response"),
        ("big.example.test", "larger than"),
        ("redirect.example.test", "HTTP 301"),
    ];
    for (d, why) in refused {
        let p = by(d);
        assert!(!enforces(&p), "{d}: {p}");
        assert!(error_of(&p).contains(why), "{d}: {p}");
    }
    // The redirect was not followed.
    assert!(servers.iter().all(|s| s.requests().len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_enforce_policy_outlives_a_slow_or_failing_refresh() {
    let w = World::new().await;
    let web = policy_host(&w, "slow.example.test", "one1", Mode::Plain, ENFORCE).await;
    web.close_after_each().unwrap();
    let gw = w.gateway().unwrap();
    let p = &probe(&gw, &["b@slow.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "fetched", "{p}");
    assert!(enforces(p));

    // A new id makes sealgate fetch again, the TXT answer is slow and the
    // server now hangs: discovery gives up before the probe does, and the
    // cached policy applies.
    w.zone.remove_rrset(
        "_mta-sts.slow.example.test",
        hickory_proto::rr::RecordType::TXT,
    );
    w.zone
        .add_txt("_mta-sts.slow.example.test", "v=STSv1; id=two2;");
    w.zone.set_behaviour_for(
        "_mta-sts.slow.example.test",
        hickory_proto::rr::RecordType::TXT,
        Behaviour::Delay(Duration::from_secs(1)),
    );
    web.set(Mode::Slow, ENFORCE).unwrap();
    let started = Instant::now();
    let p = &probe(&gw, &["b@slow.example.test"])[0];
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(enforces(p), "the cached policy keeps applying: {p}");
    assert_eq!(p["evidence"]["source"], "cache", "{p}");
    assert!(error_of(p).contains("timed out"), "{p}");
    assert_eq!(p["evidence"]["policy"]["id"], "one1");

    // The same when the TXT lookup never answers...
    w.zone.set_behaviour_for(
        "_mta-sts.slow.example.test",
        hickory_proto::rr::RecordType::TXT,
        Behaviour::Timeout,
    );
    let p = &probe(&gw, &["b@slow.example.test"])[0];
    assert!(enforces(p), "{p}");
    assert_eq!(p["evidence"]["source"], "cache", "{p}");
    w.zone.set_behaviour_for(
        "_mta-sts.slow.example.test",
        hickory_proto::rr::RecordType::TXT,
        Behaviour::Normal,
    );

    // ... and when the refresh fails outright.
    web.set(Mode::WrongType, ENFORCE).unwrap();
    let p = &probe(&gw, &["b@slow.example.test"])[0];
    assert!(enforces(p), "{p}");
    assert!(error_of(p).contains("text/plain"), "{p}");

    // Without a cached policy, a hanging server means no policy, within
    // the probe's time.
    let _hang = policy_host(&w, "hang.example.test", "x1", Mode::Slow, ENFORCE).await;
    let p = &probe(&gw, &["b@hang.example.test"])[0];
    assert!(!enforces(p), "{p}");
    assert!(error_of(p).contains("timed out"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_refreshed_before_they_expire() {
    let w = World::new().await;
    let short = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 4\r\n";
    let web = policy_host(&w, "fresh.example.test", "one1", Mode::Chunked, short).await;
    web.close_after_each().unwrap();
    let gw = w.gateway().unwrap();
    let p = &probe(&gw, &["b@fresh.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "fetched", "{p}");
    let p = &probe(&gw, &["b@fresh.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "cache", "{p}");
    assert_eq!(web.requests().len(), 1);
    // Past half its max_age, the same id is fetched again...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p = &probe(&gw, &["b@fresh.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "fetched", "{p}");
    assert_eq!(p["evidence"]["refresh"], true, "{p}");
    assert_eq!(web.requests().len(), 2);
    // ... and also when the TXT record has gone meanwhile (an attacker
    // hiding it must not make a policy in use lapse).
    w.zone.remove_rrset(
        "_mta-sts.fresh.example.test",
        hickory_proto::rr::RecordType::TXT,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let p = &probe(&gw, &["b@fresh.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "fetched", "{p}");
    assert!(enforces(p), "{p}");
    assert_eq!(web.requests().len(), 3);
}

/// The RFC 8460 reports POSTed so far, gunzipped and parsed, by policy
/// domain.
fn posted_reports(
    posts: &std::sync::Mutex<Vec<(String, String, Vec<u8>)>>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use std::io::Read;
    let mut out = std::collections::BTreeMap::new();
    for (_, _, body) in posts.lock().unwrap().iter() {
        let mut json = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut json)
            .unwrap();
        let r: serde_json::Value = serde_json::from_str(&json).unwrap();
        crate::sts::check_report_schema(&r);
        let domain = r["policies"][0]["policy"]["policy-domain"]
            .as_str()
            .unwrap()
            .to_string();
        out.insert(domain, r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_policies_that_cannot_be_obtained_are_reported() {
    let w = World::new().await;
    let _notfound = policy_host(&w, "notfound.example.test", "one1", Mode::NotFound, ENFORCE).await;
    let _invalid = policy_host(
        &w,
        "invalid.example.test",
        "one1",
        Mode::Plain,
        "version: STSv1\r\nmode: strict\r\nmx: mx.example.test\r\nmax_age: 86400\r\n",
    )
    .await;
    // A certificate from a trusted CA, for another name than mta-sts.<domain>.
    let ip = gateway::fresh_ip();
    let host = "mta-sts.wrongname.example.test";
    w.zone.add_a(host, ip);
    w.zone
        .add_txt("_mta-sts.wrongname.example.test", "v=STSv1; id=one1;");
    let cert = w.ca.issue(&["www.wrongname.example.test"]);
    let dir = w.dir.path().join(host);
    let (c, k) = cert.write(&dir, "tls").unwrap();
    let wrongname = PyHttps::start(ip, 443, &c, &k, &dir.join("state"), Mode::Plain, ENFORCE)
        .await
        .expect("python3 http.server");
    let domains = [
        "notfound.example.test",
        "invalid.example.test",
        "wrongname.example.test",
    ];
    for d in domains {
        w.zone.add_txt(
            &format!("_smtp._tls.{d}"),
            "v=TLSRPTv1; rua=https://reports.example.test/v1/tlsrpt",
        );
    }
    let (posts, task) =
        crate::sts::post_collector(&w, gateway::fresh_ip(), "reports.example.test").await;
    let mut opts = w.options();
    opts.extra = "[tls_report]\nperiod = \"4s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    // The default policy holds mail to a domain without a policy; the
    // attempt is enough to discover (and fail to get) each policy.
    let rcpts: Vec<String> = domains.iter().map(|d| format!("b@{d}")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &rcpts,
        &message("sts-fail", "x"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let reports = loop {
        let got = posted_reports(&posts);
        if domains.iter().all(|d| got.contains_key(*d)) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "reports for {:?} only\n{}",
            got.keys().collect::<Vec<_>>(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected = [
        (
            "notfound.example.test",
            "sts-policy-fetch-error",
            "http-404",
        ),
        (
            "invalid.example.test",
            "sts-policy-invalid",
            "policy-syntax",
        ),
        (
            "wrongname.example.test",
            "sts-webpki-invalid",
            "certificate",
        ),
    ];
    for (domain, result_type, code) in expected {
        let r = &reports[domain];
        let p = r["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"]["policy-type"] == "sts")
            .unwrap_or_else(|| panic!("{domain}: no sts policy in {r}"));
        // No policy could be obtained: the policy domain, nothing to show.
        assert_eq!(p["policy"]["policy-domain"], domain, "{r}");
        assert!(p["policy"].get("policy-string").is_none(), "{r}");
        assert!(p["policy"].get("mx-host").is_none(), "{r}");
        assert_eq!(p["summary"]["total-successful-session-count"], 0, "{r}");
        let failures = p["failure-details"].as_array().unwrap();
        assert!(!failures.is_empty(), "{r}");
        for f in failures {
            assert_eq!(f["result-type"], result_type, "{domain}: {r}");
            assert_eq!(f["failure-reason-code"], code, "{domain}: {r}");
            assert!(f["failed-session-count"].as_u64().unwrap() >= 1);
            assert!(f.get("receiving-mx-hostname").is_none(), "{r}");
        }
    }
    // The policy host with the wrong certificate never got a request.
    assert!(wrongname.requests().is_empty());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_policies_are_refreshed_without_mail_and_kept_when_the_refresh_fails() {
    let w = World::new().await;
    let short = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 30\r\n";
    let web = policy_host(&w, "idle.example.test", "one1", Mode::Plain, short).await;
    web.close_after_each().unwrap();
    let mut opts = w.options();
    // Appended to the gateway's `[probe]` table.
    opts.extra = "mta_sts_refresh = \"1s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    // `sealgate probe` fills the persistent cache; nobody mails the domain.
    let p = &probe(&gw, &["b@idle.example.test"])[0];
    assert_eq!(p["evidence"]["source"], "fetched", "{p}");
    let file = gw.spool_dir().join("mta-sts/idle.example.test.json");
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };
    let first = read();
    // With a round each second, a 30-second policy is due in the round
    // before half its life (15 s) has passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while web.requests().len() < 2 {
        assert!(Instant::now() < deadline, "not refreshed\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while read()["fetched_at"] == first["fetched_at"] {
        assert!(Instant::now() < deadline, "refreshed policy not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshed = read();
    // A failing refresh keeps the cached policy.
    web.set(Mode::NotFound, short).unwrap();
    let n = web.requests().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while web.requests().len() < n + 2 {
        assert!(Instant::now() < deadline, "no refresh tried\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read(), refreshed, "the cached policy stays as it was");
    assert!(
        gw.log().contains("MTA-STS policy refresh failed"),
        "{}",
        gw.log()
    );
    let p = &probe(&gw, &["b@idle.example.test"])[0];
    assert!(enforces(p), "{p}");
}
