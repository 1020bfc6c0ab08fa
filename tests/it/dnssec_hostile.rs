//! A DNSSEC-signed world with broken and hostile domains, signed by BIND
//! and served by Knot DNS (see `world/knot.rs`), each case first checked
//! with BIND's `delv` so the world is what the test says it is: algorithms
//! the validator does not implement (RFC 6840 section 5.2), signatures
//! expired on one RRset only, CNAMEs where RFC 5321 forbids them but RFC
//! 7672 section 2.2.2 says what to do, MX hosts that do not exist, and
//! oversized MX and TLSA RRsets. The gateway runs under an opportunistic
//! policy (the test default), so any DANE requirement it applies comes
//! from the DNS alone.

use std::collections::HashMap;

use crate::common::{WAIT, message, python_send};
use crate::dnssec_world::{Dest, dane_probe, ev, gateway_for};
use crate::gateway;
use crate::world::knot::{Alg, DelvStatus, Denial, KnotWorld, ZoneSpec};

/// Sends one message to `rcpts` and waits until each has `n` audit rows;
/// returns the latest row of each recipient.
async fn send_and_wait(
    gw: &crate::gateway::Gateway,
    rcpts: &[String],
    n: usize,
) -> HashMap<String, serde_json::Value> {
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &refs,
        &message("hostile", "x"),
    )
    .unwrap();
    let rows = gw
        .wait_audit(WAIT, |rows| {
            rcpts.iter().all(|r| {
                rows.iter()
                    .filter(|row| row["recipient"] == r.as_str())
                    .count()
                    >= n
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.log()));
    let mut out = HashMap::new();
    for row in rows {
        if let Some(r) = row["recipient"].as_str() {
            out.insert(r.to_string(), row.clone());
        }
    }
    out
}

/// The row was delivered over DANE to `host`, authenticated by the TLSA
/// record `3 1 1 digest`.
fn assert_dane_delivered(row: &serde_json::Value, host: &str, digest: &[u8]) {
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "dane", "{row}");
    assert_eq!(row["remote_host"], host, "{row}");
    assert_eq!(
        ev(row)["attempt"]["tls"]["dane_match"].as_str(),
        Some(format!("3 1 1 {}", hex::encode(digest)).as_str()),
        "{row}"
    );
}

/// Delivered without DANE: the MX set is insecure to sealgate.
fn assert_insecure_delivered(row: &serde_json::Value) {
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "opportunistic", "{row}");
    let probe = dane_probe(row);
    assert_eq!(probe["evidence"]["dnssec"], "insecure", "{row}");
    assert_eq!(probe["evidence"]["dane"], false, "{row}");
}

/// Deferred without any connection, and the reply says DNSSEC failed.
fn assert_bogus_waits(row: &serde_json::Value) {
    assert_eq!(row["outcome"], "deferred", "{row}");
    assert!(row["remote_host"].is_null(), "{row}");
    let reply = row["smtp_reply"].as_str().unwrap_or_default();
    assert!(
        reply.contains("DNSSEC") && reply.contains("bogus"),
        "a bogus answer's deferral says why: {row}"
    );
}

/// RFC 6840 section 5.2: a zone whose DS RRset names only algorithms the
/// validator does not implement is insecure, not bogus (Ed448, alg 16,
/// which hickory lacks; RSASHA1-NSEC3-SHA1, alg 7, which hickory's ring
/// backend cannot verify). A TLSA record that matches nothing shows the
/// zone is not taken as secure either. A zone signed with such an
/// algorithm and a supported one validates with the supported one
/// (RFC 6840 section 5.11), and RSASHA1 (alg 5), which ring verifies,
/// is secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_unsupported_algorithms_are_insecure_and_mixed_ones_validate() {
    let ed448 = Dest::new("ed448.test", true);
    let alg7 = Dest::new("alg7.test", true);
    let mixed = Dest::new("mixed-alg.test", true);
    let rsasha1 = Dest::new("rsasha1.test", true);
    let port = gateway::free_port(ed448.ip);
    let nothing = Some(vec![0xab; 32]);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec)
        .zone(ed448.zone(port, nothing.clone()).alg(Alg::Ed448))
        .zone(
            alg7.zone(port, nothing.clone())
                .alg(Alg::RsaSha1Nsec3)
                .denial(Denial::Nsec3),
        )
        .zone(
            mixed
                .zone(port, None)
                .alg(Alg::Ed448)
                .also_alg(Alg::EcdsaP256Sha256),
        )
        .zone(rsasha1.zone(port, None).alg(Alg::RsaSha1))
        .start()
        .unwrap();
    // BIND implements all of them: to an independent validator every one
    // of these zones is secure.
    for d in [&ed448, &alg7, &mixed, &rsasha1] {
        world
            .expect_delv(&d.domain, "MX", &DelvStatus::Secure)
            .unwrap();
        world
            .expect_delv(&d.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
            .unwrap();
    }
    let mut mxs = Vec::new();
    for d in [&ed448, &alg7, &mixed, &rsasha1] {
        mxs.push(d.mx(port).await);
    }
    let gw = gateway_for(&world, port);
    let rcpts: Vec<String> = [&ed448, &alg7, &mixed, &rsasha1]
        .iter()
        .map(|d| format!("b@{}", d.domain))
        .collect();
    let rows = send_and_wait(&gw, &rcpts, 1).await;
    assert_insecure_delivered(&rows["b@ed448.test"]);
    assert_dane_delivered(&rows["b@mixed-alg.test"], &mixed.host, &mixed.spki_sha256());
    assert_dane_delivered(&rows["b@rsasha1.test"], &rsasha1.host, &rsasha1.spki_sha256());
    assert_insecure_delivered(&rows["b@alg7.test"]);
    for mx in &mxs {
        assert_eq!(mx.transactions(), 1);
    }
}
