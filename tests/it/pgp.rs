//! OpenPGP end to end: GnuPG decrypts what the PGP path produced, over a
//! corpus of real-world-shaped messages; keys from the store and from WKD.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{WAIT, World};
use crate::gateway::{self, Gateway};
use crate::world::{MxOptions, SmtpClient};

const PGP_POLICY: &str = "[defaults]\nmethods = [\"pgp\", \"tls\"]\nmin_tls = \"opportunistic\"\nphi_min_tls = \"verified\"\n";

/// A throwaway GnuPG home with one key.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new(uid: &str) -> Gpg {
        Self::new_with(uid, "default")
    }

    fn new_with(uid: &str, algo: &str) -> Gpg {
        let home = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let g = Gpg { home };
        let out = g.run(
            &[
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                uid,
                algo,
                "default",
                "never",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        g
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.home.path())
            .arg("--no-tty")
            .arg("--pinentry-mode")
            .arg("loopback")
            .args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("gpg is installed (deploy/test installs gnupg)");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.map(|d| d.to_vec());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            if let Some(d) = data {
                let _ = input.write_all(&d);
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        out
    }

    fn export(&self, uid: &str, dir: &Path) -> PathBuf {
        let out = self.run(&["--armor", "--export", uid], None);
        let path = dir.join(format!("{}.asc", uid.replace(['@', '<', '>', ' '], "_")));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// Decrypts the PGP/MIME message `mail`, returning the payload.
    fn decrypt_mime(&self, mail: &str) -> String {
        let start = mail
            .find("-----BEGIN PGP MESSAGE-----")
            .expect("armored message");
        let end = mail.find("-----END PGP MESSAGE-----").expect("armor end")
            + "-----END PGP MESSAGE-----".len();
        let armored = &mail[start..end];
        let out = self.run(&["--decrypt"], Some(armored.as_bytes()));
        assert!(
            out.status.success(),
            "gpg --decrypt failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Real-world-shaped messages (headers and body separated, CRLF).
fn corpus() -> Vec<(String, String)> {
    let b64 = |n: usize| {
        use base64::Engine;
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(data);
        enc.as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let long_line = "x".repeat(5000);
    vec![
        ("Subject: Plain ASCII\r\nContent-Type: text/plain; charset=us-ascii".into(), "Hello Bob,\r\n\r\nyour results are ready.\r\n".into()),
        ("Subject: Résultats für Müller — 日本語 (raw UTF-8)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit".into(), "Ünïcödé body\r\n".into()),
        ("Subject: =?utf-8?q?Befund_f=C3=BCr_M=C3=BCller?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit".into(), "Grüße aus München — 日本語 — ünïcödé\r\n".into()),
        ("Subject: QP\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable".into(), "Caf=E9 cr=E8me =\r\nsoft break and a trailing space=20\r\n".into()),
        ("Subject: Alternative\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt\"".into(), "--alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n--alt\r\nContent-Type: text/html\r\n\r\n<p><b>html</b></p>\r\n--alt--\r\n".into()),
        ("Subject: Nested\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"".into(), "--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nA\r\n--inner\r\nContent-Type: text/html\r\n\r\n<i>A</i>\r\n--inner--\r\n--outer\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\r\nJVBERi0xLjQKJcfsj6IK\r\n--outer--\r\n".into()),
        ("Subject: Base64 attachment\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"".into(), format!("--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"scan.png\"\r\n\r\n{}\r\n--b--\r\n", b64(30_000))),
        ("Subject: Long lines\r\nContent-Type: text/plain".into(), format!("{long_line}\r\nshort\r\n")),
        ("Subject: Leading dots\r\nContent-Type: text/plain".into(), ".\r\n..\r\n.hidden\r\n. space\r\n".into()),
        ("Subject: Empty body".into(), String::new()),
        ("Subject: No trailing newline\r\nContent-Type: text/plain".into(), "last line without CRLF".into()),
        ("Subject: Calendar\r\nMIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8".into(), "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nSUMMARY:Follow-up\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n".into()),
        ("Subject: Forwarded\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"f\"".into(), "--f\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--f\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.test\r\nSubject: inner\r\n\r\ninner body\r\n--f--\r\n".into()),
        ("Subject: Folded\r\n header continuation\r\nX-Custom: one\r\n\ttwo\r\nContent-Type: text/plain".into(), "body\r\n".into()),
        ("Subject: Binary-ish 8bit\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit".into(), "\u{1}\u{2}\u{7f} bytes €\r\n".into()),
        ("Subject: Signed-looking\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=\"s\"".into(), "--s\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n--s--\r\n".into()),
        ("Subject: Many parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"".into(), (0..20).map(|i| format!("--m\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n")).collect::<String>() + "--m--\r\n"),
    ]
}

async fn pgp_world() -> (World, crate::world::TestMx, Gateway, Gpg) {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w
        .mx(MxOptions::new("mx.example.test")
            .ehlo_keyword("8BITMIME")
            .ehlo_keyword("SMTPUTF8"))
        .await;
    let gpg = Gpg::new("Bob <bob@example.test>");
    let key = gpg.export("bob@example.test", w.dir.path());
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"local\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    let out = gw.cli(&["keys", "import", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (w, mx, gw, gpg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnupg_decrypts_a_corpus_byte_for_byte_with_header_protection() {
    let (_w, mx, gw, gpg) = pgp_world().await;
    let corpus = corpus();
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    c.ehlo("client.example.test").await.unwrap();
    for (i, (headers, body)) in corpus.iter().enumerate() {
        let msg = format!(
            "From: a@clinic.example.test\r\nTo: bob@example.test\r\nMessage-ID: <c{i}@clinic.example.test>\r\n{headers}\r\n\r\n{body}"
        );
        c.expect(
            "MAIL FROM:<a@clinic.example.test> BODY=8BITMIME SMTPUTF8",
            250,
        )
        .await
        .unwrap();
        c.expect("RCPT TO:<bob@example.test>", 250).await.unwrap();
        let r = c.data(msg.as_bytes()).await.unwrap();
        assert_eq!(r.0, 250, "{r:?}");
    }
    let got = mx
        .wait_for(corpus.len(), Duration::from_secs(90))
        .await
        .unwrap();
    assert!(corpus.len() >= 15);
    for m in &got {
        let text = m.data_str();
        assert!(
            text.contains(
                "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\""
            ),
            "{text}"
        );
        // RFC 3156 as Python's email package reads it: exactly a control
        // part with "Version: 1" and an octet-stream part with the armored
        // message, no defects.
        let tree = crate::common::python_mime_tree(
            &m.data,
            r#"
text = lambda p: p.get_content() if isinstance(p.get_content(), str) else p.get_content().decode()
parts = list(msg.iter_parts())
print(text(parts[0]).strip(), text(parts[1])[:27])
"#,
        );
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(lines.len(), 4, "{tree}");
        assert!(
            lines[0].starts_with("0 multipart/encrypted ")
                && lines[0].contains("('protocol', 'application/pgp-encrypted')")
                && lines[0].ends_with("[]"),
            "{tree}"
        );
        assert_eq!(lines[1], "1 application/pgp-encrypted [] []", "{tree}");
        assert!(
            lines[2].starts_with("1 application/octet-stream ") && lines[2].ends_with("[]"),
            "{tree}"
        );
        assert_eq!(lines[3], "Version: 1 -----BEGIN PGP MESSAGE-----", "{tree}");
        assert_eq!(m.header("Subject").unwrap().trim(), "[...]");
        let id = m.header("Message-ID").unwrap();
        let i: usize = id
            .trim()
            .trim_start_matches("<c")
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (headers, body) = &corpus[i];
        let plain = gpg.decrypt_mime(&text);
        let (inner_head, inner_body) = plain.split_once("\r\n\r\n").expect("payload has headers");
        let first_subject_line = headers.lines().next().unwrap();
        assert!(
            inner_head.contains(first_subject_line),
            "protected Subject inside: {inner_head}"
        );
        assert!(inner_head.contains("hp=\"cipher\""), "{inner_head}");
        // RFC 9788 section 2.2: what was visible outside is recorded inside.
        assert!(
            inner_head.contains("\r\nHP-Outer: Subject: [...]"),
            "{inner_head}"
        );
        let outer_from = m.header("From").unwrap();
        assert!(
            inner_head.contains(&format!("HP-Outer: From: {outer_from}")),
            "{inner_head}"
        );
        // The body is preserved byte for byte (the test MX drops the final CRLF of DATA).
        let want = body.trim_end_matches("\r\n");
        assert_eq!(inner_body.trim_end_matches("\r\n"), want, "message {i}");
    }
    let rows = gw
        .wait_audit(WAIT, |r| r.len() == corpus.len())
        .await
        .unwrap();
    for r in &rows {
        assert_eq!(r["method"], "plaintext", "hop without TLS at this MX");
        let ev: serde_json::Value = serde_json::from_str(r["evidence"].as_str().unwrap()).unwrap();
        assert_eq!(ev["decision"]["method"], "pgp");
        assert_eq!(ev["attempt"]["encryption"]["method"], "pgp");
        assert_eq!(
            ev["decision"]["explanation"]["probes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["probe"] == "pgp")
                .unwrap()["evidence"]["source"],
            "local"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_attachment_is_encrypted_and_decrypted() {
    let (_w, mx, gw, gpg) = pgp_world().await;
    use base64::Engine;
    let data: Vec<u8> = (0..15_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let enc = base64::engine::general_purpose::STANDARD.encode(&data);
    let body: String = enc
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
        .collect();
    let msg = format!(
        "From: a@clinic.example.test\r\nTo: bob@example.test\r\nSubject: Imaging\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"z\"\r\n\r\n--z\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n\r\n{body}--z--\r\n"
    );
    assert!(msg.len() > 20_000_000);
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    c.timeout = Duration::from_secs(120);
    c.ehlo("client.example.test").await.unwrap();
    let r = c
        .send_mail(
            "a@clinic.example.test",
            &["bob@example.test"],
            msg.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.0, 250);
    let got = mx.wait_for(1, Duration::from_secs(180)).await.unwrap();
    let plain = gpg.decrypt_mime(&got[0].data_str());
    let inner_body = plain.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        inner_body.trim_end_matches("\r\n"),
        msg.split_once("\r\n\r\n")
            .unwrap()
            .1
            .trim_end_matches("\r\n")
    );
}

/// Serves WKD paths over HTTPS on `ip:443`.
struct WkdServer {
    task: tokio::task::JoinHandle<()>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl WkdServer {
    async fn start(w: &World, ip: std::net::Ipv4Addr, host: &str, key: Vec<u8>) -> WkdServer {
        Self::serving(w, ip, host, key, "/.well-known/openpgpkey/example.test/hu/").await
    }

    /// Serves `key` for request lines containing `path_part`.
    async fn serving(
        w: &World,
        ip: std::net::Ipv4Addr,
        host: &str,
        key: Vec<u8>,
        path_part: &'static str,
    ) -> WkdServer {
        w.zone.add_a(host, ip);
        let cert = w.ca.issue(&[host]);
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
        let listener = tokio::net::TcpListener::bind((ip, 443))
            .await
            .expect("bind 443 (tests run as root)");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h2 = hits.clone();
        let key = Arc::new(key);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, h3, key) = (acceptor.clone(), h2.clone(), key.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    h3.lock().unwrap().push(line.clone());
                    let found = line.contains(path_part);
                    let (status, body): (u16, &[u8]) = if found { (200, &key) } else { (404, b"") };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        WkdServer { task, hits }
    }
}

impl Drop for WkdServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wkd_discovery_and_key_validation() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gpg = Gpg::new("Carol <carol@example.test>");
    let binary = gpg.run(&["--export", "carol@example.test"], None).stdout;
    let wkd = WkdServer::start(&w, gateway::fresh_ip(), "openpgpkey.example.test", binary).await;
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"local\", \"wkd\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    // A key from WKD.
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["carol@example.test"],
        &crate::common::message("wkd", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let plain = gpg.decrypt_mime(&got[0].data_str());
    assert!(plain.contains("Subject: wkd"));
    assert!(wkd.hits.lock().unwrap()[0].contains("?l=carol"));
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    let pgp = ev["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "pgp")
        .unwrap()
        .clone();
    assert_eq!(pgp["evidence"]["source"], "wkd");
    assert_eq!(ev["decision"]["key"], pgp["evidence"]["key"]["fingerprint"]);

    // WKD serves carol's key for dave: it does not carry dave's address,
    // so it is rejected and the policy falls to TLS.
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["dave@example.test"],
        &crate::common::message("dave", "x"),
    )
    .unwrap();
    let got = mx.wait_for(2, WAIT).await.unwrap();
    assert!(!got[1].data_str().contains("multipart/encrypted"));
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[1]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(ev["decision"]["method"], "tls");
    assert!(
        ev.to_string()
            .contains("has no user ID with the address dave@example.test"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_archived_with_the_organisation_keys() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let bob = Gpg::new("Bob <bob@example.test>");
    let clinic = Gpg::new("Clinic <signing@clinic.example.test>");
    let archive = Gpg::new("Archive <archive@clinic.example.test>");
    let bob_key = bob.export("bob@example.test", w.dir.path());
    let secret = clinic
        .run(
            &[
                "--armor",
                "--export-secret-keys",
                "signing@clinic.example.test",
            ],
            None,
        )
        .stdout;
    let secret_path = w.dir.path().join("clinic-secret.asc");
    std::fs::write(&secret_path, secret).unwrap();
    let archive_key = archive.export("archive@clinic.example.test", w.dir.path());
    // Bob knows the clinic's public key, to check the signature.
    let clinic_pub = clinic
        .run(
            &["--armor", "--export", "signing@clinic.example.test"],
            None,
        )
        .stdout;
    assert!(bob.run(&["--import"], Some(&clinic_pub)).status.success());
    let mut opts = w.options();
    opts.policy = format!("{PGP_POLICY}sign = true\n");
    opts.extra = format!(
        "[pgp]\nsources = [\"local\"]\nsubject_placeholder = \"Encrypted message\"\nadditional_decryption_key = {:?}\n[pgp.signing_keys]\n\"clinic.example.test\" = {:?}\n",
        archive_key.display().to_string(),
        secret_path.display().to_string()
    );
    let gw = Gateway::start(opts).unwrap();
    assert!(
        gw.cli(&["keys", "import", bob_key.to_str().unwrap()])
            .status
            .success()
    );
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["bob@example.test"],
        &crate::common::message("Signed results", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    let text = got[0].data_str();
    assert_eq!(
        got[0].header("Subject").unwrap().trim(),
        "Encrypted message"
    );
    let start = text.find("-----BEGIN PGP MESSAGE-----").unwrap();
    let end = text.find("-----END PGP MESSAGE-----").unwrap() + 25;
    let out = bob.run(&["--decrypt"], Some(text[start..end].as_bytes()));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Good signature from \"Clinic <signing@clinic.example.test>\""),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Subject: Signed results"));
    // The archive key decrypts too (gpg exits non-zero only because the
    // archive keyring lacks the signer's public key).
    let out = archive.run(&["--decrypt"], Some(text[start..end].as_bytes()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Subject: Signed results"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 1).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    assert!(ev["attempt"]["encryption"]["signed_by"].is_string());
    assert!(ev["attempt"]["encryption"]["additional_decryption_key"].is_string());
}

fn sequoia_cert(uid: &str, expired: bool, revoked: bool) -> String {
    use sequoia_openpgp::cert::prelude::*;
    use sequoia_openpgp::serialize::SerializeInto;
    let mut b = CertBuilder::general_purpose(Some(uid));
    if expired {
        b = b
            .set_creation_time(std::time::SystemTime::now() - Duration::from_secs(10 * 86400))
            .set_validity_period(Some(Duration::from_secs(86400)));
    }
    let (mut cert, rev) = b.generate().unwrap();
    if revoked {
        cert = cert.insert_packets(rev).unwrap().0;
    }
    String::from_utf8(cert.armored().to_vec().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_keys_are_not_used() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"local\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    for (uid, expired, revoked) in [
        ("<old@example.test>", true, false),
        ("<gone@example.test>", false, true),
    ] {
        let path = w.dir.path().join(format!("{}.asc", &uid[1..4]));
        std::fs::write(&path, sequoia_cert(uid, expired, revoked)).unwrap();
        let out = gw.cli(&["keys", "import", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Stored (a revocation must replace a stored key), and said so.
        let said = String::from_utf8_lossy(&out.stdout);
        let why = if expired { "expired" } else { "revoked" };
        assert!(
            said.contains("cannot be used to encrypt") && said.contains(why),
            "{said}"
        );
    }
    let list = String::from_utf8_lossy(&gw.cli(&["keys", "list"]).stdout).into_owned();
    assert!(
        list.contains("old@example.test") && list.contains("gone@example.test"),
        "{list}"
    );
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["old@example.test", "gone@example.test"],
        &crate::common::message("k", "x"),
    )
    .unwrap();
    mx.wait_for(1, WAIT).await.unwrap();
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    for (rcpt, why) in [
        ("old@example.test", "expired"),
        ("gone@example.test", "revoked"),
    ] {
        let row = rows.iter().find(|r| r["recipient"] == rcpt).unwrap();
        let ev: serde_json::Value =
            serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap();
        assert_eq!(ev["decision"]["method"], "tls", "{rcpt}");
        assert!(ev.to_string().contains(why), "{rcpt}: {ev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_wkd_key_is_held_until_an_operator_confirms_it() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let first = Gpg::new("Carol <carol@example.test>");
    let second = Gpg::new("Carol <carol@example.test>");
    let ip = gateway::fresh_ip();
    let wkd = WkdServer::start(
        &w,
        ip,
        "openpgpkey.example.test",
        first.run(&["--export", "carol@example.test"], None).stdout,
    )
    .await;
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"wkd\"]\n".into();
    opts.server_extra = String::new();
    let mut gw = Gateway::start(opts).unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["carol@example.test"],
        &crate::common::message("one", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        first
            .decrypt_mime(&got[0].data_str())
            .contains("Subject: one")
    );
    // The directory now serves another key (restart clears the probe cache).
    drop(wkd);
    let _wkd2 = WkdServer::start(
        &w,
        ip,
        "openpgpkey.example.test",
        second.run(&["--export", "carol@example.test"], None).stdout,
    )
    .await;
    gw.stop().unwrap();
    gw.spawn().unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["carol@example.test"],
        &crate::common::message("two", "x"),
    )
    .unwrap();
    // The recipient is held with the reason, never sent by the next
    // method (TLS here) meanwhile.
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    assert_eq!(rows[1]["outcome"], "held", "{:#?}", rows[1]);
    assert!(
        rows[1]["smtp_reply"]
            .as_str()
            .unwrap_or("")
            .contains("confirm it with `sealgate keys trust`"),
        "{:#?}",
        rows[1]
    );
    let ev: serde_json::Value =
        serde_json::from_str(rows[1]["evidence"].as_str().unwrap()).unwrap();
    let new_fpr = ev["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "pgp")
        .unwrap()["evidence"]["tried"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = gw.queue().unwrap();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    let held_id = queued[0]["message"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mx.messages().len(), 1, "held mail was sent");
    assert!(
        gw.cli(&["keys", "trust", "carol@example.test", &new_fpr])
            .status
            .success()
    );
    gw.stop().unwrap();
    gw.spawn().unwrap();
    // Released by the operator: now encrypted to the confirmed key.
    let out = gw.cli(&["queue", "release", &held_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = mx.wait_for(2, WAIT).await.unwrap();
    assert!(
        second
            .decrypt_mime(&got[1].data_str())
            .contains("Subject: two")
    );
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["carol@example.test"],
        &crate::common::message("three", "x"),
    )
    .unwrap();
    let got = mx.wait_for(3, WAIT).await.unwrap();
    assert!(
        second
            .decrypt_mime(&got[2].data_str())
            .contains("Subject: three")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_openpgpkey_is_used_only_under_dnssec() {
    use hickory_proto::rr::rdata::OPENPGPKEY;
    use hickory_proto::rr::{Name, RData, Record};
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    w.zone.add_insecure_delegation("unsigned.test");
    w.zone.add_mx("unsigned.test", 10, "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let dan = Gpg::new("Dan <dan@example.test>");
    let ursula = Gpg::new("Ursula <u@unsigned.test>");
    let owner = |local: &str, domain: &str| {
        let h = ring::digest::digest(&ring::digest::SHA256, local.as_bytes());
        format!("{}._openpgpkey.{domain}.", hex::encode(&h.as_ref()[..28]))
    };
    for (gpg, local, domain) in [
        (&dan, "dan", "example.test"),
        (&ursula, "u", "unsigned.test"),
    ] {
        let key = gpg
            .run(&["--export", &format!("{local}@{domain}")], None)
            .stdout;
        let name = Name::from_ascii(owner(local, domain)).unwrap();
        w.zone.add_record(Record::from_rdata(
            name,
            300,
            RData::OPENPGPKEY(OPENPGPKEY::new(key)),
        ));
    }
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"dns\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["dan@example.test"],
        &crate::common::message("dns key", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        dan.decrypt_mime(&got[0].data_str())
            .contains("Subject: dns key")
    );
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["u@unsigned.test"],
        &crate::common::message("unsigned", "x"),
    )
    .unwrap();
    let got = mx.wait_for(2, WAIT).await.unwrap();
    assert!(
        !got[1].data_str().contains("multipart/encrypted"),
        "a key from an unsigned zone is not trusted"
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 2).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    let pgp = ev["decision"]["explanation"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["probe"] == "pgp")
        .unwrap()
        .clone();
    assert_eq!(pgp["evidence"]["source"], "dns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vks_keyserver_can_be_a_source() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let erin = Gpg::new("Erin <erin@example.test>");
    let armored = erin
        .run(&["--armor", "--export", "erin@example.test"], None)
        .stdout;
    let server = WkdServer::serving(
        &w,
        gateway::fresh_ip(),
        "keys.example.test",
        armored,
        "/vks/v1/by-email/erin%40example.test",
    )
    .await;
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"keyserver\"]\nkeyserver = \"keys.example.test\"\n".into();
    let gw = Gateway::start(opts).unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["erin@example.test"],
        &crate::common::message("vks", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        erin.decrypt_mime(&got[0].data_str())
            .contains("Subject: vks")
    );
    assert!(
        server
            .hits
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("/vks/v1/by-email/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_sharing_a_host_get_one_encryption_and_weak_keys_are_refused() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let bob = Gpg::new("Bob <bob@example.test>");
    let carol = Gpg::new("Carol <carol@example.test>");
    let weak = Gpg::new_with("Weak <weak@example.test>", "rsa1024");
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"local\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    for (g, uid) in [
        (&bob, "bob@example.test"),
        (&carol, "carol@example.test"),
        (&weak, "weak@example.test"),
    ] {
        let key = g.export(uid, w.dir.path());
        assert!(
            gw.cli(&["keys", "import", key.to_str().unwrap()])
                .status
                .success()
        );
    }
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &[
            "bob@example.test",
            "carol@example.test",
            "weak@example.test",
        ],
        &crate::common::message("shared", "x"),
    )
    .unwrap();
    let got = match mx.wait_for(2, WAIT).await {
        Ok(g) => g,
        Err(e) => panic!(
            "{e}\n{:#?}",
            gw.audit_rows()
                .unwrap()
                .iter()
                .map(|r| {
                    let ev: serde_json::Value =
                        serde_json::from_str(r["evidence"].as_str().unwrap()).unwrap();
                    (
                        r["recipient"].clone(),
                        ev["decision"]["method"].clone(),
                        ev["decision"]["key"].clone(),
                        ev["attempt"]["encryption"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        ),
    };
    let shared = got
        .iter()
        .find(|m| m.rcpt_to.len() == 2)
        .expect("one transaction for both PGP recipients");
    let text = shared.data_str();
    assert!(bob.decrypt_mime(&text).contains("Subject: shared"));
    assert!(carol.decrypt_mime(&text).contains("Subject: shared"));
    let other = got
        .iter()
        .find(|m| m.rcpt_to == vec!["weak@example.test"])
        .unwrap();
    assert!(
        !other.data_str().contains("multipart/encrypted"),
        "a 1024-bit RSA key is refused"
    );
    let rows = gw.wait_audit(WAIT, |r| r.len() == 3).await.unwrap();
    let weak_row = rows
        .iter()
        .find(|r| r["recipient"] == "weak@example.test")
        .unwrap();
    assert!(
        weak_row["evidence"]
            .as_str()
            .unwrap()
            .contains("fails the algorithm policy"),
        "{weak_row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wkd_direct_method_when_there_is_no_openpgpkey_host() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let fay = Gpg::new("Fay <fay@example.test>");
    let key = fay.run(&["--export", "fay@example.test"], None).stdout;
    // No openpgpkey.example.test: the direct method on the domain itself.
    let server = WkdServer::serving(
        &w,
        gateway::fresh_ip(),
        "example.test",
        key,
        "/.well-known/openpgpkey/hu/",
    )
    .await;
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"wkd\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["fay@example.test"],
        &crate::common::message("direct", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        fay.decrypt_mime(&got[0].data_str())
            .contains("Subject: direct")
    );
    assert!(
        server
            .hits
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("/.well-known/openpgpkey/hu/") && l.contains("?l=fay"))
    );
}

/// A world for the transport requirements of OpenPGP mail: bob@example.test
/// has a key in the store and an MX built with `mx_opts`; the gateway
/// listens with STARTTLS (so senders can ask for REQUIRETLS).
async fn pgp_transport_world(
    mx_opts: impl FnOnce(&World) -> MxOptions,
) -> (World, crate::world::TestMx, Gateway) {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(mx_opts(&w)).await;
    let gpg = Gpg::new("Bob <bob@example.test>");
    let key = gpg.export("bob@example.test", w.dir.path());
    let gw_cert = w.ca.issue(&["gateway.example.test"]);
    let (c, k) = gw_cert.write(w.dir.path(), "gw").unwrap();
    let mut opts = w.options();
    opts.tls = Some((c, k));
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"local\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    let out = gw.cli(&["keys", "import", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (w, mx, gw)
}

fn ev(row: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(row["evidence"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openpgp_mail_honours_a_secure_but_unusable_tlsa_record() {
    // The MX does not offer STARTTLS; its secure TLSA RRset holds only a
    // PKIX-EE record: TLS is mandatory (RFC 7672 section 2.2), so even the
    // encrypted copy must not go in the clear.
    let (w, mx, gw) = pgp_transport_world(|_| MxOptions::new("mx.example.test")).await;
    w.zone.add_tlsa(
        &format!("_{}._tcp.mx.example.test", w.port),
        1,
        1,
        1,
        vec![7; 32],
    );
    let mut c = SmtpClient::connect(gw.addr).await.unwrap();
    c.ehlo("client.example.test").await.unwrap();
    c.expect("MAIL FROM:<a@clinic.example.test>", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<bob@example.test>", 250).await.unwrap();
    let msg =
        b"From: a@clinic.example.test\r\nTo: bob@example.test\r\nSubject: x\r\n\r\nresults\r\n";
    assert_eq!(c.data(msg).await.unwrap().0, 250);
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["method"], "pgp", "{}", rows[0]);
    assert_eq!(rows[0]["tls_requirement"], "encrypted", "{}", rows[0]);
    assert_eq!(rows[0]["outcome"], "deferred", "{}", rows[0]);
    assert!(
        rows[0]["smtp_reply"].as_str().unwrap().contains("STARTTLS"),
        "{}",
        rows[0]
    );
    assert_eq!(mx.transactions(), 0, "nothing went in the clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openpgp_mail_honours_requiretls() {
    // The MX offers STARTTLS and REQUIRETLS, but its certificate is not
    // trusted: REQUIRETLS needs verified TLS (RFC 8689 section 4.2.1)
    // whatever the content method.
    let (_w, mx, gw) = pgp_transport_world(|_| {
        let cert = crate::world::pki::self_signed(&["mx.example.test"]);
        MxOptions::new("mx.example.test")
            .tls(&cert)
            .ehlo_keyword("REQUIRETLS")
    })
    .await;
    let c = SmtpClient::connect(gw.addr).await.unwrap();
    let w_ca = _w.ca.client_config();
    let mut c = c.starttls(w_ca, "gateway.example.test").await.unwrap();
    c.ehlo("client.example.test").await.unwrap();
    c.expect("MAIL FROM:<a@clinic.example.test> REQUIRETLS", 250)
        .await
        .unwrap();
    c.expect("RCPT TO:<bob@example.test>", 250).await.unwrap();
    let msg =
        b"From: a@clinic.example.test\r\nTo: bob@example.test\r\nSubject: x\r\n\r\nresults\r\n";
    assert_eq!(c.data(msg).await.unwrap().0, 250);
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    assert_eq!(rows[0]["method"], "pgp", "{}", rows[0]);
    assert_eq!(rows[0]["tls_requirement"], "verified", "{}", rows[0]);
    assert_eq!(rows[0]["outcome"], "deferred", "{}", rows[0]);
    // RFC 8689 section 5: no TLS-protected session could be set up.
    assert_eq!(ev(&rows[0])["status"], "4.7.10", "{}", rows[0]);
    assert_eq!(mx.transactions(), 0);
    assert_eq!(mx.data_commands(), 0);
}

/// WKD from an HTTPS server we did not write (Python's `http.server`):
/// the key arrives chunked in small pieces on a kept-alive connection, and
/// a second recipient's lookup reuses nothing it should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wkd_key_from_an_independent_https_server_chunked_and_kept_alive() {
    use crate::world::pyhttps::{Mode, PyHttps};
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mx = w.mx(MxOptions::new("mx.example.test")).await;
    let gina = Gpg::new("Gina <gina@example.test>");
    let key = gina.run(&["--export", "gina@example.test"], None).stdout;
    let ip = gateway::fresh_ip();
    let host = "openpgpkey.example.test";
    w.zone.add_a(host, ip);
    let (c, k) =
        w.ca.issue(&[host])
            .write_chain(w.dir.path(), "wkd")
            .unwrap();
    let server = PyHttps::start(
        ip,
        443,
        &c,
        &k,
        &w.dir.path().join("wkd"),
        Mode::Chunked,
        "",
    )
    .await
    .unwrap();
    server.set_bytes(Mode::Chunked, &key).unwrap();
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    opts.extra = "[pgp]\nsources = [\"wkd\"]\n".into();
    let gw = Gateway::start(opts).unwrap();
    crate::common::python_send(
        gw.addr,
        "a@clinic.example.test",
        &["gina@example.test"],
        &crate::common::message("chunked wkd", "x"),
    )
    .unwrap();
    let got = mx.wait_for(1, WAIT).await.unwrap();
    assert!(
        gina.decrypt_mime(&got[0].data_str())
            .contains("Subject: chunked wkd")
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(
            |p| p.starts_with("/.well-known/openpgpkey/example.test/hu/") && p.ends_with("?l=gina")
        ),
        "{requests:?}"
    );
    let rows = gw.wait_audit(WAIT, |r| !r.is_empty()).await.unwrap();
    let ev: serde_json::Value =
        serde_json::from_str(rows[0]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(ev["decision"]["method"], "pgp", "{ev:#}");
}

/// The key store (in the audit database) unreachable at start: a
/// recipient whose rule names OpenPGP waits with the reason, never falls
/// to TLS as if it had no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_store_makes_openpgp_recipients_wait() {
    let w = World::new().await;
    w.domain("example.test", "mx.example.test");
    let mut opts = w.options();
    opts.policy = PGP_POLICY.into();
    let closed = gateway::free_port(std::net::Ipv4Addr::LOCALHOST);
    opts.database_url = Some(format!("postgres://postgres@127.0.0.1:{closed}/test"));
    let dir = tempfile::tempdir().unwrap();
    let config = gateway::write_config(dir.path(), &opts).unwrap();
    let out = std::process::Command::new(gateway::BIN)
        .args(["probe", "--json", "--config"])
        .arg(&config)
        .arg("bob@example.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v[0]["decision"];
    assert_eq!(d["action"], "wait", "{v:#}");
    assert!(
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("key store is unreachable")),
        "{v:#}"
    );
}

/// `check-config` opens the `[pgp]` key files, not only checks that they
/// exist: a signing key exported by GnuPG without its secret part and an
/// archive key file that is no key are both reported, each with its key,
/// in one run; the same files with the secret exported pass.
#[test]
fn check_config_refuses_unusable_pgp_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let clinic = Gpg::new("signing@clinic.example.test");
    let public_only = clinic.export("signing@clinic.example.test", dir.path());
    let garbage = dir.path().join("archive.asc");
    std::fs::write(
        &garbage,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n",
    )
    .unwrap();
    let key = dir.path().join("spool.key");
    let out = Command::new(gateway::BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        dir.path().join("policy.toml"),
        "[defaults]\nmethods = [\"tls\"]\n",
    )
    .unwrap();
    let config = dir.path().join("sealgate.toml");
    let write_config = |signing: &Path, archive: &Path| {
        std::fs::write(
            &config,
            format!(
                "[server]\nhostname = \"gateway.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"spool\"\nspool_key_file = \"spool.key\"\n[policy]\nfiles = [\"policy.toml\"]\n[pgp]\nadditional_decryption_key = {archive:?}\n[pgp.signing_keys]\n\"clinic.example.test\" = {signing:?}\n"
            ),
        )
        .unwrap()
    };
    let check = || crate::config_check::run_args(&["check-config"], &config);
    write_config(&public_only, &garbage);
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("pgp.signing_keys") && l.contains("no secret key material")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("pgp.additional_decryption_key") && l.contains("archive.asc")),
        "{text}"
    );
    assert!(text.contains("(2 problems)"), "{text}");

    let secret = clinic
        .run(
            &[
                "--armor",
                "--export-secret-keys",
                "signing@clinic.example.test",
            ],
            None,
        )
        .stdout;
    let secret_path = dir.path().join("clinic-secret.asc");
    std::fs::write(&secret_path, secret).unwrap();
    write_config(&secret_path, &public_only);
    let (ok, text) = check();
    assert!(ok, "{text}");
}
