//! DANE and DNSSEC end to end against a world sealgate did not write:
//! zones signed by BIND's `dnssec-signzone` under a real delegation chain
//! (`.` → `test.` → domain, DS in each parent), served by Knot DNS, checked
//! by BIND's `delv` before sealgate sees them (see `world/knot.rs`). The
//! gateway is the real binary with `[dns] nameservers` pointing at knotd
//! and `[dns] trust_anchor` at the root KSK.

use std::net::Ipv4Addr;

use crate::common::{WAIT, message, python_send};
use crate::gateway::{self, Gateway, GatewayOptions};
use crate::world::knot::{
    Alg, DelvStatus, Denial, KnotWorld, Signing, ZoneSpec, spki_sha256_openssl,
};
use crate::world::{MxOptions, TestCert, TestMx, pki};

pub(crate) fn ev(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap_or("{}")).unwrap_or_default()
}

/// The dane probe's evidence in an audit row.
pub(crate) fn dane_probe(row: &serde_json::Value) -> serde_json::Value {
    ev(row)["decision"]["explanation"]["probes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["probe"] == "dane").cloned())
        .unwrap_or_default()
}

/// One destination domain: its MX host on a loopback address of its own,
/// with a self-signed certificate (for TLSA 3 1 1) when `tls`.
pub(crate) struct Dest {
    pub(crate) domain: String,
    pub(crate) host: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) cert: Option<TestCert>,
}

impl Dest {
    pub(crate) fn new(domain: &str, tls: bool) -> Dest {
        Self::with_host(domain, &format!("mx.{domain}"), tls)
    }

    /// A destination whose MX host lives in another zone (its address and
    /// TLSA records go there: [`Dest::host_records`]).
    pub(crate) fn with_host(domain: &str, host: &str, tls: bool) -> Dest {
        let host = host.to_string();
        Dest {
            domain: domain.to_string(),
            cert: tls.then(|| pki::self_signed(&[&host])),
            host,
            ip: gateway::fresh_ip(),
        }
    }

    pub(crate) fn tlsa_owner(&self, port: u16) -> String {
        format!("_{port}._tcp.{}", self.host)
    }

    /// SHA-256 of the certificate's SPKI, by the openssl command line.
    pub(crate) fn spki_sha256(&self) -> Vec<u8> {
        let cert = self.cert.as_ref().expect("a TLS destination");
        spki_sha256_openssl(&cert.cert_pem).expect("openssl SPKI digest")
    }

    /// The zone: MX and address of the host, and TLSA 3 1 1 for its
    /// certificate (or `tlsa` instead, when given).
    pub(crate) fn zone(&self, port: u16, tlsa: Option<Vec<u8>>) -> ZoneSpec {
        let z = ZoneSpec::new(&self.domain).mx(10, &self.host);
        self.host_records(z, port, tlsa)
    }

    /// The host's address and TLSA records, added to `z`.
    pub(crate) fn host_records(&self, z: ZoneSpec, port: u16, tlsa: Option<Vec<u8>>) -> ZoneSpec {
        let z = z.a(&self.host, self.ip);
        match (tlsa, &self.cert) {
            (Some(data), _) => z.tlsa(&self.tlsa_owner(port), 3, 1, 1, &data),
            (None, Some(_)) => {
                let data = self.spki_sha256();
                z.tlsa(&self.tlsa_owner(port), 3, 1, 1, &data)
            }
            (None, None) => z,
        }
    }

    pub(crate) async fn mx(&self, port: u16) -> TestMx {
        let mut opts = MxOptions::new(&self.host).ip(self.ip).port(port);
        if let Some(cert) = &self.cert {
            opts = opts.tls(cert);
        }
        TestMx::start(opts).await
    }
}

pub(crate) fn gateway_for(world: &KnotWorld, port: u16) -> Gateway {
    Gateway::start(GatewayOptions {
        dns: Some(world.addr),
        trust_anchor: Some(world.trust_anchor.clone()),
        delivery_port: port,
        ..Default::default()
    })
    .expect("starting sealgate")
}

/// kdig's answer section lines of `name rtype` that are RRSIGs.
fn rrsig_algorithms(world: &KnotWorld, name: &str, rtype: &str) -> Vec<String> {
    let out = world.kdig(name, rtype, &[]);
    out.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let i = t.iter().position(|x| *x == "RRSIG")?;
            (t.get(i + 1) == Some(&rtype)).then(|| t.get(i + 2).map(|s| s.to_string()))?
        })
        .collect()
}

/// A DANE domain under a chain signed with one algorithm and denial:
/// delivered over DANE, the TLSA match in the audit row.
async fn dane_delivers(alg: Alg, denial: Denial, domain: &str) {
    let started = std::time::Instant::now();
    let dest = Dest::new(domain, true);
    let port = gateway::free_port(dest.ip);
    let digest = dest.spki_sha256();
    let world = KnotWorld::builder(gateway::fresh_ip(), alg, denial)
        .zone(dest.zone(port, None).alg(alg).denial(denial))
        .start()
        .unwrap();
    // What an independent validator says, first.
    for (name, rtype) in [
        (dest.domain.clone(), "MX"),
        (dest.host.clone(), "A"),
        (dest.tlsa_owner(port), "TLSA"),
        (format!("nothing-here.{domain}"), "A"),
    ] {
        world
            .expect_delv(&name, rtype, &DelvStatus::Secure)
            .unwrap();
    }
    let want = alg.number().to_string();
    for (name, rtype) in [(".", "DNSKEY"), ("test.", "DS"), (domain, "MX")] {
        let algs = rrsig_algorithms(&world, name, rtype);
        assert!(
            !algs.is_empty() && algs.iter().all(|a| *a == want),
            "{name} {rtype} RRSIG algorithms {algs:?}, wanted {want}"
        );
    }
    let nx = world.kdig(&format!("nothing-here.{domain}"), "A", &[]);
    let nsec3 = nx.contains("NSEC3");
    assert_eq!(nsec3, denial != Denial::Nsec, "{nx}");
    assert!(nx.contains("NSEC"), "{nx}");

    let mx = dest.mx(port).await;
    let gw = gateway_for(&world, port);
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &[&format!("b@{domain}")],
        &message("knot dane", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(
        got[0].tls.as_ref().and_then(|t| t.sni.as_deref()),
        Some(dest.host.as_str())
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let row = &rows[0];
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "dane", "{row}");
    assert_eq!(row["remote_host"], dest.host.as_str(), "{row}");
    let dane_match = ev(row)["attempt"]["tls"]["dane_match"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        dane_match,
        format!("3 1 1 {}", hex::encode(&digest)),
        "{row}"
    );
    let probe = dane_probe(row);
    assert_eq!(probe["evidence"]["dnssec"], "secure", "{probe}");
    assert_eq!(probe["evidence"]["mx"][0]["usable"], true, "{probe}");
    eprintln!(
        "dane over knot ({alg:?}, {denial:?}): {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_rsasha256_nsec_dane_delivers() {
    dane_delivers(Alg::RsaSha256, Denial::Nsec, "dane-rsa.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_ecdsa_nsec3_dane_delivers() {
    dane_delivers(Alg::EcdsaP256Sha256, Denial::Nsec3, "dane-ecdsa.test").await;
}

/// Broken signatures make a domain bogus: the mail waits, retried and
/// still waiting, and no MX of those domains is ever contacted (not in
/// the clear, not over unverified TLS), even under an opportunistic policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_bogus_domains_wait_and_are_never_contacted() {
    let started = std::time::Instant::now();
    // Mixed algorithms across the chain: root 13 with NSEC3, test. 8 with NSEC.
    let cases = [
        (
            "wrong-key.test",
            Signing::WrongKey,
            Alg::EcdsaP256Sha256,
            Denial::Nsec,
        ),
        (
            "expired.test",
            Signing::Expired,
            Alg::RsaSha256,
            Denial::Nsec3,
        ),
        (
            "stripped.test",
            Signing::Stripped,
            Alg::EcdsaP256Sha256,
            Denial::Nsec,
        ),
    ];
    let mut dests: Vec<Dest> = cases.iter().map(|c| Dest::new(c.0, true)).collect();
    let port = gateway::free_port(dests[0].ip);
    let mut zones: Vec<ZoneSpec> = dests
        .iter()
        .zip(&cases)
        .map(|(d, (_, signing, alg, denial))| {
            d.zone(port, None)
                .signing(*signing)
                .alg(*alg)
                .denial(*denial)
        })
        .collect();
    // A secure MX RRset whose only host's address and TLSA records are in
    // the expired zone.
    let split = Dest::with_host("secure-mx.test", "mx-elsewhere.expired.test", true);
    zones.push(ZoneSpec::new("secure-mx.test").mx(10, &split.host));
    zones[1] = split.host_records(zones[1].clone(), port, None);
    dests.push(split);
    let mut builder = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec3)
        .zone(
            ZoneSpec::new("test.")
                .alg(Alg::RsaSha256)
                .denial(Denial::Nsec),
        );
    for z in zones {
        builder = builder.zone(z);
    }
    let world = builder.start().unwrap();
    world
        .expect_delv("secure-mx.test", "MX", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv("test.", "SOA", &DelvStatus::Secure)
        .unwrap();
    for d in &dests {
        for (name, rtype) in [(d.host.clone(), "A"), (d.tlsa_owner(port), "TLSA")] {
            world
                .expect_delv(&name, rtype, &DelvStatus::Failed(String::new()))
                .unwrap();
        }
    }
    let mut mxs = Vec::new();
    for d in &dests {
        mxs.push(d.mx(port).await);
    }
    let gw = gateway_for(&world, port);
    let rcpts: Vec<String> = dests.iter().map(|d| format!("b@{}", d.domain)).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &rcpt_refs,
        &message("knot bogus", "x"),
    )
    .unwrap();
    // Two attempts each: the first deferral was not the last word.
    let rows = gw
        .wait_audit(WAIT, |rows| {
            rcpts.iter().all(|r| {
                rows.iter()
                    .filter(|row| row["recipient"] == r.as_str())
                    .count()
                    >= 2
            })
        })
        .await
        .unwrap();
    for row in &rows {
        assert_eq!(row["outcome"], "deferred", "{row}");
        assert!(row["remote_host"].is_null(), "{row}");
        assert!(row["tls_version"].is_null(), "{row}");
        let reply = row["smtp_reply"].as_str().unwrap_or_default();
        assert!(
            reply.contains("DNSSEC") && reply.contains("bogus"),
            "a bogus domain's deferral says why: {row}"
        );
    }
    for (mx, d) in mxs.iter().zip(&dests) {
        assert_eq!(mx.connections(), 0, "{} was contacted", d.host);
    }
    let queue = gw.queue().unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    let recipients = queue[0]["message"]["recipients"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(recipients.len(), dests.len(), "{queue:?}");
    for r in &recipients {
        assert_eq!(r["status"], "deferred", "{r}");
    }
    eprintln!("bogus over knot: {:?}", started.elapsed());
}

/// Unsigned domains without a DS, under NSEC, NSEC3 and NSEC3 opt-out
/// parents, are insecure: no DANE (an unsigned TLSA record that does not
/// match is ignored), delivered under the opportunistic policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_insecure_domains_are_no_dane() {
    let started = std::time::Instant::now();
    let parents = [
        ("nsec.test", Alg::RsaSha256, Denial::Nsec),
        ("nsec3.test", Alg::EcdsaP256Sha256, Denial::Nsec3),
        ("optout.test", Alg::RsaSha256, Denial::Nsec3OptOut),
    ];
    let dests: Vec<Dest> = parents
        .iter()
        .map(|p| Dest::new(&format!("plain.{}", p.0), true))
        .collect();
    let port = gateway::free_port(dests[0].ip);
    let mut builder = KnotWorld::builder(gateway::fresh_ip(), Alg::RsaSha256, Denial::Nsec);
    for (d, (parent, alg, denial)) in dests.iter().zip(&parents) {
        // A TLSA record that matches nothing: used, it would defer the mail.
        builder = builder
            .zone(ZoneSpec::new(parent).alg(*alg).denial(*denial))
            .zone(
                d.zone(port, Some(vec![0xab; 32]))
                    .signing(Signing::Unsigned),
            );
    }
    let world = builder.start().unwrap();
    for ((parent, _, _), d) in parents.iter().zip(&dests) {
        world
            .expect_delv(parent, "SOA", &DelvStatus::Secure)
            .unwrap();
        world
            .expect_delv(&d.domain, "DS", &DelvStatus::Secure)
            .unwrap();
        world
            .expect_delv(&d.domain, "MX", &DelvStatus::Insecure)
            .unwrap();
    }
    let mut mxs = Vec::new();
    for d in &dests {
        mxs.push(d.mx(port).await);
    }
    let gw = gateway_for(&world, port);
    let rcpts: Vec<String> = dests.iter().map(|d| format!("b@{}", d.domain)).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &rcpt_refs,
        &message("knot insecure", "x"),
    )
    .unwrap();
    for mx in &mxs {
        mx.wait_for(1, WAIT).await.unwrap();
    }
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    for row in &rows {
        assert_eq!(row["outcome"], "delivered", "{row}");
        assert_eq!(row["tls_requirement"], "opportunistic", "{row}");
        let probe = dane_probe(row);
        assert_eq!(probe["evidence"]["dnssec"], "insecure", "{row}");
        assert_eq!(probe["evidence"]["dane"], false, "{row}");
    }
    eprintln!("insecure over knot: {:?}", started.elapsed());
}

/// RFC 7672 section 2.2.2: in a secure MX RRset, a host whose address or
/// TLSA records are bogus is unusable and skipped; the mail goes over DANE
/// to the next host, and the bogus one is never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_bogus_mx_host_is_skipped_for_the_next_dane_host() {
    let good = Dest::with_host("two-mx.test", "mx2.two-mx.test", true);
    let bogus = Dest::with_host("two-mx.test", "mx1.broken.test", true);
    let port = gateway::free_port(good.ip);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec)
        .zone(
            good.host_records(
                ZoneSpec::new("two-mx.test")
                    .mx(10, &bogus.host)
                    .mx(20, &good.host),
                port,
                None,
            ),
        )
        .zone(bogus.host_records(
            ZoneSpec::new("broken.test").signing(Signing::WrongKey),
            port,
            None,
        ))
        .start()
        .unwrap();
    world
        .expect_delv("two-mx.test", "MX", &DelvStatus::Secure)
        .unwrap();
    world
        .expect_delv(&bogus.host, "A", &DelvStatus::Failed(String::new()))
        .unwrap();
    let bogus_mx = bogus.mx(port).await;
    let good_mx = good.mx(port).await;
    let gw = gateway_for(&world, port);
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@two-mx.test"],
        &message("knot two mx", "x"),
    )
    .unwrap();
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(bogus_mx.connections(), 0, "the bogus host was contacted");
    let row = &rows[0];
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "dane", "{row}");
    assert_eq!(row["remote_host"], good.host.as_str(), "{row}");
    assert_eq!(good_mx.transactions(), 1);
}

/// The same world behind a validating recursive resolver (unbound), as a
/// deployment would configure `[dns] nameservers`: DANE still delivers
/// over DANE, a bogus domain still waits without a connection, an
/// insecure domain is still no DANE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_world_through_unbound() {
    let started = std::time::Instant::now();
    let dane = Dest::new("dane.test", true);
    let bogus = Dest::new("bogus.test", true);
    let plain = Dest::new("plain.test", false);
    let port = gateway::free_port(dane.ip);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::RsaSha256, Denial::Nsec3)
        .zone(dane.zone(port, None))
        .zone(
            bogus
                .zone(port, None)
                .alg(Alg::RsaSha256)
                .signing(Signing::Expired),
        )
        .zone(plain.zone(port, None).signing(Signing::Unsigned))
        .start()
        .unwrap();
    let unbound = crate::world::unbound::Unbound::start(
        gateway::fresh_ip(),
        world.addr,
        world.origins(),
        &world.trust_anchor,
    )
    .unwrap();
    let answer = unbound.kdig("dane.test", "MX");
    assert!(answer.contains(" ad"), "unbound validates: {answer}");
    let answer = unbound.kdig("bogus.test", "MX");
    assert!(
        answer.contains("SERVFAIL"),
        "unbound finds it bogus: {answer}"
    );

    let dane_mx = dane.mx(port).await;
    let bogus_mx = bogus.mx(port).await;
    let plain_mx = plain.mx(port).await;
    let gw = Gateway::start(GatewayOptions {
        dns: Some(unbound.addr),
        trust_anchor: Some(world.trust_anchor.clone()),
        delivery_port: port,
        ..Default::default()
    })
    .unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane.test", "b@bogus.test", "b@plain.test"],
        &message("knot unbound", "x"),
    )
    .unwrap();
    dane_mx.wait_for(1, WAIT).await.unwrap();
    plain_mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() >= 3).await.unwrap();
    let row = |rcpt: &str| {
        rows.iter()
            .find(|r| r["recipient"] == rcpt)
            .cloned()
            .unwrap_or_default()
    };
    let d = row("b@dane.test");
    assert_eq!(d["outcome"], "delivered", "{d}");
    assert_eq!(d["tls_requirement"], "dane", "{d}");
    let b = row("b@bogus.test");
    assert_eq!(b["outcome"], "deferred", "{b}");
    let p = row("b@plain.test");
    assert_eq!(p["outcome"], "delivered", "{p}");
    assert_eq!(p["tls_requirement"], "opportunistic", "{p}");
    assert_eq!(dane_probe(&p)["evidence"]["dnssec"], "insecure", "{p}");
    assert_eq!(bogus_mx.connections(), 0);
    eprintln!("knot behind unbound: {:?}", started.elapsed());
}

/// `[dns] trust_anchor` in the DS form IANA publishes (`. IN DS tag alg 2
/// digest`), made from the root KSK by BIND's `dnssec-dsfromkey`: sealgate
/// fetches the root DNSKEY RRset, trusts the key the DS matches and
/// delivers over DANE (SHA-256; a SHA-384 DS is only shown to start). A DS
/// that matches no
/// root key stops the start: no fall back to the built-in IANA keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_ds_trust_anchor_delivers_and_a_wrong_ds_stops_the_start() {
    let dest = Dest::new("dane-ds.test", true);
    let port = gateway::free_port(dest.ip);
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::RsaSha256, Denial::Nsec)
        .zone(dest.zone(port, None))
        .start()
        .unwrap();
    // `-f` reads a zone file, which needs a TTL; the `.key` file has none.
    let key_zone = world.dir.path().join("root-ksk.zone");
    let key = std::fs::read_to_string(&world.trust_anchor).unwrap();
    std::fs::write(&key_zone, format!("$TTL 3600\n{key}")).unwrap();
    let dsfromkey = |digest: &str| {
        let out = std::process::Command::new("dnssec-dsfromkey")
            .args(["-a", digest, "-f"])
            .arg(&key_zone)
            .arg(".")
            .output()
            .expect("running dnssec-dsfromkey (Debian package bind9-utils)");
        assert!(out.status.success(), "{out:?}");
        let ds = String::from_utf8(out.stdout).unwrap();
        assert!(ds.starts_with(". IN DS "), "{ds}");
        ds
    };
    let ds256 = dsfromkey("SHA-256");
    let anchor = |name: &str, text: &str| {
        let path = world.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let start = |path: &std::path::Path| {
        Gateway::start(GatewayOptions {
            dns: Some(world.addr),
            trust_anchor: Some(path.to_path_buf()),
            delivery_port: port,
            ..Default::default()
        })
    };

    let mx = dest.mx(port).await;
    let gw = start(&anchor("root.ds", &format!("; from IANA\n{ds256}"))).unwrap();
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane-ds.test"],
        &message("knot ds anchor", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    assert_eq!(rows[0]["outcome"], "delivered", "{}", rows[0]);
    assert_eq!(rows[0]["tls_requirement"], "dane", "{}", rows[0]);
    assert!(
        gw.log()
            .contains("the root DNSKEY matching this DS is trusted"),
        "{}",
        gw.log()
    );
    drop(gw);

    let ds384 = dsfromkey("SHA-384");
    start(&anchor("root384.ds", &ds384)).expect("a SHA-384 DS anchor starts");

    // The same DS with one digest digit changed.
    let tokens: Vec<&str> = ds256.split_whitespace().collect();
    let mut digest = tokens[6].to_string();
    let first = if digest.starts_with('0') { "1" } else { "0" };
    digest.replace_range(0..1, first);
    let wrong = format!(
        ". IN DS {} {} {} {digest}\n",
        tokens[3], tokens[4], tokens[5]
    );
    let err = start(&anchor("wrong.ds", &wrong))
        .err()
        .expect("a DS that matches no root key must stop the start");
    let err = format!("{err:#}");
    assert!(
        err.contains("matches the DS record at line 1")
            && err.contains("does not fall back to its built-in root keys"),
        "{err}"
    );
}

/// Nothing of ours on the far side: zones signed by BIND and served by
/// knotd, and aiosmtpd (STARTTLS required before MAIL) as the destination
/// MX. The message arrives over DANE, authenticated by the TLSA record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_dane_to_aiosmtpd_with_starttls() {
    let dest = Dest::new("dane-aiosmtpd.test", true);
    let port = gateway::free_port(dest.ip);
    let digest = dest.spki_sha256();
    let world = KnotWorld::builder(gateway::fresh_ip(), Alg::EcdsaP256Sha256, Denial::Nsec3)
        .zone(dest.zone(port, None))
        .start()
        .unwrap();
    world
        .expect_delv(&dest.tlsa_owner(port), "TLSA", &DelvStatus::Secure)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dest.cert.as_ref().expect("a TLS destination");
    let (crt, key) = cert.write_chain(dir.path(), "mx").unwrap();
    let mx = crate::world::Aiosmtpd::start_tls(
        std::net::SocketAddr::from((dest.ip, port)),
        &dir.path().join("maildir"),
        &crt,
        &key,
    )
    .await
    .unwrap();
    let gw = gateway_for(&world, port);
    python_send(
        gw.addr,
        "a@clinic.example.test",
        &["b@dane-aiosmtpd.test"],
        &message("dane to aiosmtpd", "x"),
    )
    .unwrap();
    let got = match mx.wait_for(1, WAIT).await {
        Ok(g) => g,
        Err(e) => panic!("{e}\n{:#?}\n{}", gw.audit_rows(), gw.log()),
    };
    assert!(got[0].contains("Subject: dane to aiosmtpd"), "{}", got[0]);
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    let row = &rows[0];
    assert_eq!(row["outcome"], "delivered", "{row}");
    assert_eq!(row["tls_requirement"], "dane", "{row}");
    assert_eq!(
        ev(row)["attempt"]["tls"]["dane_match"].as_str(),
        Some(format!("3 1 1 {}", hex::encode(&digest)).as_str()),
        "{row}"
    );
}
