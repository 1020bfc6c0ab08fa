//! The listener against real clients: relay control, AUTH, STARTTLS,
//! every limit, SMTP smuggling.

use std::time::Duration;

use crate::common::{WAIT, World, message, python_send};
use crate::gateway::{Gateway, GatewayOptions};
use crate::world::{MxOptions, SmtpClient};

async fn connect(gw: &Gateway) -> SmtpClient {
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    assert_eq!(c.greeting.0, 220);
    c.ehlo("client.example.test").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_advertises_the_extensions() {
    let w = World::new().await;
    let cert = w.ca.issue(&["gateway.example.test"]);
    let (cert_path, key_path) = cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.tls = Some((cert_path, key_path));
    opts.users = vec![("app".into(), hash("pw"))];
    let gw = Gateway::start(opts).unwrap();
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    let kws = c.ehlo("client.example.test").await.unwrap();
    for k in [
        "SIZE",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "STARTTLS",
    ] {
        assert!(kws.contains(&k.to_string()), "{k} in {kws:?}");
    }
    assert!(!kws.contains(&"AUTH".to_string()), "no AUTH before TLS");
    let r = c.cmd("AUTH PLAIN AGFwcABwdw==").await.unwrap();
    assert_eq!(r.0, 538);
    let r = c.cmd("VRFY root").await.unwrap();
    assert_eq!(r.0, 502);
    let mut c = c
        .starttls(w.ca.client_config(), "gateway.example.test")
        .await
        .unwrap();
    let kws = c.ehlo("client.example.test").await.unwrap();
    assert!(kws.contains(&"AUTH".to_string()));
    assert!(!kws.contains(&"STARTTLS".to_string()));
}

fn hash(pw: &str) -> String {
    let mut child = std::process::Command::new(crate::gateway::BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_refused_outside_allow_networks_whatever_the_address_trick() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.allow_networks = vec!["10.0.0.0/8".into()];
    let gw = Gateway::start(opts).unwrap();
    let mut c = connect(&gw).await;
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    let tricks = [
        ("RCPT TO:<victim@elsewhere.test>", 550),
        ("RCPT TO:<victim%elsewhere.test@gateway.example.test>", 550),
        ("RCPT TO:<elsewhere.test!victim@gateway.example.test>", 550),
        ("RCPT TO:<@gateway.example.test:victim@elsewhere.test>", 553),
        ("RCPT TO:<@a.test,@b.test:victim@elsewhere.test>", 553),
        (
            "RCPT TO:<\"victim@elsewhere.test\"@gateway.example.test>",
            553,
        ),
        ("RCPT TO:<victim@elsewhere.test@gateway.example.test>", 553),
        ("RCPT TO:<victim@[127.0.0.1]>", 553),
        ("RCPT TO:<postmaster@gateway.example.test>", 550),
    ];
    for (cmd, code) in tricks {
        let r = c.cmd(cmd).await.unwrap();
        assert_eq!(r.0, code, "{cmd}: {r:?}");
        if code == 550 {
            assert!(r.1.starts_with("5.7.1"), "{cmd}: {r:?}");
        }
    }
    let r = c.cmd("DATA").await.unwrap();
    assert_eq!(r.0, 554, "no recipient was accepted");
    assert!(gw.queue().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_after_starttls_allows_relay() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let cert = w.ca.issue(&["gateway.example.test"]);
    let (cert_path, key_path) = cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.allow_networks = vec![];
    opts.tls = Some((cert_path, key_path));
    opts.users = vec![("app".into(), hash("s3cret"))];
    let gw = Gateway::start(opts).unwrap();
    let c = connect(&gw).await;
    let mut c = c
        .starttls(w.ca.client_config(), "gateway.example.test")
        .await
        .unwrap();
    c.ehlo("client.example.test").await.unwrap();
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    assert_eq!(
        c.cmd("RCPT TO:<b@example.test>").await.unwrap().0,
        550,
        "not yet authenticated"
    );
    c.expect("RSET", 250).await.unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = b64.encode("\0app\0wrong");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {bad}")).await.unwrap().0, 535);
    // AUTH LOGIN, the other mechanism.
    assert_eq!(c.cmd("AUTH LOGIN").await.unwrap().0, 334);
    assert_eq!(c.cmd(&b64.encode("app")).await.unwrap().0, 334);
    assert_eq!(c.cmd(&b64.encode("s3cret")).await.unwrap().0, 235);
    let r = c
        .send_mail(
            "a@clinic.example.test",
            &["b@example.test"],
            &message("auth", "x"),
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250, "{r:?}");
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        got[0].data_str().contains("with ESMTPSA"),
        "{}",
        got[0].data_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_get_the_right_replies() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "max_message_size = \"2000\"\nmax_recipients = 3\nmax_header_size = \"1000\"\nmax_line_length = 1000\nmax_received_headers = 5\n".into();
    let gw = Gateway::start(opts).unwrap();
    let mut c = connect(&gw).await;
    // SIZE declared too big.
    let r = c
        .cmd("MAIL FROM:<a@clinic.example.test> SIZE=5000")
        .await
        .unwrap();
    assert_eq!((r.0, &r.1[..5]), (552, "5.3.4"));
    // Too many recipients.
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    for i in 0..3 {
        c.expect(&format!("RCPT TO:<r{i}@example.test>"), 250)
            .await
            .unwrap();
    }
    let r = c.cmd("RCPT TO:<r4@example.test>").await.unwrap();
    assert_eq!((r.0, &r.1[..5]), (452, "4.5.3"));
    // Message bigger than the limit while reading DATA.
    let big = message(
        "big",
        &"x".repeat(100)
            .repeat(30)
            .chars()
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\r\n"),
    );
    let r = c.data(&big).await.unwrap();
    assert_eq!((r.0, &r.1[..5]), (552, "5.3.4"), "{r:?}");
    // Header section too big.
    let mut hdr = String::new();
    for i in 0..40 {
        hdr.push_str(&format!("X-Filler-{i}: {}\r\n", "y".repeat(40)));
    }
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<b@example.test>", 250).await.unwrap();
    let r = c
        .data(format!("{hdr}\r\nbody\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(r.0, 552, "{r:?}");
    // Line too long.
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<b@example.test>", 250).await.unwrap();
    let r = c
        .data(format!("Subject: x\r\n\r\n{}\r\n", "z".repeat(1500)).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.0, 500, "{r:?}");
    // Mail loop.
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<b@example.test>", 250).await.unwrap();
    let hops = "Received: from a by b; Sun, 29 Nov 2026 10:00:00 +0000\r\n".repeat(5);
    let r = c
        .data(format!("{hops}Subject: loop\r\n\r\nx\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!((r.0, &r.1[..5]), (554, "5.4.6"), "{r:?}");
    // Command line too long.
    let r = c.cmd(&format!("NOOP {}", "n".repeat(5000))).await.unwrap();
    assert_eq!(r.0, 500);
    // The session is still in step after all that.
    assert_eq!(c.cmd("NOOP").await.unwrap().0, 250);
    assert!(gw.queue().unwrap().is_empty(), "nothing refused was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_closes_the_session() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "max_errors = 3\n".into();
    let gw = Gateway::start(opts).unwrap();
    let mut c = connect(&gw).await;
    for _ in 0..3 {
        assert_eq!(c.cmd("BOGUS").await.unwrap().0, 500);
    }
    let r = c.cmd("NOOP").await.unwrap();
    assert_eq!(r.0, 421, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_timed_out() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "command_timeout = \"1s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    let mut c = connect(&gw).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.read_reply().await.unwrap();
    assert_eq!((r.0, &r.1[..5]), (421, "4.4.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_refuse_extra_connections() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "max_sessions = 2\n".into();
    let gw = Gateway::start(opts).unwrap();
    let _a = connect(&gw).await;
    let _b = connect(&gw).await;
    let c = SmtpClient::connect(gw.addr).await.unwrap();
    assert_eq!(c.greeting.0, 421, "{:?}", c.greeting);
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = SmtpClient::connect(gw.addr).await.unwrap();
    assert_eq!(d.greeting.0, 220);
}

// SMTP smuggling against the real daemon and an independent next hop:
// tests/it/faults.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_and_starttls_injection() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let cert = w.ca.issue(&["gateway.example.test"]);
    let (cert_path, key_path) = cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.tls = Some((cert_path, key_path));
    let gw = Gateway::start(opts).unwrap();
    // PIPELINING: the whole envelope in one write.
    let mut c = connect(&gw).await;
    c.send_raw(b"MAIL FROM:<a@clinic.example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n").await.unwrap();
    for want in [250, 250, 250, 354] {
        assert_eq!(c.read_reply().await.unwrap().0, want);
    }
    c.send_raw(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().0, 250);
    assert_eq!(c.read_reply().await.unwrap().0, 221);
    mx.wait_for(1, WAIT).await.unwrap();
    // Commands injected after STARTTLS in the same packet are discarded
    // (CVE-2011-0411 class): inside TLS the session starts clean.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut tcp = BufReader::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    let mut line = String::new();
    tcp.read_line(&mut line).await.unwrap();
    tcp.get_mut()
        .write_all(b"EHLO client.example.test\r\n")
        .await
        .unwrap();
    loop {
        line.clear();
        tcp.read_line(&mut line).await.unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    tcp.get_mut()
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await
        .unwrap();
    line.clear();
    tcp.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220"), "{line}");
    let name = rustls_pki_types::ServerName::try_from("gateway.example.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(w.ca.client_config())
        .connect(name, tcp.into_inner())
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO client.example.test\r\nMAIL FROM:<a@clinic.example.test>\r\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        if line.as_bytes().get(3) == Some(&b' ') {
            replies.push(line.clone());
        }
    }
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    assert!(
        replies[1].starts_with("250 2.1.0"),
        "MAIL accepted, so no injected MAIL was pending: {replies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_and_utf8_messages_pass_unchanged() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .ehlo_keyword("SMTPUTF8")
            .ehlo_keyword("8BITMIME"))
        .await;
    let gw = w.gateway().unwrap();
    let mut c = connect(&gw).await;
    c.expect(
        "MAIL FROM:<ärztin@clinic.example.test> SMTPUTF8 BODY=8BITMIME",
        250,
    )
    .await
    .unwrap();
    c.expect("RCPT TO:<patiënt@example.test>", 250)
        .await
        .unwrap();
    let body = "Subject: Befund für Müller\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, 日本語\r\n";
    assert_eq!(c.data(body.as_bytes()).await.unwrap().0, 250);
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].mail_from, "ärztin@clinic.example.test");
    assert!(
        got[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8")),
        "{:?}",
        got[0].mail_params
    );
    assert!(got[0].data_str().contains("Grüße, 日本語"));
    // Without SMTPUTF8 the same address is refused.
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    assert_eq!(
        c.cmd("RCPT TO:<patiënt@example.test>").await.unwrap().0,
        553
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_can_send_through_the_gateway() {
    if std::process::Command::new("swaks")
        .arg("--version")
        .output()
        .is_err()
    {
        // CI installs swaks (.ci/run); on a bare developer machine say so loudly.
        panic!("swaks is not installed: apt-get install -y swaks (deploy/test does it)");
    }
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gw = w.gateway().unwrap();
    let out = std::process::Command::new("swaks")
        .args([
            "--server",
            &gw.addr.ip().to_string(),
            "--port",
            &gw.addr.port().to_string(),
        ])
        .args([
            "--from",
            "a@clinic.example.test",
            "--to",
            "b@example.test",
            "--helo",
            "client.example.test",
        ])
        .args([
            "--header",
            "Subject: via swaks",
            "--body",
            "hello from swaks",
            "--pipeline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_str().contains("hello from swaks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nhostname = \"gw.example.test\"\nlisten = [\"nonsense\"]\nspool_dir = \"s\"\nspool_key_file = \"k\"\nmax_message_size = \"lots\"\n").unwrap();
    for verb in ["check-config", "serve"] {
        let out = std::process::Command::new(crate::gateway::BIN)
            .args([verb, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml:3") && err.contains("server.listen"),
            "{verb}: {err}"
        );
        assert!(
            err.contains("bad.toml:6") && err.contains("server.max_message_size"),
            "{verb}: {err}"
        );
    }
    // A missing spool key is named with the command that creates it.
    std::fs::write(&path, "[server]\nhostname = \"gw.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"s\"\nspool_key_file = \"k\"\n").unwrap();
    let out = std::process::Command::new(crate::gateway::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sealgate keygen --out"));
    let _ = GatewayOptions::default();
    let _ = python_send;
}
