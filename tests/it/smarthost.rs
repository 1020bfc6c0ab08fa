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
    let mut opts = w.options();
    opts.smarthost = Some(format!("relay.example.test:{}", w.port));
    opts.policy = policy.into();
    Gateway::start(opts).unwrap()
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
    let out = gw.cli(&["probe", "--json", "b@one.example.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = smarthost_probe(&v[0]["decision"]);
    assert_eq!(p["evidence"]["meets"], "encrypted", "{p:#}");
    assert_ne!(v[0]["decision"]["action"], "deliver", "{v:#}");
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message("s", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    assert!(relay.messages().is_empty());
    drop(gw);
    // An opportunistic rule sends, but the smarthost's TLS binds it: the
    // message goes encrypted (aiosmtpd refuses MAIL before STARTTLS).
    let gw = through_relay(&w, OPPORTUNISTIC_POLICY);
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
    let spki = sealgate::probe::dane::spki(cert.cert_der.as_ref()).unwrap();
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
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@one.example.test"],
        &message("dane hop", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_ne!(rows[0]["outcome"], "delivered", "{:#}", rows[0]);
    let out = gw.cli(&["probe", "--json", "b@one.example.test"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = smarthost_probe(&v[0]["decision"]);
    assert!(
        p["result"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("TLSA")),
        "{p:#}"
    );
    assert_eq!(mx.transactions(), 0);
}
