//! What the TLS floor means on a smarthost route (`probe::smarthost`):
//! the shipped default policy delivers through a smarthost whose
//! certificate verifies for its configured name, not through one whose
//! certificate does not; a smarthost that publishes TLSA records is held to
//! them. The verified smarthost is aiosmtpd with STARTTLS required, a
//! server we did not write.

use std::net::SocketAddr;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{Gateway, OPPORTUNISTIC_POLICY};
use crate::world::{Aiosmtpd, MxOptions, TestCert};

/// The policy a new user starts with.
const SHIPPED_POLICY: &str = include_str!("../../config/policy.d/00-default.toml");

fn ev(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap_or("{}")).unwrap_or_default()
}

/// The smarthost probe's report in a `probe --json` answer or an audit
/// row's decision.
fn smarthost_probe(decision: &serde_json::Value) -> serde_json::Value {
    decision["explanation"]["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["probe"] == "smarthost"))
        .cloned()
        .unwrap_or_else(|| panic!("no smarthost probe in {decision:#}"))
}

/// aiosmtpd with `cert` as `relay.example.test` on the world's address,
/// STARTTLS required before MAIL.
async fn relay(w: &World, cert: &TestCert) -> Aiosmtpd {
    w.zone.add_a("relay.example.test", w.ip);
    let (crt, key) = cert.write_chain(w.dir.path(), "relay").unwrap();
    Aiosmtpd::start_tls(
        SocketAddr::from((w.ip, w.port)),
        &w.dir.path().join("relay-maildir"),
        &crt,
        &key,
    )
    .await
    .unwrap()
}

fn through_relay(w: &World, policy: &str) -> Gateway {
    through_relay_with(w, policy, "")
}

/// As [`through_relay`] with more `[delivery]` lines.
fn through_relay_with(w: &World, policy: &str, delivery: &str) -> Gateway {
    let mut opts = w.options();
    opts.smarthost = Some(format!("relay.example.test:{}", w.port));
    opts.policy = policy.into();
    opts.delivery_extra = delivery.into();
    Gateway::start(opts).unwrap()
}

/// The `probe --json` answer for one recipient.
fn probe_json(gw: &Gateway, rcpt: &str) -> serde_json::Value {
    let out = gw.cli(&["probe", "--json", rcpt]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_policy_delivers_through_a_verified_smarthost() {
    let w = World::new().await;
    let relay = relay(&w, &w.ca.issue(&["relay.example.test"])).await;
    let gw = through_relay(&w, SHIPPED_POLICY);
    // Recipient domains that exist nowhere: the smarthost is our hop.
    let from = "a@clinic.example.test";
    python_send(
        gw.addr,
        from,
        &["b@one.example.test"],
        &message("plain", "hello"),
    )
    .unwrap();
    let phi = message("lab result", "Patient SSN 401-62-3187, DOB 04/12/1961");
    python_send(gw.addr, from, &["c@two.example.test"], &phi).unwrap();
    let got = match relay.wait_for(2, WAIT).await {
        Ok(g) => g,
        Err(e) => panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log()),
    };
    assert!(got.iter().any(|m| m.contains("401-62-3187")));
    let rows = gw.wait_audit(WAIT, |r| r.len() >= 2).await.unwrap();
    for r in &rows {
        assert_eq!(r["outcome"], "delivered", "{r:#}");
        assert_eq!(r["tls_requirement"], "mta-sts", "{r:#}");
        let e = ev(r);
        let p = smarthost_probe(&e["decision"]);
        assert_eq!(p["evidence"]["meets"], "mta-sts", "{p:#}");
        assert_eq!(p["evidence"]["tls"]["cert_verified"], true, "{p:#}");
        assert_eq!(e["attempt"]["tls"]["cert_verified"], true, "{e:#}");
    }
    // The recipient's own DANE and MTA-STS are not probed through a
    // smarthost.
    let out = gw.cli(&["probe", "--json", "b@one.example.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = v[0]["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap();
    assert!(
        !probes
            .iter()
            .any(|p| p["probe"] == "dane" || p["probe"] == "mta-sts"),
        "{probes:#?}"
    );
    assert_eq!(
        smarthost_probe(&v[0]["decision"])["evidence"]["meets"],
        "mta-sts"
    );
    assert_eq!(v[0]["decision"]["action"], "deliver", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smarthost_whose_certificate_does_not_verify_meets_only_encrypted() {
    let w = World::new().await;
    let relay = relay(&w, &crate::world::pki::self_signed(&["relay.example.test"])).await;
    let gw = through_relay(&w, SHIPPED_POLICY);
    let v = probe_json(&gw, "b@one.example.test");
    let p = smarthost_probe(&v["decision"]);
    assert_eq!(p["evidence"]["meets"], "encrypted", "{p:#}");
    // Below the default `smarthost_min_tls = "verified"`: not used at all.
    assert_probe_error(&p, "smarthost_min_tls");
    assert_ne!(v["decision"]["action"], "deliver", "{v:#}");
    let rows = send_one(&gw, "s").await;
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    assert!(relay.messages().is_empty());
    drop(gw);
    // With the floor lowered, an opportunistic rule sends, but the
    // smarthost's TLS binds it: the message goes encrypted (aiosmtpd
    // refuses MAIL before STARTTLS).
    let gw = through_relay_with(
        &w,
        OPPORTUNISTIC_POLICY,
        "smarthost_min_tls = \"encrypted\"\n",
    );
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message("opportunistic", "x"),
    )
    .unwrap();
    relay.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    assert_eq!(rows[0]["tls_requirement"], "encrypted", "{:#}", rows[0]);
}

/// Sends one message to b@one.example.test; the audit rows once there is one.
async fn send_one(gw: &Gateway, subject: &str) -> Vec<serde_json::Value> {
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message(subject, "x"),
    )
    .unwrap();
    gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap()
}

/// The smarthost probe failed, saying `why`.
fn assert_probe_error(p: &serde_json::Value, why: &str) {
    assert!(
        p["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(why)),
        "{p:#}"
    );
}

fn sha256(d: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, d)
        .as_ref()
        .to_vec()
}

/// A smarthost `relay.example.test` with a certificate from the world's
/// CA, whose own name publishes `3 1 1 <hash>` under DNSSEC.
async fn dane_relay(hash: Option<Vec<u8>>) -> (World, crate::world::TestMx, TestCert) {
    let w = World::new().await;
    w.zone.add_a("relay.example.test", w.ip);
    let cert = w.ca.issue(&["relay.example.test"]);
    let mx = w.mx(MxOptions::new("relay.example.test").tls(&cert)).await;
    let spki = sealgate::net::dane::spki(cert.cert_der.as_ref()).unwrap();
    let hash = hash.unwrap_or_else(|| sha256(spki.as_ref()));
    w.zone.add_tlsa(
        &format!("_{}._tcp.relay.example.test", w.port),
        3,
        1,
        1,
        hash,
    );
    (w, mx, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smarthost_with_tlsa_records_is_authenticated_by_them() {
    let (w, mx, _) = dane_relay(None).await;
    let gw = through_relay(&w, SHIPPED_POLICY);
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message("dane hop", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    assert_eq!(rows[0]["tls_requirement"], "dane", "{:#}", rows[0]);
    let e = ev(&rows[0]);
    assert!(
        e["attempt"]["tls"]["dane_match"]
            .as_str()
            .is_some_and(|m| m.starts_with("3 1 1 ")),
        "{e:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smarthost_whose_tlsa_records_do_not_match_gets_nothing_though_its_certificate_verifies()
{
    let (w, mx, _) = dane_relay(Some(sha256(b"another key"))).await;
    let gw = through_relay(&w, OPPORTUNISTIC_POLICY);
    let rows = send_one(&gw, "dane hop").await;
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    let out = gw.cli(&["probe", "--json", "b@one.example.test"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = smarthost_probe(&v[0]["decision"]);
    assert_probe_error(&p, "TLSA");
    assert_eq!(mx.transactions(), 0);
}

/// Credentials go only to a smarthost that proved its name: one whose
/// certificate does not verify gets no AUTH, from the probe or from
/// delivery, even where the operator accepts unauthenticated TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_a_smarthost_that_did_not_prove_its_name() {
    let w = World::new().await;
    w.zone.add_a("relay.example.test", w.ip);
    let cert = crate::world::pki::self_signed(&["relay.example.test"]);
    let mx = w
        .mx(MxOptions::new("relay.example.test")
            .tls(&cert)
            .ehlo_keyword("AUTH PLAIN LOGIN"))
        .await;
    let pw = w.dir.path().join("relay.pw");
    std::fs::write(&pw, "s3cret-relay\n").unwrap();
    let delivery = format!(
        "smarthost_min_tls = \"encrypted\"\n[delivery.smarthost_auth]\nusername = \"gw\"\npassword_file = {:?}\n",
        pw.display().to_string()
    );
    let gw = through_relay_with(&w, OPPORTUNISTIC_POLICY, &delivery);
    let v = probe_json(&gw, "b@one.example.test");
    let p = smarthost_probe(&v["decision"]);
    assert_probe_error(&p, "credentials were not sent");
    let rows = send_one(&gw, "s").await;
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    let lines: Vec<String> = mx.transcript().into_iter().map(|(_, l)| l).collect();
    assert!(lines.iter().any(|l| l.contains("STARTTLS")), "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("AUTH")),
        "{lines:?}"
    );
    assert_eq!(mx.transactions(), 0);
}

/// A smarthost without STARTTLS (or with it stripped while the probe
/// looks) is not used under the default floor, not even by an
/// opportunistic rule; with secure but unusable TLSA records it is not
/// used in plaintext whatever the floor (RFC 7672 section 2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smarthost_without_starttls_gets_nothing_unless_the_operator_allows_plaintext() {
    let w = World::new().await;
    w.zone.add_a("relay.example.test", w.ip);
    let mx = w.mx(MxOptions::new("relay.example.test")).await;
    let gw = through_relay(&w, OPPORTUNISTIC_POLICY);
    let v = probe_json(&gw, "b@one.example.test");
    assert_ne!(v["decision"]["action"], "deliver", "{v:#}");
    assert_eq!(
        smarthost_probe(&v["decision"])["evidence"]["meets"],
        "opportunistic"
    );
    let rows = send_one(&gw, "s").await;
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    assert_eq!(mx.transactions(), 0);
    drop(gw);
    // Unusable TLSA (PKIX-EE only) for the smarthost: TLS is mandatory
    // even with the floor at opportunistic.
    w.zone.add_tlsa(
        &format!("_{}._tcp.relay.example.test", w.port),
        1,
        1,
        1,
        sha256(b"k"),
    );
    let gw = through_relay_with(
        &w,
        OPPORTUNISTIC_POLICY,
        "smarthost_min_tls = \"opportunistic\"\n",
    );
    let v = probe_json(&gw, "b@one.example.test");
    let p = smarthost_probe(&v["decision"]);
    assert_probe_error(&p, "TLSA records make TLS mandatory");
    assert_ne!(v["decision"]["action"], "deliver", "{v:#}");
    assert_eq!(mx.transactions(), 0);
}
