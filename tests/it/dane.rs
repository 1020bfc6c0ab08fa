//! DANE against the DNSSEC-signed test world: TLSA matches, mismatches,
//! bogus answers, unsigned zones, STARTTLS stripping, DANE-TA.

use std::net::Ipv4Addr;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{self, Gateway};
use crate::world::{MxOptions, TestCert, TestMx};

fn sha256(d: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, d)
        .as_ref()
        .to_vec()
}

fn ev(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap()
}

/// `domain` MX `mx.<domain>` on a fresh address with `opts`, sharing the
/// world's port.
async fn mx_for(w: &World, domain: &str, opts: MxOptions) -> (TestMx, Ipv4Addr) {
    let host = format!("mx.{domain}");
    let ip = gateway::fresh_ip();
    w.zone.add_mx(domain, 10, &host);
    w.zone.add_a(&host, ip);
    (TestMx::start(opts.ip(ip).port(w.port)).await, ip)
}

fn tlsa_owner(w: &World, host: &str) -> String {
    format!("_{}._tcp.{host}", w.port)
}

fn spki_sha256(cert: &TestCert) -> Vec<u8> {
    let spki = sealgate::net::dane::spki(cert.cert_der.as_ref()).unwrap();
    sha256(spki.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ee_match_delivers_and_records_the_tlsa() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.dane.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "dane.example.test",
        MxOptions::new("mx.dane.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.dane.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert),
    );
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.example.test"],
        &message("dane", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(
        got[0].tls.as_ref().unwrap().sni.as_deref(),
        Some("mx.dane.example.test")
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["tls_requirement"], "dane");
    assert_eq!(rows[0]["outcome"], "delivered");
    let e = ev(&rows[0]);
    assert!(
        e["attempt"]["tls"]["dane_match"]
            .as_str()
            .unwrap()
            .starts_with("3 1 1 "),
        "{e}"
    );
    let probe = e["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "dane")
        .unwrap()
        .clone();
    assert_eq!(probe["evidence"]["dnssec"], "secure");
    assert_eq!(probe["evidence"]["mx"][0]["usable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_mismatch_defers_and_never_sends_data() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.dane.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "dane.example.test",
        MxOptions::new("mx.dane.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.dane.example.test"),
        3,
        1,
        1,
        sha256(b"some other key"),
    );
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.example.test"],
        &message("dane", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    assert_eq!(rows[0]["tls_requirement"], "dane");
    assert!(
        rows[0]["smtp_reply"].as_str().unwrap().contains("TLSA"),
        "{}",
        rows[0]
    );
    assert_eq!(mx.data_commands(), 0);
    assert_eq!(mx.transactions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ta_with_a_private_ca_delivers() {
    let w = World::new().await;
    let cert = w.ca.issue(&["mx.dane.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "dane.example.test",
        MxOptions::new("mx.dane.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.dane.example.test"),
        2,
        0,
        1,
        sha256(w.ca.cert_der().as_ref()),
    );
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.example.test"],
        &message("dane-ta", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert!(
        ev(&rows[0])["attempt"]["tls"]["dane_match"]
            .as_str()
            .unwrap()
            .starts_with("2 0 1 ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_dnssec_defers_even_under_an_opportunistic_policy() {
    let w = World::new().await;
    let (mx, _) = mx_for(
        &w,
        "bogus.example.test",
        MxOptions::new("mx.bogus.example.test"),
    )
    .await;
    w.zone.set_bogus("bogus.example.test", true);
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@bogus.example.test"],
        &message("bogus", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    assert!(
        rows[0]["smtp_reply"].as_str().unwrap().contains("bogus"),
        "{}",
        rows[0]
    );
    assert_eq!(
        mx.connections(),
        0,
        "never connects to a host named by a bogus answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_zones_have_no_dane_and_unusable_tlsa_means_mandatory_tls() {
    let w = World::new().await;
    w.zone.add_insecure_delegation("unsigned.test");
    let (plain, _) = mx_for(&w, "unsigned.test", MxOptions::new("mx.unsigned.test")).await;
    // A secure domain whose only TLSA record has usage PKIX-EE(1): unusable
    // for SMTP, so TLS is mandatory but not authenticated (RFC 7672 2.2).
    let cert = crate::world::pki::self_signed(&["mx.pkix.example.test"]);
    let (pkix, _) = mx_for(
        &w,
        "pkix.example.test",
        MxOptions::new("mx.pkix.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.pkix.example.test"),
        1,
        1,
        1,
        spki_sha256(&cert),
    );
    // The same, but the host does not offer STARTTLS: never cleartext.
    let (stripped, _) = mx_for(
        &w,
        "nostarttls.example.test",
        MxOptions::new("mx.nostarttls.example.test")
            .tls(&cert)
            .offer_starttls(false),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.nostarttls.example.test"),
        0,
        1,
        1,
        spki_sha256(&cert),
    );
    // Unknown selector and matching type: unusable as well.
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.nostarttls.example.test"),
        3,
        7,
        9,
        spki_sha256(&cert),
    );
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &[
            "b@unsigned.test",
            "c@pkix.example.test",
            "d@nostarttls.example.test",
        ],
        &message("plain", "x"),
    )
    .unwrap();
    plain.wait_for(1, WAIT).await.unwrap();
    let got = pkix.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].tls.is_some(), "the unusable-TLSA host got TLS");
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    let row = |rcpt: &str| rows.iter().find(|r| r["recipient"] == rcpt).unwrap();
    let unsigned = row("b@unsigned.test");
    assert_eq!(unsigned["tls_requirement"], "opportunistic", "{unsigned}");
    assert_eq!(unsigned["outcome"], "delivered");
    let probe = ev(unsigned)["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "dane")
        .unwrap()
        .clone();
    assert_eq!(probe["evidence"]["dnssec"], "insecure");
    let secure = row("c@pkix.example.test");
    assert_eq!(secure["tls_requirement"], "encrypted", "{secure}");
    assert_eq!(secure["outcome"], "delivered");
    assert_eq!(ev(secure)["attempt"]["method"], "tls");
    assert_eq!(ev(secure)["attempt"]["dnssec_mx"], true);
    let held = row("d@nostarttls.example.test");
    assert_eq!(held["tls_requirement"], "encrypted", "{held}");
    assert_eq!(held["outcome"], "deferred", "{held}");
    assert!(
        held["smtp_reply"].as_str().unwrap().contains("STARTTLS"),
        "{held}"
    );
    assert_eq!(stripped.transactions(), 0, "nothing sent in the clear");
    assert_eq!(stripped.data_commands(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_usable_and_unusable_tlsa_authenticates_with_the_usable_record() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.mixed.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "mixed.example.test",
        MxOptions::new("mx.mixed.example.test").tls(&cert),
    )
    .await;
    let owner = tlsa_owner(&w, "mx.mixed.example.test");
    // PKIX-EE (unusable) first, a DANE-EE record with an unknown matching
    // type (unusable), then the one usable record.
    w.zone.add_tlsa(&owner, 1, 1, 1, spki_sha256(&cert));
    w.zone.add_tlsa(&owner, 3, 1, 7, spki_sha256(&cert));
    w.zone.add_tlsa(&owner, 3, 1, 1, spki_sha256(&cert));
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@mixed.example.test"],
        &message("mixed", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["tls_requirement"], "dane");
    assert!(
        ev(&rows[0])["attempt"]["tls"]["dane_match"]
            .as_str()
            .unwrap()
            .starts_with("3 1 1 "),
        "{}",
        rows[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_delivers_only_to_the_validated_mx_set() {
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, MX};
    let w = World::new().await;
    // lied.example.test: the signed MX names mx.lied; the plain resolver is
    // told mx.forged, a host with its own signed address and TLSA record.
    let cert = crate::world::pki::self_signed(&["mx.lied.example.test"]);
    let (real, _) = mx_for(
        &w,
        "lied.example.test",
        MxOptions::new("mx.lied.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.lied.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert),
    );
    let forged_cert = crate::world::pki::self_signed(&["mx.forged.example.test"]);
    let forged_ip = gateway::fresh_ip();
    w.zone.add_a("mx.forged.example.test", forged_ip);
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.forged.example.test"),
        3,
        1,
        1,
        spki_sha256(&forged_cert),
    );
    let forged = TestMx::start(
        MxOptions::new("mx.forged.example.test")
            .tls(&forged_cert)
            .ip(forged_ip)
            .port(w.port),
    )
    .await;
    w.zone.lie_to_plain_queries(
        "lied.example.test",
        RData::MX(MX::new(
            10,
            crate::world::dns::name("mx.forged.example.test"),
        )),
    );
    // addr.example.test: the MX is honest, its address is forged for the
    // plain resolver.
    let cert2 = crate::world::pki::self_signed(&["mx.addr.example.test"]);
    let (real2, _) = mx_for(
        &w,
        "addr.example.test",
        MxOptions::new("mx.addr.example.test").tls(&cert2),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.addr.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert2),
    );
    let forged2_ip = gateway::fresh_ip();
    let forged2 = TestMx::start(
        MxOptions::new("mx.addr.example.test")
            .tls(&forged_cert)
            .ip(forged2_ip)
            .port(w.port),
    )
    .await;
    w.zone
        .lie_to_plain_queries("mx.addr.example.test", RData::A(A(forged2_ip)));
    // The lies reach the plain resolver (the world is what we think).
    let plain = w.dns.resolver();
    let mx = plain.mx_lookup("lied.example.test.").await.unwrap();
    assert_eq!(
        mx.iter().next().unwrap().exchange().to_ascii(),
        "mx.forged.example.test."
    );

    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@lied.example.test", "c@addr.example.test"],
        &message("lied", "x"),
    )
    .unwrap();
    real.wait_for(1, WAIT).await.unwrap();
    real2.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    for (rcpt, host) in [
        ("b@lied.example.test", "mx.lied.example.test"),
        ("c@addr.example.test", "mx.addr.example.test"),
    ] {
        let r = rows.iter().find(|r| r["recipient"] == rcpt).unwrap();
        assert_eq!(r["outcome"], "delivered", "{r}");
        assert_eq!(r["tls_requirement"], "dane", "{r}");
        assert_eq!(r["remote_host"], host, "{r}");
        let e = ev(r);
        assert_eq!(e["attempt"]["dnssec_mx"], true, "{e}");
        assert_eq!(e["attempt"]["hosts"], serde_json::json!([host]), "{e}");
        assert!(
            e["attempt"]["tls"]["dane_match"]
                .as_str()
                .unwrap()
                .starts_with("3 1 1 "),
            "{e}"
        );
    }
    assert_eq!(forged.connections(), 0, "the forged MX was contacted");
    assert_eq!(forged2.connections(), 0, "the forged address was contacted");
}

/// A signed MX set without TLSA, and a REQUIRETLS message (so verified
/// TLS): the plain resolver is told another MX whose certificate is just as
/// valid (same CA). Delivery still takes the host from the validated MX
/// set (RFC 8689 section 4.2.1); the forged host never sees a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_to_a_signed_mx_set_ignores_a_forged_mx_answer() {
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::MX;
    let w = World::new().await;
    let cert = w.ca.issue(&["mx.rt.example.test"]);
    let (real, _) = mx_for(
        &w,
        "rt.example.test",
        MxOptions::new("mx.rt.example.test")
            .tls(&cert)
            .ehlo_keyword("REQUIRETLS"),
    )
    .await;
    let evil_cert = w.ca.issue(&["mx.evil.example.test"]);
    let evil_ip = gateway::fresh_ip();
    w.zone.add_a("mx.evil.example.test", evil_ip);
    let evil = TestMx::start(
        MxOptions::new("mx.evil.example.test")
            .tls(&evil_cert)
            .ehlo_keyword("REQUIRETLS")
            .ip(evil_ip)
            .port(w.port),
    )
    .await;
    w.zone.lie_to_plain_queries(
        "rt.example.test",
        RData::MX(MX::new(10, crate::world::dns::name("mx.evil.example.test"))),
    );
    let gw_cert = w.ca.issue(&["gateway.example.test"]);
    let (c, k) = gw_cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.tls = Some((c, k));
    let gw = Gateway::start(opts).unwrap();
    let client = crate::world::SmtpClient::connect(gw.addr).await.unwrap();
    let mut client = client
        .starttls(w.ca.client_config(), "gateway.example.test")
        .await
        .unwrap();
    client.ehlo("client.example.test").await.unwrap();
    client
        .expect("MAIL FROM:<a@clinic.example.test> REQUIRETLS", 250)
        .await
        .unwrap();
    client
        .expect("RCPT TO:<x@rt.example.test>", 250)
        .await
        .unwrap();
    assert_eq!(client.data(&message("rt", "x")).await.unwrap().0, 250);
    real.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    let r = &rows[0];
    assert_eq!(r["outcome"], "delivered", "{r}");
    assert_eq!(r["remote_host"], "mx.rt.example.test", "{r}");
    assert_eq!(ev(r)["attempt"]["dnssec_mx"], true, "{r}");
    assert_eq!(evil.connections(), 0, "the forged MX was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_stripped_at_a_dane_host_defers() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.dane.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "dane.example.test",
        MxOptions::new("mx.dane.example.test")
            .tls(&cert)
            .offer_starttls(false),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.dane.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert),
    );
    let gw = w.gateway().unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.example.test"],
        &message("strip", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "deferred");
    assert!(rows[0]["smtp_reply"].as_str().unwrap().contains("STARTTLS"));
    assert_eq!(mx.data_commands(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_wins_over_mta_sts_and_probe_shows_both() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.both.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "both.example.test",
        MxOptions::new("mx.both.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.both.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert),
    );
    // MTA-STS announced (its HTTPS policy host does not answer).
    w.zone
        .add_txt("_mta-sts.both.example.test", "v=STSv1; id=x1;");
    w.zone.add_txt(
        "_smtp._tls.both.example.test",
        "v=TLSRPTv1; rua=mailto:tls@both.example.test",
    );
    let mut opts = w.options();
    opts.extra = String::new();
    let gw = Gateway::start(opts).unwrap();
    let out = gw.cli(&["probe", "--json", "b@both.example.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["decision"]["tls"], "dane");
    let probes = v[0]["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap();
    assert!(probes.iter().any(|p| p["probe"] == "mta-sts"));
    assert!(probes.iter().any(|p| {
        p["probe"] == "dane"
            && p["evidence"]["mx"][0]["tlsa"][0]
                .as_str()
                .unwrap()
                .starts_with("3 1 1")
    }));
    assert_eq!(
        v[0]["tls_rpt"],
        serde_json::json!(["mailto:tls@both.example.test"])
    );
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@both.example.test"],
        &message("both", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_no_on_a_dane_only_domain_delivers_over_dane() {
    let w = World::new().await;
    let cert = crate::world::pki::self_signed(&["mx.dane.example.test"]);
    let (mx, _) = mx_for(
        &w,
        "dane.example.test",
        MxOptions::new("mx.dane.example.test").tls(&cert),
    )
    .await;
    w.zone.add_tlsa(
        &tlsa_owner(&w, "mx.dane.example.test"),
        3,
        1,
        1,
        spki_sha256(&cert),
    );
    let mut opts = w.options();
    opts.policy =
        "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"mta-sts\"\nhonor_tls_required_no = true\n"
            .into();
    let gw = Gateway::start(opts).unwrap();
    let msg = b"From: a@clinic.example.test\r\nTo: b@dane.example.test\r\nSubject: newsletter\r\nTLS-Required: No\r\nMessage-ID: <tlsno@clinic.example.test>\r\n\r\nx\r\n";
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.example.test"],
        msg,
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered", "{}", rows[0]);
    // The floor (mta-sts) is met by what the domain has: DANE.
    assert_eq!(rows[0]["tls_requirement"], "dane", "{}", rows[0]);
    let e = ev(&rows[0]);
    assert_eq!(e["decision"]["published_ignored"], true, "{e}");
    assert!(
        e["attempt"]["tls"]["dane_match"]
            .as_str()
            .unwrap()
            .starts_with("3 1 1 "),
        "{e}"
    );
}
