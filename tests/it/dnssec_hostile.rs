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
    assert_dane_delivered(
        &rows["b@rsasha1.test"],
        &rsasha1.host,
        &rsasha1.spki_sha256(),
    );
    assert_insecure_delivered(&rows["b@alg7.test"]);
    for mx in &mxs {
        assert_eq!(mx.transactions(), 1);
    }
}

/// RFC 4035 section 5.3.1: a signature whose validity ended is bogus,
/// here on one RRset of an otherwise secure zone. An expired MX RRset
/// makes the domain wait, never contacted, even under an opportunistic
/// policy (no downgrade to an unvalidated MX lookup); an expired TLSA
/// RRset of the only host makes it wait; in a secure MX set whose most
/// preferred host's TLSA RRset is expired, the mail goes over DANE to the
/// other host (RFC 7672 section 2.2.2) and the broken one is never
/// contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_expired_signatures_on_mx_or_tlsa_wait_or_skip_the_host() {
    let exp_mx = Dest::new("exp-mx.test", true);
    let exp_tlsa = Dest::new("exp-tlsa.test", true);
    let bad = Dest::with_host("exp-one.test", "mx1.exp-one.test", true);
    let good = Dest::with_host("exp-one.test", "mx2.exp-one.test", true);
    let port = gateway::free_port(exp_mx.ip);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec3)
        .zone(
            exp_mx
                .zone(port, None)
                .alg(Alg::RsaSha256)
                .expire_rrsig(&exp_mx.domain, "MX"),
        )
        .zone(
            exp_tlsa
                .zone(port, None)
                .expire_rrsig(&exp_tlsa.tlsa_owner(port), "TLSA"),
        )
        .zone({
            let z = ZoneSpec::new("exp-one.test")
                .mx(10, &bad.host)
                .mx(20, &good.host)
                .expire_rrsig(&bad.tlsa_owner(port), "TLSA");
            good.host_records(bad.host_records(z, port, None), port, None)
        })
        .start()
        .unwrap();
    let failed = DelvStatus::Failed(String::new());
    world.expect_delv("exp-mx.test", "MX", &failed).unwrap();
    world
        .expect_delv(&exp_mx.host, "A", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&exp_mx.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv("exp-tlsa.test", "MX", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&exp_tlsa.host, "A", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&exp_tlsa.tlsa_owner(port), "TLSA", &failed)
        .unwrap();
    world
        .expect_delv("exp-one.test", "MX", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&bad.tlsa_owner(port), "TLSA", &failed)
        .unwrap();
    world
        .expect_delv(&good.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    let mx_exp_mx = exp_mx.mx(port).await;
    let mx_exp_tlsa = exp_tlsa.mx(port).await;
    let mx_bad = bad.mx(port).await;
    let mx_good = good.mx(port).await;
    let gw = gateway_for(&world, port);
    let rcpts = [
        "b@exp-mx.test".to_string(),
        "b@exp-tlsa.test".to_string(),
        "b@exp-one.test".to_string(),
    ];
    // Two attempts of the waiting ones: the first deferral was not the
    // last word, and the retry did not fall back either.
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &refs,
        &message("expired", "x"),
    )
    .unwrap();
    let rows = gw
        .wait_audit(WAIT, |rows| {
            let n = |r: &str| rows.iter().filter(|row| row["recipient"] == r).count();
            n("b@exp-mx.test") >= 2 && n("b@exp-tlsa.test") >= 2 && n("b@exp-one.test") >= 1
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.log()));
    for row in &rows {
        match row["recipient"].as_str() {
            Some("b@exp-one.test") => assert_dane_delivered(row, &good.host, &good.spki_sha256()),
            _ => assert_bogus_waits(row),
        }
    }
    assert_eq!(mx_exp_mx.connections(), 0, "exp-mx.test was contacted");
    assert_eq!(mx_exp_tlsa.connections(), 0, "exp-tlsa.test was contacted");
    assert_eq!(
        mx_bad.connections(),
        0,
        "the host with expired TLSA was contacted"
    );
    assert_eq!(mx_good.transactions(), 1);
}

/// CNAMEs and names that do not exist where MX hosts should be:
/// - `cname-mx.test`: the MX host is a secure CNAME to a host in another
///   signed zone whose TLSA records are at the expanded name (RFC 7672
///   section 2.2.2): DANE, authenticated by them;
/// - `cname-insecure.test`: the MX host is a CNAME into an unsigned zone
///   (an insecure delegation under a signed parent): the address is not
///   secure, so no DANE, and the TLSA record there (matching nothing) is
///   not used;
/// - `tlsa-cname.test`: the TLSA name is a CNAME to records elsewhere,
///   signed: followed, DANE;
/// - `nx-mx.test`: the preferred MX host does not exist (securely denied):
///   skipped, DANE to the next;
/// - `only-nx.test`: no MX host exists: the mail waits (no connection) and
///   the reply says the hosts do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_cname_and_missing_mx_hosts() {
    let cname = Dest::with_host("cname-mx.test", "mx.hosting.test", true);
    let insecure = Dest::with_host("cname-insecure.test", "mx.plainhost.test", true);
    let tlsa_cname = Dest::new("tlsa-cname.test", true);
    let nx = Dest::with_host("nx-mx.test", "mx2.nx-mx.test", true);
    let port = gateway::free_port(cname.ip);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec)
        .zone(
            ZoneSpec::new("cname-mx.test")
                .mx(10, "alias.cname-mx.test")
                .record(format!("alias CNAME {}.", cname.host)),
        )
        .zone(cname.host_records(ZoneSpec::new("hosting.test"), port, None))
        .zone(
            ZoneSpec::new("cname-insecure.test")
                .mx(10, "alias.cname-insecure.test")
                .record(format!("alias CNAME {}.", insecure.host)),
        )
        .zone(
            insecure
                .host_records(ZoneSpec::new("plainhost.test"), port, Some(vec![0xab; 32]))
                .signing(crate::world::knot::Signing::Unsigned),
        )
        .zone(
            ZoneSpec::new("tlsa-cname.test")
                .mx(10, &tlsa_cname.host)
                .a(&tlsa_cname.host, tlsa_cname.ip)
                .record(format!(
                    "{}. CNAME tlsa.shared.test.",
                    tlsa_cname.tlsa_owner(port)
                )),
        )
        .zone(ZoneSpec::new("shared.test").tlsa(
            "tlsa.shared.test",
            3,
            1,
            1,
            &tlsa_cname.spki_sha256(),
        ))
        .zone(
            nx.host_records(
                ZoneSpec::new("nx-mx.test")
                    .mx(10, "gone.nx-mx.test")
                    .mx(20, &nx.host),
                port,
                None,
            ),
        )
        .zone(
            ZoneSpec::new("only-nx.test")
                .mx(10, "gone.only-nx.test")
                .mx(20, "gone.elsewhere.test"),
        )
        .start()
        .unwrap();
    world
        .expect_delv("alias.cname-mx.test", "A", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&cname.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv("alias.cname-insecure.test", "A", &DelvStatus::Insecure)
        .unwrap();
    world
        .expect_delv(&tlsa_cname.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    // A securely denied name: delv's validated NXDOMAIN.
    let (_, text) = world.delv("gone.only-nx.test", "A").unwrap();
    assert!(
        text.contains("NXDOMAIN") || text.contains("nxdomain"),
        "{text}"
    );
    let m_cname = cname.mx(port).await;
    let m_insecure = insecure.mx(port).await;
    let m_tlsa_cname = tlsa_cname.mx(port).await;
    let m_nx = nx.mx(port).await;
    let gw = gateway_for(&world, port);
    let rcpts: Vec<String> = [
        "cname-mx.test",
        "cname-insecure.test",
        "tlsa-cname.test",
        "nx-mx.test",
        "only-nx.test",
    ]
    .iter()
    .map(|d| format!("b@{d}"))
    .collect();
    let rows = send_and_wait(&gw, &rcpts, 1).await;
    assert_dane_delivered(
        &rows["b@cname-mx.test"],
        "alias.cname-mx.test",
        &cname.spki_sha256(),
    );
    let row = &rows["b@cname-insecure.test"];
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "opportunistic", "{row}");
    assert_eq!(dane_probe(row)["evidence"]["dane"], false, "{row}");
    assert!(ev(row)["attempt"]["tls"]["dane_match"].is_null(), "{row}");
    assert_dane_delivered(
        &rows["b@tlsa-cname.test"],
        &tlsa_cname.host,
        &tlsa_cname.spki_sha256(),
    );
    assert_dane_delivered(&rows["b@nx-mx.test"], &nx.host, &nx.spki_sha256());
    let row = &rows["b@only-nx.test"];
    assert_eq!(row["outcome"], "deferred", "{row}");
    assert!(row["remote_host"].is_null(), "{row}");
    let reply = row["smtp_reply"].as_str().unwrap_or_default();
    assert!(
        reply.contains("gone.only-nx.test") && reply.contains("does not exist"),
        "the reply says the MX hosts do not exist: {row}"
    );
    for m in [&m_cname, &m_insecure, &m_tlsa_cname, &m_nx] {
        assert_eq!(m.transactions(), 1);
    }
}

/// Hostile sizes: 40 MX records and a TLSA RRset of 150 records (an
/// answer far over UDP size, so over TCP). The probe looks at no more
/// than `MAX_MX_HOSTS` (10) hosts, the most preferred first; `many.test`
/// has nine hosts that do not exist before a DANE host whose matching
/// record is the last of 150: delivered over DANE; `too-many.test` has
/// its only working host at the 11th place: it is never tried, and the
/// mail waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_many_mx_and_large_tlsa_rrsets_are_bounded() {
    let many = Dest::with_host("many.test", "mx10.many.test", true);
    let far = Dest::with_host("too-many.test", "mx11.too-many.test", true);
    let port = gateway::free_port(many.ip);
    let mut z = ZoneSpec::new("many.test");
    for i in 1..=40u16 {
        z = z.mx(i, &format!("mx{i}.many.test"));
    }
    for i in 11..=40u16 {
        z = z.a(&format!("mx{i}.many.test"), far.ip);
    }
    for i in 0..149u8 {
        z = z.tlsa(&many.tlsa_owner(port), 3, 1, 1, &[i; 32]);
    }
    let z = many.host_records(z, port, None);
    let mut t = ZoneSpec::new("too-many.test");
    for i in 1..=40u16 {
        t = t.mx(i, &format!("mx{i}.too-many.test"));
    }
    let t = far.host_records(t, port, None);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec)
        .zone(z)
        .zone(t)
        .start()
        .unwrap();
    world
        .expect_delv(&many.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    let tlsa = world.kdig(&many.tlsa_owner(port), "TLSA", &["+tcp"]);
    assert_eq!(tlsa.matches("\tTLSA\t").count(), 150, "{tlsa}");
    let m_many = many.mx(port).await;
    let m_far = far.mx(port).await;
    let gw = gateway_for(&world, port);
    let rcpts = vec!["b@many.test".to_string(), "b@too-many.test".to_string()];
    let rows = send_and_wait(&gw, &rcpts, 1).await;
    let row = &rows["b@many.test"];
    assert_dane_delivered(row, &many.host, &many.spki_sha256());
    let probe = dane_probe(row);
    let hosts = probe["evidence"]["mx"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hosts.len(), 10, "{probe}");
    let row = &rows["b@too-many.test"];
    assert_eq!(row["outcome"], "deferred", "{row}");
    assert_eq!(m_far.connections(), 0, "the 11th MX host was tried");
    assert_eq!(m_many.transactions(), 1);
}

/// The same cases behind a validating recursive resolver (unbound), as a
/// deployment would configure `[dns] nameservers`: unbound implements
/// every algorithm here, so the algorithm 7 and Ed448 zones reach
/// sealgate with their signatures and are insecure to it (delivered
/// without DANE, their non-matching TLSA records unused); a TLSA RRset
/// with an expired signature is a SERVFAIL from unbound, so that host is
/// skipped and the mail goes over DANE to the other host; a domain whose
/// only host's TLSA lookup SERVFAILs waits, never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_hostile_cases_through_unbound() {
    let ed448 = Dest::new("ed448.test", true);
    let alg7 = Dest::new("alg7.test", true);
    let bad = Dest::with_host("servfail-one.test", "mx1.servfail-one.test", true);
    let good = Dest::with_host("servfail-one.test", "mx2.servfail-one.test", true);
    let only = Dest::new("servfail-only.test", true);
    let port = gateway::free_port(ed448.ip);
    let nothing = Some(vec![0xab; 32]);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec)
        .zone(ed448.zone(port, nothing.clone()).alg(Alg::Ed448))
        .zone(
            alg7.zone(port, nothing)
                .alg(Alg::RsaSha1Nsec3)
                .denial(Denial::Nsec3),
        )
        .zone({
            let z = ZoneSpec::new("servfail-one.test")
                .mx(10, &bad.host)
                .mx(20, &good.host)
                .expire_rrsig(&bad.tlsa_owner(port), "TLSA");
            good.host_records(bad.host_records(z, port, None), port, None)
        })
        .zone(
            only.zone(port, None)
                .expire_rrsig(&only.tlsa_owner(port), "TLSA"),
        )
        .start()
        .unwrap();
    let unbound = crate::world::unbound::Unbound::start(
        gateway::fresh_ip(),
        world.addr,
        world.origins(),
        &world.trust_anchor,
    )
    .unwrap();
    for name in ["ed448.test", "alg7.test", "servfail-one.test"] {
        let answer = unbound.kdig(name, "MX");
        assert!(answer.contains(" ad"), "unbound validates {name}: {answer}");
    }
    for name in [bad.tlsa_owner(port), only.tlsa_owner(port)] {
        let answer = unbound.kdig(&name, "TLSA");
        assert!(answer.contains("SERVFAIL"), "unbound: {answer}");
    }
    let m_ed448 = ed448.mx(port).await;
    let m_alg7 = alg7.mx(port).await;
    let m_bad = bad.mx(port).await;
    let m_good = good.mx(port).await;
    let m_only = only.mx(port).await;
    let gw = crate::gateway::Gateway::start(crate::gateway::GatewayOptions {
        dns: Some(unbound.addr),
        trust_anchor: Some(world.trust_anchor.clone()),
        delivery_port: port,
        ..Default::default()
    })
    .unwrap();
    let rcpts: Vec<String> = [
        "ed448.test",
        "alg7.test",
        "servfail-one.test",
        "servfail-only.test",
    ]
    .iter()
    .map(|d| format!("b@{d}"))
    .collect();
    let rows = send_and_wait(&gw, &rcpts, 1).await;
    assert_insecure_delivered(&rows["b@ed448.test"]);
    assert_insecure_delivered(&rows["b@alg7.test"]);
    assert_dane_delivered(
        &rows["b@servfail-one.test"],
        &good.host,
        &good.spki_sha256(),
    );
    let row = &rows["b@servfail-only.test"];
    assert_eq!(row["outcome"], "deferred", "{row}");
    assert!(row["remote_host"].is_null(), "{row}");
    assert_eq!(m_bad.connections(), 0, "the SERVFAIL host was contacted");
    assert_eq!(m_only.connections(), 0, "servfail-only.test was contacted");
    for m in [&m_ed448, &m_alg7, &m_good] {
        assert_eq!(m.transactions(), 1);
    }
}
