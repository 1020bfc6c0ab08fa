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
        ("RCPT TO:<victim%elsewhere.test@gateway.example.test>", 553),
        ("RCPT TO:<elsewhere.test!victim@gateway.example.test>", 553),
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

/// swaks (Perl, Net::SSLeay: a client we did not write) drives STARTTLS,
/// verifying our certificate chain against the test CA, then AUTH PLAIN and
/// LOGIN: the right password relays, a wrong one gets 535, and AUTH
/// before STARTTLS is not offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_relays_after_starttls_and_auth() {
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
    let swaks = |extra: &[&str]| {
        let out = std::process::Command::new("swaks")
            .args(["--server", &gw.addr.ip().to_string()])
            .args(["--port", &gw.addr.port().to_string()])
            .args(["--from", "a@clinic.example.test", "--to", "b@example.test"])
            .args([
                "--helo",
                "client.example.test",
                "--body",
                "via swaks with TLS",
            ])
            .args(extra)
            .output()
            .expect("swaks");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca = w.ca_file.display().to_string();
    let tls = ["--tls", "--tls-verify", "--tls-ca-path", ca.as_str()];
    for mech in ["PLAIN", "LOGIN"] {
        let (code, out) = swaks(
            &[
                &tls[..],
                &[
                    "--auth",
                    mech,
                    "--auth-user",
                    "app",
                    "--auth-password",
                    "s3cret",
                ],
            ]
            .concat(),
        );
        assert_eq!(code, Some(0), "{mech}:\n{out}\n{}", gw.log());
        assert!(out.contains("<~  235"), "{mech}: {out}");
        assert!(out.contains("TLS started"), "{mech}: {out}");
    }
    mx.wait_for(2, WAIT).await.unwrap();
    let (code, out) = swaks(
        &[
            &tls[..],
            &[
                "--auth",
                "PLAIN",
                "--auth-user",
                "app",
                "--auth-password",
                "wrong",
            ],
        ]
        .concat(),
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("<~* 535 5.7.8"), "{out}");
    // Without STARTTLS no AUTH is offered, and relaying is refused.
    let (code, out) = swaks(&[
        "--auth",
        "PLAIN",
        "--auth-user",
        "app",
        "--auth-password",
        "s3cret",
    ]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        !out.contains("<~  235") && !out.contains("<-  235"),
        "{out}"
    );
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

/// Runs `body` (Python) with `s`, an smtplib session to `addr` that has
/// said EHLO (and done STARTTLS against `ca`, if given), and `auth(user,
/// pw)`, one AUTH PLAIN attempt returning its reply code. Returns stdout.
fn smtplib(addr: std::net::SocketAddr, ca: Option<&std::path::Path>, body: &str) -> String {
    let prelude = r#"
import smtplib, ssl, sys, time
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo('client.example.test')
if ca:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    s.starttls(context=ctx)
    s.ehlo('client.example.test')
def auth(user, pw):
    try:
        code, _ = s.auth('PLAIN', lambda challenge=None: '\0%s\0%s' % (user, pw))
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    return code
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}\n{body}"))
        .args([addr.ip().to_string(), addr.port().to_string()])
        .arg(ca.map(|p| p.display().to_string()).unwrap_or_default())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CANONICAL_POLICY: &str = r#"
[defaults]
methods = ["tls"]
min_tls = "opportunistic"

[[rule]]
name = "freemail-hold"
match.recipient_domain = ["freemail.example.test"]
action = "hold"

[[rule]]
name = "idn-hold"
match.recipient = ["*@bücher.example.test"]
action = "hold"
"#;

/// Every spelling of an address reaches policy, queue and audit in one
/// form: a trailing-dot recipient is decided by the rule written for its
/// domain, a U-label by the rule written with the U-label, an A-label in
/// capitals by the same rule, a needlessly quoted sender unquoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_an_address_meets_the_same_rule() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.policy = CANONICAL_POLICY.into();
    let gw = Gateway::start(opts).unwrap();
    let out = smtplib(
        gw.addr,
        None,
        r#"
msg = b"Subject: one form\r\n\r\nx\r\n"
print(s.sendmail('"ceo"@Clinic.Example.TEST.', ['v@freemail.example.test.', 'v@FREEMAIL.example.test'], msg))
print(s.sendmail('ceo@clinic.example.test', ['x@BÜCHER.example.test', 'y@XN--BCHER-KVA.example.test.'], msg, mail_options=['SMTPUTF8']))
s.quit()
"#,
    );
    assert_eq!(out, "{}\n{}\n", "every recipient accepted");
    let rows = gw
        .wait_audit(WAIT, |r| {
            r.iter().filter(|r| r["outcome"] == "held").count() >= 3
        })
        .await
        .unwrap();
    let rule_of = |rcpt: &str| {
        let found: Vec<_> = rows.iter().filter(|r| r["recipient"] == rcpt).collect();
        assert_eq!(found.len(), 1, "{rcpt}: {rows:#?}");
        (
            found[0]["policy_rule"].as_str().unwrap().to_string(),
            found[0]["outcome"].as_str().unwrap().to_string(),
            found[0]["sender"].as_str().unwrap().to_string(),
        )
    };
    let held = |rule: &str| {
        (
            rule.to_string(),
            "held".to_string(),
            "ceo@clinic.example.test".to_string(),
        )
    };
    assert_eq!(rule_of("v@freemail.example.test"), held("freemail-hold"));
    assert_eq!(rule_of("x@xn--bcher-kva.example.test"), held("idn-hold"));
    assert_eq!(rule_of("y@xn--bcher-kva.example.test"), held("idn-hold"));
    assert_eq!(
        rows.len(),
        3,
        "the two spellings of v@ are one recipient: {rows:#?}"
    );
    // The queue shows the same form.
    let q = gw.queue().unwrap();
    let mut queued: Vec<String> = q
        .iter()
        .flat_map(|m| m["message"]["recipients"].as_array().unwrap().clone())
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect();
    queued.sort();
    assert_eq!(
        queued,
        [
            "v@freemail.example.test",
            "x@xn--bcher-kva.example.test",
            "y@xn--bcher-kva.example.test"
        ]
    );
    // And so does `sealgate probe`, for the operator's spelling.
    let out = gw.cli(&[
        "probe",
        "--json",
        "v@FreeMail.example.test.",
        "z@bücher.example.test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["recipient"], "v@freemail.example.test");
    assert_eq!(v[0]["decision"]["rule"], "freemail-hold");
    assert_eq!(v[1]["recipient"], "z@xn--bcher-kva.example.test");
    assert_eq!(v[1]["decision"]["rule"], "idn-hold");
}

/// Invalid IDNA and `%`/`!` local parts are refused in MAIL and RCPT by
/// default; `[relay] allow_percent_hack` lets `%` and `!` through, to the
/// domain after the `@`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_idna_and_percent_hacks_are_refused_unless_configured() {
    let w = World::new().await;
    let gw = w.gateway().unwrap();
    let body = r#"
def code(f):
    try:
        return f()[0]
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
for sender in ['a%b@clinic.example.test', 'a!b@clinic.example.test', 'a@xn--a.example.test']:
    r = s.docmd('MAIL FROM:<%s>' % sender)
    print(r[0], r[1].decode()[:5])
s.command_encoding = 'utf-8'
s.docmd('MAIL FROM:<a@clinic.example.test> SMTPUTF8')
for rcpt in ['a%b@example.test', 'example.test!b@gateway.example.test', '"a%b"@example.test', 'b@aא.example.test', 'b@example.test']:
    r = s.docmd('RCPT TO:<%s>' % rcpt)
    print(r[0], r[1].decode()[:5])
s.quit()
"#;
    let out = smtplib(gw.addr, None, body);
    assert_eq!(
        out,
        "553 5.1.7\n553 5.1.7\n553 5.1.7\n553 5.1.3\n553 5.1.3\n553 5.1.3\n553 5.1.3\n250 2.1.5\n",
        "{}",
        gw.log()
    );
    let mut opts = w.options();
    opts.relay_extra = "allow_percent_hack = true\n".into();
    let gw = Gateway::start(opts).unwrap();
    let out = smtplib(
        gw.addr,
        None,
        r#"
print(s.docmd('MAIL FROM:<a!b@clinic.example.test>')[0])
print(s.docmd('RCPT TO:<"a%b"@Example.TEST.>')[0])
print(s.docmd('RCPT TO:<a@xn--a.example.test>')[0])
s.quit()
"#,
    );
    assert_eq!(out, "250\n250\n553\n");
}

/// AUTH failures lock the client out: a good password is refused with 454
/// while the lockout lasts (it is not even checked) and accepted after it.
/// The name a client sent is never logged at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_lock_the_client_out_until_the_lockout_ends() {
    let w = World::new().await;
    let cert = w.ca.issue(&["gateway.example.test"]);
    let (cert_path, key_path) = cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.allow_networks = vec![];
    opts.tls = Some((cert_path, key_path));
    opts.users = vec![("app".into(), hash("s3cret"))];
    opts.server_extra = "auth_max_failures = 3\nauth_lockout = \"3s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    let ca = Some(w.ca_file.as_path());
    let out = smtplib(
        gw.addr,
        ca,
        r#"
for pw in ['guess1', 'guess2', 'guess3']:
    print(auth('patient.jane.doe', pw))
print(auth('app', 's3cret'))
"#,
    );
    assert_eq!(out, "535\n535\n535\n454\n", "{}", gw.log());
    // A new session from the same address is still locked out, even with
    // the right password and another mechanism.
    let out = smtplib(
        gw.addr,
        ca,
        "print(auth('app', 's3cret'))\ntry:\n    s.login('app', 's3cret')\nexcept smtplib.SMTPAuthenticationError as e:\n    print(e.smtp_code)\n",
    );
    assert_eq!(out, "454\n454\n");
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("auth_lockout")
            && l.contains("peer_ip=127.0.0.1")),
        "{log}"
    );
    for line in log.lines().filter(|l| l.contains(" INFO ")) {
        assert!(
            !line.contains("patient.jane.doe"),
            "user name at info: {line}"
        );
    }
    assert!(log.contains("user_tag="), "{log}");
    // The lockout is an audit row too: the client's address, the scope and
    // the count, and nothing the client typed.
    let deadline = std::time::Instant::now() + WAIT;
    let row = loop {
        let rows = gw.audit_rows().unwrap();
        if let Some(r) = rows.iter().find(|r| r["outcome"] == "auth_lockout") {
            break r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lockout row: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(row["remote_ip"], "127.0.0.1", "{row:#}");
    let evidence: serde_json::Value =
        serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(evidence["scope"], "client", "{row:#}");
    assert_eq!(evidence["failures"], 3, "{row:#}");
    assert!(!row.to_string().contains("patient.jane.doe"), "{row:#}");
    // After the lockout the right password works again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = smtplib(gw.addr, ca, "print(auth('app', 's3cret'))");
        if out == "235\n" {
            break;
        }
        assert_eq!(out, "454\n", "refused only as locked out");
        assert!(
            std::time::Instant::now() < deadline,
            "never unlocked:\n{}",
            gw.log()
        );
    }
}

/// A client that only chats (NOOP, RSET...) is closed with 421 4.7.0 after
/// `max_junk_commands`; an accepted message starts the count afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_flood_is_closed() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.server_extra = "max_junk_commands = 20\nmax_errors = 1000\n".into();
    let gw = Gateway::start(opts).unwrap();
    // EHLO is the first of the 20; a message resets the count.
    let out = smtplib(
        gw.addr,
        None,
        r#"
for i in range(15):
    s.noop()
print(s.sendmail('a@clinic.example.test', ['b@example.test'], b"Subject: x\r\n\r\nx\r\n"))
codes = [s.docmd('RSET' if i % 2 else 'NOOP')[0] for i in range(20)]
print(codes.count(250), codes[-1])
r = s.docmd('NOOP')
print(r[0], r[1].decode()[:5])
"#,
    );
    assert_eq!(out, "{}\n20 250\n421 4.7.0\n", "{}", gw.log());
    mx.wait_for(1, WAIT).await.unwrap();
    // Unknown commands count too.
    let out = smtplib(
        gw.addr,
        None,
        r#"
codes = [s.docmd('XYZZY')[0] for i in range(19)]
print(codes.count(500))
print(s.docmd('HELP')[0])
"#,
    );
    assert_eq!(out, "19\n421\n");
}

/// A session that never idles long enough for the read timeout is still
/// closed when its lifetime is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_lifetime_is_over() {
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "session_timeout = \"2s\"\nmax_junk_commands = 100000\n".into();
    let gw = Gateway::start(opts).unwrap();
    let out = smtplib(
        gw.addr,
        None,
        r#"
while True:
    code, text = s.docmd('NOOP')
    if code != 250:
        print(code, text.decode())
        break
    time.sleep(0.2)
"#,
    );
    assert_eq!(
        out.trim(),
        "421 4.4.2 gateway.example.test Error: session lasted too long",
        "{}",
        gw.log()
    );
}

/// A client that trickles DATA fast enough for the per-read timeout is cut
/// off when the DATA phase bound is over; nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_data_phase_is_cut_off() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let w = World::new().await;
    let mut opts = w.options();
    opts.server_extra = "data_phase_timeout = \"2s\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"EHLO client.example.test\r\nMAIL FROM:<a@clinic.example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(rd.read_line(&mut line).await.unwrap() > 0, "closed early");
        if line.starts_with("354") {
            break;
        }
        assert!(line.starts_with("2"), "{line}");
    }
    // One byte every 20 ms: far inside the per-read timeout, for ever.
    let trickle = tokio::spawn(async move {
        let _ = wr.write_all(b"Subject: slow\r\n\r\n").await;
        while wr.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    line.clear();
    rd.read_line(&mut line).await.unwrap();
    assert_eq!(
        line.trim_end(),
        "421 4.4.2 gateway.example.test Error: DATA took too long",
        "{}",
        gw.log()
    );
    line.clear();
    assert_eq!(
        rd.read_line(&mut line).await.unwrap(),
        0,
        "then the session closes"
    );
    trickle.abort();
    assert!(gw.queue().unwrap().is_empty());
}
