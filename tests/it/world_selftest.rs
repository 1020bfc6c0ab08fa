//! Self-tests of the test world (DNS server, test MX, PKI, SMTP client).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::world::dns::{build_query, query_tcp, query_udp};
use crate::world::{Behaviour, DnsServer, MxOptions, Script, SmtpClient, TestCa, TestMx, Zone};

fn zone() -> Zone {
    let z = Zone::new();
    z.add_mx("example.test", 10, "mx1.example.test")
        .add_mx("example.test", 20, "mx2.example.test")
        .add_a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 1))
        .add_a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .add_txt("example.test", "v=spf1 -all")
        .add_tlsa("_25._tcp.mx1.example.test", 3, 1, 1, vec![0xab; 32]);
    z
}

#[tokio::test]
async fn world_dns_udp_and_tcp() -> Result<()> {
    let dns = DnsServer::start(zone()).await;
    for tcp in [false, true] {
        for edns in [false, true] {
            let q = build_query("Example.TEST", RecordType::MX, edns);
            let r = if tcp {
                query_tcp(dns.addr(), &q).await?
            } else {
                query_udp(dns.addr(), &q).await?
            };
            assert_eq!(r.id(), q.id());
            assert_eq!(r.response_code(), ResponseCode::NoError);
            assert!(r.authoritative());
            assert_eq!(r.extensions().is_some(), edns);
            let mut mx: Vec<(u16, String)> = r
                .answers()
                .iter()
                .filter_map(|rr| match rr.data() {
                    RData::MX(m) => Some((m.preference(), m.exchange().to_ascii())),
                    _ => None,
                })
                .collect();
            mx.sort();
            assert_eq!(
                mx,
                vec![
                    (10, "mx1.example.test.".to_string()),
                    (20, "mx2.example.test.".to_string())
                ]
            );
        }
        let q = build_query("mx1.example.test", RecordType::A, false);
        let r = if tcp {
            query_tcp(dns.addr(), &q).await?
        } else {
            query_udp(dns.addr(), &q).await?
        };
        assert_eq!(r.answers().len(), 1);
        assert_eq!(
            r.answers()[0].data(),
            &RData::A(Ipv4Addr::new(127, 0, 0, 1).into())
        );
    }
    // NODATA, NXDOMAIN, empty non-terminal
    let r = query_udp(
        dns.addr(),
        &build_query("mx1.example.test", RecordType::AAAA, false),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.answers().is_empty());
    let r = query_udp(
        dns.addr(),
        &build_query("nope.example.test", RecordType::A, false),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    let r = query_udp(
        dns.addr(),
        &build_query("_tcp.mx1.example.test", RecordType::A, false),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    let r = query_udp(
        dns.addr(),
        &build_query("_25._tcp.mx1.example.test", RecordType::TLSA, false),
    )
    .await?;
    assert_eq!(r.answers().len(), 1);

    // CNAME chasing
    dns.zone()
        .add_cname("alias.example.test", "mx2.example.test");
    let r = query_udp(
        dns.addr(),
        &build_query("alias.example.test", RecordType::A, false),
    )
    .await?;
    assert_eq!(r.answers().len(), 2);

    // failure modes
    let z = dns.zone();
    z.set_behaviour("mx2.example.test", Behaviour::ServFail);
    let r = query_udp(
        dns.addr(),
        &build_query("mx2.example.test", RecordType::A, false),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::ServFail);
    z.set_behaviour("mx2.example.test", Behaviour::Timeout);
    assert!(
        query_udp(
            dns.addr(),
            &build_query("mx2.example.test", RecordType::A, false)
        )
        .await
        .is_err()
    );
    z.set_behaviour("mx2.example.test", Behaviour::Normal);
    let r = query_udp(
        dns.addr(),
        &build_query("mx2.example.test", RecordType::A, false),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert_eq!(r.answers().len(), 1);

    // truncation over UDP without EDNS; full answer over TCP
    for i in 0..40 {
        z.add_txt(
            "big.example.test",
            &format!("record number {i} with some padding text"),
        );
    }
    let q = build_query("big.example.test", RecordType::TXT, false);
    let r = query_udp(dns.addr(), &q).await?;
    assert!(r.truncated());
    assert!(r.answers().is_empty());
    let r = query_tcp(dns.addr(), &q).await?;
    assert!(!r.truncated());
    assert_eq!(r.answers().len(), 40);

    assert!(dns.queries() >= 15);
    assert_eq!(dns.queries_for("example.test", RecordType::MX), 4);
    Ok(())
}

#[tokio::test]
async fn world_dns_with_hickory_resolver() -> Result<()> {
    let dns = DnsServer::start(zone()).await;
    let resolver = dns.resolver();
    let mx = resolver.mx_lookup("example.test.").await?;
    let mut got: Vec<(u16, String)> = mx
        .iter()
        .map(|m| (m.preference(), m.exchange().to_ascii()))
        .collect();
    got.sort();
    assert_eq!(got[0], (10, "mx1.example.test.".to_string()));
    let a = resolver.ipv4_lookup("mx2.example.test.").await?;
    assert_eq!(
        a.iter().next().map(|a| a.0),
        Some(Ipv4Addr::new(127, 0, 0, 2))
    );

    let err = resolver
        .ipv4_lookup("missing.example.test.")
        .await
        .unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    let err = resolver.ipv4_lookup("mx1.example.test.").await;
    assert!(err.is_ok());
    let err = resolver.ipv6_lookup("mx1.example.test.").await.unwrap_err();
    assert!(err.is_no_records_found(), "{err:?}");

    // changes are visible immediately (TTL 0, no cache)
    dns.zone()
        .add_a("new.example.test", Ipv4Addr::new(127, 0, 0, 9));
    assert!(resolver.ipv4_lookup("new.example.test.").await.is_ok());

    // truncated UDP answer -> resolver retries over TCP
    let z = dns.zone();
    for i in 0..40 {
        z.add_txt(
            "big.example.test",
            &format!("record number {i} with some padding text"),
        );
    }
    let txt = resolver.txt_lookup("big.example.test.").await?;
    assert_eq!(txt.iter().count(), 40);
    assert!(dns.query_log().iter().any(|q| q.tcp));

    // forced TCP; EDNS-enabled resolver
    z.set_behaviour("mx1.example.test", Behaviour::TruncateUdp);
    assert!(resolver.ipv4_lookup("mx1.example.test.").await.is_ok());
    z.set_behaviour("mx1.example.test", Behaviour::ServFail);
    assert!(resolver.ipv4_lookup("mx1.example.test.").await.is_err());
    z.set_behaviour("mx1.example.test", Behaviour::Normal);

    let mut b = hickory_resolver::TokioResolver::builder_with_config(
        hickory_resolver::config::ResolverConfig::from_parts(
            None,
            vec![],
            hickory_resolver::config::NameServerConfigGroup::from_ips_clear(
                &[dns.addr().ip()],
                dns.port(),
                true,
            ),
        ),
        hickory_resolver::name_server::TokioConnectionProvider::default(),
    );
    b.options_mut().edns0 = true;
    b.options_mut().cache_size = 0;
    let r2 = b.build();
    let txt = r2.txt_lookup("big.example.test.").await?;
    assert_eq!(txt.iter().count(), 40);
    let tlsa = r2
        .lookup("_25._tcp.mx1.example.test.", RecordType::TLSA)
        .await?;
    assert_eq!(tlsa.iter().count(), 1);
    Ok(())
}

const BODY: &[u8] = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nlast\r\n";
const BODY_RECEIVED: &[u8] = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nlast";

#[tokio::test]
async fn world_mx_plain() -> Result<()> {
    let mx = TestMx::start(MxOptions::new("mx1.example.test").size(100_000)).await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    assert_eq!(c.greeting.0, 220);
    let caps = c.ehlo("client.example.org").await?;
    assert!(caps.contains(&"PIPELINING".to_string()));
    assert!(caps.contains(&"SIZE".to_string()));
    assert!(!caps.contains(&"STARTTLS".to_string()));
    assert_eq!(c.cmd("STARTTLS").await?.0, 502);
    let r = c
        .send_mail("a@example.org", &["b@example.test", "c@example.test"], BODY)
        .await?;
    assert_eq!(r.0, 250);
    // pipelined second transaction
    c.send_raw(b"MAIL FROM:<> SIZE=10\r\nRCPT TO:<d@example.test>\r\nDATA\r\n")
        .await?;
    assert_eq!(c.read_reply().await?.0, 250);
    assert_eq!(c.read_reply().await?.0, 250);
    assert_eq!(c.read_reply().await?.0, 354);
    c.send_raw(b"bounce\r\n.\r\n").await?;
    assert_eq!(c.read_reply().await?.0, 250);
    // too big
    assert_eq!(c.cmd("MAIL FROM:<x@example.org> SIZE=100001").await?.0, 552);
    assert_eq!(c.cmd("NOOP").await?.0, 250);
    assert_eq!(c.cmd("RSET").await?.0, 250);
    assert_eq!(c.cmd("BOGUS").await?.0, 500);
    c.quit().await?;

    let msgs = mx.wait_for(2, Duration::from_secs(5)).await?;
    assert_eq!(msgs[0].mail_from, "a@example.org");
    assert_eq!(msgs[0].rcpt_to, vec!["b@example.test", "c@example.test"]);
    assert_eq!(msgs[0].data, BODY_RECEIVED);
    assert_eq!(msgs[0].helo, "client.example.org");
    assert!(msgs[0].esmtp);
    assert!(msgs[0].tls.is_none());
    assert_eq!(msgs[0].header("subject").as_deref(), Some("hi"));
    assert_eq!(msgs[1].mail_from, "");
    assert_eq!(msgs[1].mail_params, vec!["SIZE=10"]);
    assert_eq!(msgs[1].data, b"bounce");
    assert_eq!(mx.connections(), 1);
    assert_eq!(mx.transactions(), 2);
    assert_eq!(mx.data_commands(), 2);
    assert!(mx.wait_for(3, Duration::from_millis(50)).await.is_err());
    Ok(())
}

#[tokio::test]
async fn world_mx_starttls() -> Result<()> {
    let ca = TestCa::new("World Test CA");
    let cert = ca.issue(&["mx1.example.test"]);
    let dir = tempfile::tempdir()?;
    let ca_path = ca.write_pem(dir.path())?;
    let (cp, kp) = cert.write(dir.path(), "mx1")?;
    assert!(ca_path.exists() && cp.exists() && kp.exists());

    let mx = TestMx::start(MxOptions::new("mx1.example.test").tls(&cert)).await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    let caps = c.ehlo("client.example.org").await?;
    assert!(caps.contains(&"STARTTLS".to_string()));
    let mut c = c.starttls(ca.client_config(), "mx1.example.test").await?;
    assert_eq!(c.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));
    // MAIL before EHLO again is refused after STARTTLS
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await?.0, 503);
    let caps = c.ehlo("client.example.org").await?;
    assert!(!caps.contains(&"STARTTLS".to_string()));
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.test"], BODY)
            .await?
            .0,
        250
    );
    c.quit().await?;
    let msgs = mx.wait_for(1, Duration::from_secs(5)).await?;
    let tls = msgs[0].tls.clone().expect("tls info");
    assert_eq!(tls.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(tls.sni.as_deref(), Some("mx1.example.test"));
    assert_eq!(mx.tls_handshakes(), 1);

    // TLS 1.2 only server; a wrong-name / untrusted handshake fails
    let mx12 = TestMx::start(
        MxOptions::new("mx1.example.test")
            .tls(&cert)
            .tls_versions(crate::world::mx::TlsVersions::Tls12Only),
    )
    .await;
    let mut c = SmtpClient::connect(mx12.addr()).await?;
    c.ehlo("client.example.org").await?;
    let c = c.starttls(ca.client_config(), "mx1.example.test").await?;
    assert_eq!(c.tls_version, Some(rustls::ProtocolVersion::TLSv1_2));

    let mut c = SmtpClient::connect(mx.addr()).await?;
    c.ehlo("client.example.org").await?;
    let other = TestCa::new("Other CA");
    assert!(
        c.starttls(other.client_config(), "mx1.example.test")
            .await
            .is_err()
    );
    mx.wait_until(Duration::from_secs(5), |m| m.tls_failures() == 1)
        .await?;

    // offer_starttls(false) hides it even with a certificate
    let plain = TestMx::start(
        MxOptions::new("mx9.example.test")
            .tls(&cert)
            .offer_starttls(false),
    )
    .await;
    let mut c = SmtpClient::connect(plain.addr()).await?;
    let caps = c.ehlo("client.example.org").await?;
    assert!(!caps.contains(&"STARTTLS".to_string()));
    assert_eq!(c.cmd("STARTTLS").await?.0, 502);

    // self-signed cert helper
    let ss = crate::world::pki::self_signed(&["mx2.example.test", "127.0.0.1"]);
    assert!(ss.issuer_der.is_none());
    assert_eq!(ss.chain_der().len(), 1);
    Ok(())
}

#[tokio::test]
async fn world_mx_scripts() -> Result<()> {
    let mx = TestMx::start(
        MxOptions::new("mx1.example.test")
            .rcpt_script("a@example.test", Script::first([(451, "4.3.0 try later")]))
            .rcpt_script("b@example.test", Script::always(550, "5.1.1 no such user"))
            .data_script(Script::first([(451, "4.3.0 data later")])),
    )
    .await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    c.ehlo("client.example.org").await?;
    assert_eq!(c.cmd("DATA").await?.0, 503);
    c.expect("MAIL FROM:<s@example.org>", 250).await?;
    assert_eq!(c.cmd("RCPT TO:<A@example.test>").await?.0, 451);
    assert_eq!(c.cmd("RCPT TO:<b@example.test>").await?.0, 550);
    assert_eq!(c.cmd("RCPT TO:<c@example.test>").await?.0, 250);
    assert_eq!(c.data(b"first try\r\n").await?.0, 451);
    c.expect("MAIL FROM:<s@example.org>", 250).await?;
    assert_eq!(c.cmd("RCPT TO:<a@example.test>").await?.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.test>").await?.0, 550);
    assert_eq!(c.data(b"second try\r\n").await?.0, 250);
    c.expect("MAIL FROM:<s@example.org>", 250).await?;
    assert_eq!(c.cmd("RCPT TO:<b@example.test>").await?.0, 550);
    assert_eq!(c.cmd("DATA").await?.0, 554);
    c.quit().await?;

    let msgs = mx.wait_for(1, Duration::from_secs(5)).await?;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpt_to, vec!["a@example.test"]);
    assert_eq!(msgs[0].data, b"second try");
    assert_eq!(mx.rcpt_attempts("a@example.test"), 2);
    assert_eq!(mx.rcpt_attempts("b@example.test"), 3);
    assert_eq!(mx.transactions(), 3);
    assert_eq!(mx.data_commands(), 4);
    assert_eq!(mx.connections(), 1);

    // MAIL rejected, drop-on-RCPT (code 0), 421 greeting
    let mx = TestMx::start(
        MxOptions::new("mx2.example.test")
            .mail_script(Script::first([(452, "4.3.1 busy")]))
            .rcpt_reply(|addr, _| addr.starts_with("drop").then(|| (0, String::new()))),
    )
    .await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    c.ehlo("client.example.org").await?;
    assert_eq!(c.cmd("MAIL FROM:<s@example.org>").await?.0, 452);
    assert_eq!(c.cmd("RCPT TO:<x@example.test>").await?.0, 503);
    c.expect("MAIL FROM:<s@example.org>", 250).await?;
    assert!(c.cmd("RCPT TO:<drop@example.test>").await.is_err());
    assert_eq!(mx.transactions(), 1);

    let mx = TestMx::start(MxOptions::new("mx3.example.test").greeting(554, "5.3.2 go away")).await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    assert_eq!(c.greeting.0, 554);
    assert_eq!(c.cmd("EHLO x").await?.0, 503);
    assert_eq!(c.cmd("QUIT").await?.0, 221);
    Ok(())
}

#[tokio::test]
async fn world_mx_on_loopback_aliases_share_a_port() -> Result<()> {
    let a = TestMx::start(MxOptions::new("mx1.example.test").ip(Ipv4Addr::new(127, 0, 0, 2))).await;
    let b = TestMx::start_on(
        a.port(),
        MxOptions::new("mx2.example.test").ip(Ipv4Addr::new(127, 0, 0, 3)),
    )
    .await?;
    assert_eq!(a.port(), b.port());
    for mx in [&a, &b] {
        let mut c = SmtpClient::connect(mx.addr()).await?;
        assert!(c.greeting.1.starts_with(mx.hostname()));
        c.ehlo("client.example.org").await?;
        c.send_mail("s@example.org", &["r@example.test"], b"x\r\n")
            .await?;
        c.quit().await?;
        mx.wait_for(1, Duration::from_secs(5)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn world_servers_survive_garbage() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let dns = DnsServer::start(zone()).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for junk in [
        &b""[..],
        b"\x01",
        b"\x12\x34\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        sock.send_to(junk, dns.addr()).await?;
    }
    let mut t = tokio::net::TcpStream::connect(dns.addr()).await?;
    t.write_all(b"\x00\x05hello\x00\x02\x00").await?;
    drop(t);
    let r = query_udp(
        dns.addr(),
        &build_query("example.test", RecordType::MX, false),
    )
    .await?;
    assert_eq!(r.answers().len(), 2);

    let mx = TestMx::start(MxOptions::new("mx1.example.test")).await;
    let mut c = SmtpClient::connect(mx.addr()).await?;
    c.send_raw(b"\xff\xfe\r\n").await?;
    assert_eq!(c.read_reply().await?.0, 500);
    c.ehlo("x").await?;
    assert_eq!(c.cmd("MAIL FR\u{e9}:<a@b>").await?.0, 501);
    assert_eq!(c.cmd("MAIL FROM:a@b").await?.0, 501);
    assert_eq!(c.cmd("MAIL").await?.0, 501);
    c.send_raw(b"MAIL FROM:<a@b").await?;
    drop(c);
    let mut c = SmtpClient::connect(mx.addr()).await?;
    c.ehlo("x").await?;
    c.send_mail("a@b.example", &["c@d.example"], b"ok\r\n")
        .await?;
    mx.wait_for(1, Duration::from_secs(5)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// DNSSEC

use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::dnssec::Proof;

/// The zone of [`zone`] plus: an insecure delegation `unsigned.test` with an MX host and
/// TLSA, a bogus subtree `bogus.example.test`, an expired one `stale.example.test`.
fn dnssec_zone() -> Zone {
    let z = zone();
    z.add_a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 11))
        .add_aaaa("mx1.example.test", "::1".parse().unwrap())
        .add_cname("alias.example.test", "mx1.example.test")
        .add_insecure_delegation("unsigned.test")
        .add_mx("unsigned.test", 10, "mx.unsigned.test")
        .add_a("mx.unsigned.test", Ipv4Addr::new(127, 0, 0, 3))
        .add_tlsa("_25._tcp.mx.unsigned.test", 3, 1, 1, vec![0xcd; 32])
        .add_mx("bogus.example.test", 10, "mx.bogus.example.test")
        .add_a("mx.bogus.example.test", Ipv4Addr::new(127, 0, 0, 4))
        .add_tlsa("_25._tcp.mx.bogus.example.test", 3, 1, 1, vec![0xef; 32])
        .set_bogus("bogus.example.test", true)
        .add_a("stale.example.test", Ipv4Addr::new(127, 0, 0, 5))
        .set_expired("stale.example.test", true);
    z
}

/// DNSSEC status of a successful lookup: the weakest proof among its records (a CNAME
/// chain counts). hickory 0.25 returns Bogus records as `Ok`, so this must be checked.
fn lookup_proof(lookup: &hickory_resolver::lookup::Lookup) -> Proof {
    lookup
        .record_iter()
        .map(|r| r.proof())
        .min()
        .unwrap_or(Proof::Indeterminate)
}

/// DNSSEC status of a failed lookup: for NXDOMAIN / NODATA (`NoRecordsFound`) the proof
/// of the SOA in the denial (Secure: NSEC-authenticated; Insecure: unsigned zone below an
/// NSEC-proven insecure delegation; Bogus: bad signatures); a failed NSEC denial is an
/// `Nsec { proof: Bogus }` error; anything else (SERVFAIL, timeout) is Indeterminate.
fn error_proof(e: &hickory_resolver::ResolveError) -> (Proof, Option<ResponseCode>) {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            soa, response_code, ..
        }) => (
            soa.as_ref().map_or(Proof::Indeterminate, |s| s.proof()),
            Some(*response_code),
        ),
        Some(ProtoErrorKind::Nsec { proof, .. }) => (*proof, None),
        _ => (Proof::Indeterminate, None),
    }
}

#[tokio::test]
async fn world_dnssec_raw_answers() -> Result<()> {
    use crate::world::dns::build_query_dnssec;
    let dns = DnsServer::start(dnssec_zone()).await;
    let has = |m: &hickory_proto::op::Message, t: RecordType| {
        m.answers()
            .iter()
            .chain(m.name_servers())
            .filter(|r| r.record_type() == t)
            .count()
    };
    // DO: answer + RRSIG; no DO: as before
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("mx1.example.test", RecordType::A),
    )
    .await?;
    assert_eq!((has(&r, RecordType::A), has(&r, RecordType::RRSIG)), (2, 1));
    assert!(r.extensions().as_ref().unwrap().flags().dnssec_ok);
    let r = query_udp(
        dns.addr(),
        &build_query("mx1.example.test", RecordType::A, true),
    )
    .await?;
    assert_eq!((has(&r, RecordType::A), has(&r, RecordType::RRSIG)), (2, 0));
    // root DNSKEY: KSK + ZSK, signed
    let r = query_tcp(dns.addr(), &build_query_dnssec(".", RecordType::DNSKEY)).await?;
    assert_eq!(
        (has(&r, RecordType::DNSKEY), has(&r, RecordType::RRSIG)),
        (2, 1)
    );
    // NXDOMAIN: root SOA + NSECs, all signed
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("nope.example.test", RecordType::A),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    assert_eq!(has(&r, RecordType::SOA), 1);
    assert!(has(&r, RecordType::NSEC) >= 1);
    assert_eq!(has(&r, RecordType::RRSIG), 1 + has(&r, RecordType::NSEC));
    // DS at the insecure delegation: NODATA with the NSEC at unsigned.test (NS, no DS)
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("unsigned.test", RecordType::DS),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    let nsec = r
        .name_servers()
        .iter()
        .find_map(|rr| {
            rr.data()
                .as_dnssec()?
                .as_nsec()
                .map(|n| (rr.name().to_ascii(), n.type_bit_maps().collect::<Vec<_>>()))
        })
        .expect("NSEC");
    assert_eq!(nsec.0, "unsigned.test.");
    assert!(nsec.1.contains(&RecordType::NS) && !nsec.1.contains(&RecordType::DS));
    // below the delegation: unsigned, with the child's SOA
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("mx.unsigned.test", RecordType::A),
    )
    .await?;
    assert_eq!((has(&r, RecordType::A), has(&r, RecordType::RRSIG)), (1, 0));
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("x.unsigned.test", RecordType::A),
    )
    .await?;
    assert_eq!(r.response_code(), ResponseCode::NXDomain, "{r:?}");
    assert_eq!(
        r.name_servers()[0].name().to_ascii(),
        "unsigned.test.",
        "{r:?}"
    );
    assert_eq!(has(&r, RecordType::RRSIG) + has(&r, RecordType::NSEC), 0);
    // an unsigned zone sends no DNSSEC records
    dns.zone().set_signed(false);
    let r = query_udp(
        dns.addr(),
        &build_query_dnssec("mx1.example.test", RecordType::A),
    )
    .await?;
    assert_eq!(has(&r, RecordType::RRSIG), 0);
    Ok(())
}

#[tokio::test]
async fn world_dnssec_validating_resolver() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dns = DnsServer::start(dnssec_zone()).await;
    let anchor = dns.write_trust_anchor(dir.path());
    let text = std::fs::read_to_string(&anchor)?;
    assert!(text.contains(". 3600 IN DNSKEY 257 3 13 "), "{text}");
    let r = dns.validating_resolver(&anchor)?;

    // (i) secure: MX, A, AAAA (lookup_ip), TLSA, CNAME chain
    let mx = r.mx_lookup("example.test.").await?;
    assert_eq!(mx.iter().count(), 2);
    assert_eq!(lookup_proof(mx.as_lookup()), Proof::Secure);
    let a = r.ipv4_lookup("mx1.example.test.").await?;
    assert_eq!(a.iter().count(), 2);
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Secure);
    let ip = r.lookup_ip("mx1.example.test.").await?; // A only (Ipv4thenIpv6)
    assert_eq!(ip.iter().count(), 2);
    assert_eq!(lookup_proof(ip.as_lookup()), Proof::Secure);
    let aaaa = r.ipv6_lookup("mx1.example.test.").await?;
    assert_eq!(lookup_proof(aaaa.as_lookup()), Proof::Secure);
    let tlsa = r.tlsa_lookup("_25._tcp.mx1.example.test.").await?;
    assert_eq!(tlsa.iter().count(), 1);
    assert_eq!(lookup_proof(tlsa.as_lookup()), Proof::Secure);
    // the same through the Proven API
    assert!(
        tlsa.as_lookup()
            .dnssec_iter()
            .all(|p| p.require(Proof::Secure).is_ok())
    );
    let alias = r.ipv4_lookup("alias.example.test.").await?;
    assert_eq!(lookup_proof(alias.as_lookup()), Proof::Secure);

    // (iv) secure denial: NXDOMAIN, NODATA, empty non-terminal
    let e = r.ipv4_lookup("nope.example.test.").await.unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    assert_eq!(
        error_proof(&e),
        (Proof::Secure, Some(ResponseCode::NXDomain))
    );
    let e = r
        .tlsa_lookup("_25._tcp.mx2.example.test.")
        .await
        .unwrap_err();
    assert_eq!(
        error_proof(&e),
        (Proof::Secure, Some(ResponseCode::NXDomain))
    );
    let e = r.ipv6_lookup("mx2.example.test.").await.unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
    assert_eq!(
        error_proof(&e),
        (Proof::Secure, Some(ResponseCode::NoError))
    );
    let e = r.mx_lookup("mx1.example.test.").await.unwrap_err();
    assert_eq!(
        error_proof(&e),
        (Proof::Secure, Some(ResponseCode::NoError))
    );
    let e = r.ipv4_lookup("_tcp.mx1.example.test.").await.unwrap_err();
    assert_eq!(
        error_proof(&e),
        (Proof::Secure, Some(ResponseCode::NoError))
    );

    // (ii) insecure delegation
    let mx = r.mx_lookup("unsigned.test.").await?;
    assert_eq!(lookup_proof(mx.as_lookup()), Proof::Insecure);
    let a = r.ipv4_lookup("mx.unsigned.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Insecure);
    let tlsa = r.tlsa_lookup("_25._tcp.mx.unsigned.test.").await?;
    assert_eq!(lookup_proof(tlsa.as_lookup()), Proof::Insecure);
    let e = r.ipv4_lookup("nope.unsigned.test.").await.unwrap_err();
    assert_eq!(
        error_proof(&e),
        (Proof::Insecure, Some(ResponseCode::NXDomain))
    );
    let e = r.ipv6_lookup("mx.unsigned.test.").await.unwrap_err();
    assert_eq!(
        error_proof(&e),
        (Proof::Insecure, Some(ResponseCode::NoError))
    );

    // (iii) bogus subtree and expired signatures: records come back Ok but Bogus
    let mx = r.mx_lookup("bogus.example.test.").await?;
    assert_eq!(lookup_proof(mx.as_lookup()), Proof::Bogus);
    let a = r.ipv4_lookup("mx.bogus.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Bogus);
    let tlsa = r.tlsa_lookup("_25._tcp.mx.bogus.example.test.").await?;
    assert_eq!(lookup_proof(tlsa.as_lookup()), Proof::Bogus);
    let e = r.ipv4_lookup("nope.bogus.example.test.").await.unwrap_err();
    assert_eq!(error_proof(&e).0, Proof::Bogus, "{e:?}");
    let a = r.ipv4_lookup("stale.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Bogus);

    // a zone that turns bogus later (tests can flip it at run time)
    dns.zone().set_bogus("mx1.example.test", true);
    let a = r.ipv4_lookup("mx1.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Bogus);
    dns.zone().set_bogus("mx1.example.test", false);

    // wrong trust anchor (another world's key): everything Bogus
    let other = tempfile::tempdir()?;
    let other_anchor = DnsServer::start(Zone::new())
        .await
        .write_trust_anchor(other.path());
    let r2 = dns.validating_resolver(&other_anchor)?;
    let a = r2.ipv4_lookup("mx1.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Bogus);

    // the validator walked the chain on this server
    assert!(dns.queries_for(".", RecordType::DNSKEY) > 0);
    assert!(dns.queries_for("unsigned.test", RecordType::DS) > 0);

    // failing to fetch the root DNSKEY also makes answers Bogus (not an error)
    dns.set_behaviour_for(".", RecordType::DNSKEY, Behaviour::ServFail);
    let a = r.ipv4_lookup("mx1.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Bogus);
    let e = r.ipv4_lookup("nope.example.test.").await.unwrap_err();
    assert_eq!(error_proof(&e).0, Proof::Bogus, "{e:?}");
    dns.set_behaviour_for(".", RecordType::DNSKEY, Behaviour::Normal);

    // the non-validating resolver still gets Indeterminate (unchecked) records
    let a = dns.resolver().ipv4_lookup("mx1.example.test.").await?;
    assert_eq!(lookup_proof(a.as_lookup()), Proof::Indeterminate);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealgate_dane_resolver_validates_the_test_world() {
    let zone = crate::world::Zone::new();
    zone.add_mx("example.test", 10, "mx.example.test");
    zone.add_a("mx.example.test", std::net::Ipv4Addr::new(127, 0, 0, 9));
    let dns = crate::world::DnsServer::start(zone.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ta = dns.write_trust_anchor(dir.path());
    let settings = sealgate::config::DnsSettings {
        nameservers: vec![dns.addr()],
        trust_anchor: Some(ta),
        timeout: std::time::Duration::from_secs(2),
    };
    let dane = sealgate::net::dane::Dane::new(&settings, 25).await.unwrap();
    let answer = sealgate::probe::dane::check(&dane, "example.test").await;
    assert!(
        answer.result.is_ok(),
        "{:?} {}",
        answer.result,
        answer.evidence
    );
    assert_eq!(answer.evidence["dnssec"], "secure");
}
