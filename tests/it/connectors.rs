//! Cloud connectors (`[[relay.connectors]]`): relay bound to an
//! organisation by a client certificate and the tenant header, driven by
//! independent clients (Python's smtplib over OpenSSL, swaks).

use std::path::{Path, PathBuf};

use crate::common::{WAIT, World};
use crate::gateway::{Gateway, GatewayOptions};
use crate::world::{MxOptions, Script, TestCa, TestCert, TestMx};

const TENANT: &str = "0b6c2a2e-1111-4222-8333-444455556666";
const OTHER_TENANT: &str = "ffffffff-9999-4888-8777-666655554444";
const M365_NAME: &str = "eur01.mail.protection.outlook.com";

/// A gateway with one `m365` connector whose roots are a private CA
/// (standing in for Microsoft's), and an MX for `example.test` that defers
/// `later@example.test` so a message stays queued for inspection.
struct Setup {
    w: World,
    gw: Gateway,
    mx: TestMx,
    /// The connector's CA.
    partner: TestCa,
    certs: PathBuf,
}

impl Setup {
    async fn start(allow_networks: &[&str]) -> Setup {
        let w = World::new().await;
        w.domain("example.test", "mx.example.test");
        let mx = w
            .mx(MxOptions::new("mx.example.test")
                .rcpt_script("later@example.test", Script::always(451, "4.2.1 try later")))
            .await;
        let certs = w.dir.path().join("certs");
        let partner = TestCa::new("partner connector CA");
        // A folder of roots, as an operator would keep them.
        let roots = w.dir.path().join("connector-roots");
        partner.write_pem(&roots).unwrap();
        let server = w.ca.issue(&["gateway.example.test"]);
        let (cert, key) = server.write(w.dir.path(), "gw").unwrap();
        let mut opts: GatewayOptions = w.options();
        opts.allow_networks = allow_networks.iter().map(|s| s.to_string()).collect();
        opts.tls = Some((cert, key));
        opts.extra = format!(
            "[[relay.connectors]]\nname = \"m365\"\nclient_cert_names = [\"*.mail.protection.outlook.com\", \"relay.hospital.example\"]\nclient_cert_roots = [{:?}]\ntenant_id = \"{TENANT}\"\n",
            roots.display().to_string()
        );
        let gw = Gateway::start(opts).unwrap();
        Setup {
            w,
            gw,
            mx,
            partner,
            certs,
        }
    }

    fn write(&self, cert: &TestCert, stem: &str) -> (PathBuf, PathBuf) {
        cert.write_chain(&self.certs, stem).unwrap()
    }

    /// One transaction with smtplib: STARTTLS (unless `cert` is `Plain`),
    /// MAIL, RCPT for each recipient, DATA if any was accepted.
    fn send(&self, cert: ClientCert<'_>, rcpts: &[&str], headers: &str) -> Outcome {
        let (tls, cert, key) = match cert {
            ClientCert::Plain => ("plain", String::new(), String::new()),
            ClientCert::None => ("tls", String::new(), String::new()),
            ClientCert::Files(c, k) => ("tls", c.display().to_string(), k.display().to_string()),
        };
        let msg = format!(
            "{headers}From: a@hospital.example\r\nTo: b@example.test\r\nSubject: connector test\r\nMessage-ID: <{}@hospital.example>\r\n\r\nbody\r\n",
            fastrand::u64(..)
        );
        python_session(
            self.gw.addr,
            &self.w.ca_file,
            tls,
            &cert,
            &key,
            rcpts,
            msg.as_bytes(),
        )
    }
}

enum ClientCert<'a> {
    /// No STARTTLS at all.
    Plain,
    /// STARTTLS without a client certificate.
    None,
    Files(&'a Path, &'a Path),
}

#[derive(Debug)]
struct Outcome {
    rcpt: Vec<(u16, String)>,
    data: Option<(u16, String)>,
}

fn python_session(
    addr: std::net::SocketAddr,
    server_ca: &Path,
    tls: &str,
    cert: &str,
    key: &str,
    rcpts: &[&str],
    msg: &[u8],
) -> Outcome {
    let script = r#"
import json, smtplib, ssl, sys
host, port, ca, tls, cert, key, rcpts = sys.argv[1:8]
data = sys.stdin.buffer.read()
s = smtplib.SMTP(host, int(port), timeout=20)
s.ehlo('connector.example.test')
if tls == 'tls':
    ctx = ssl.create_default_context(cafile=ca)
    # The gateway is reached by address; the chain is still verified.
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    s.starttls(context=ctx)
    s.ehlo('connector.example.test')
out = {'rcpt': [], 'data': None}
code, text = s.mail('a@hospital.example')
assert code == 250, (code, text)
for r in rcpts.split(','):
    code, text = s.rcpt(r)
    out['rcpt'].append([code, text.decode()])
if any(c == 250 for c, _ in out['rcpt']):
    code, text = s.data(data)
    out['data'] = [code, text.decode()]
s.quit()
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .arg(server_ca)
        .args([tls, cert, key, &rcpts.join(",")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pair = |p: &serde_json::Value| {
        (
            p[0].as_u64().unwrap() as u16,
            p[1].as_str().unwrap().to_string(),
        )
    };
    Outcome {
        rcpt: v["rcpt"].as_array().unwrap().iter().map(pair).collect(),
        data: (!v["data"].is_null()).then(|| pair(&v["data"])),
    }
}

fn tenant(id: &str) -> String {
    format!("X-MS-Exchange-CrossTenant-Id: {id}\r\n")
}

fn assert_refused_at_rcpt(o: &Outcome, case: &str) {
    assert_eq!(o.rcpt.len(), 1, "{case}: {o:?}");
    assert_eq!(o.rcpt[0].0, 550, "{case}: {o:?}");
    assert!(o.rcpt[0].1.starts_with("5.7.1"), "{case}: {o:?}");
    assert!(o.data.is_none(), "{case}: {o:?}");
}

fn assert_refused_at_data(o: &Outcome, case: &str) {
    assert!(o.rcpt.iter().all(|r| r.0 == 250), "{case}: {o:?}");
    let data = o.data.as_ref().unwrap_or_else(|| panic!("{case}: {o:?}"));
    assert_eq!(data.0, 550, "{case}: {o:?}");
    assert!(data.1.starts_with("5.7.1"), "{case}: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_certificate_relays_only_for_its_tenant() {
    // Loopback is not in allow_networks: the certificate is the only way in.
    let s = Setup::start(&["10.0.0.0/8"]).await;
    let good = s.partner.issue(&[M365_NAME]);
    let (good_c, good_k) = s.write(&good, "good");

    // The right certificate and tenant: accepted, delivered, and the queued
    // message records the connector.
    let o = s.send(
        ClientCert::Files(&good_c, &good_k),
        &["b@example.test", "later@example.test"],
        &tenant(TENANT),
    );
    assert_eq!(o.rcpt.iter().map(|r| r.0).collect::<Vec<_>>(), [250, 250]);
    assert_eq!(o.data.as_ref().map(|d| d.0), Some(250), "{o:?}");
    let got = s.mx.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_str().contains("connector test"));
    let queued = s.gw.queue().unwrap();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(
        queued[0]["message"]["client"]["connector"], "m365",
        "{queued:#?}"
    );

    // The tenant id is compared case-insensitively (Exchange writes GUIDs
    // in lowercase, operators paste them either way).
    let o = s.send(
        ClientCert::Files(&good_c, &good_k),
        &["b@example.test"],
        &tenant(&TENANT.to_uppercase()),
    );
    assert_eq!(o.data.as_ref().map(|d| d.0), Some(250), "{o:?}");

    // The same certificate for another tenant, none, or a second, forged value.
    let cases = [
        ("another tenant", tenant(OTHER_TENANT)),
        ("no tenant header", String::new()),
        (
            "empty tenant header",
            "X-MS-Exchange-CrossTenant-Id:\r\n".into(),
        ),
        (
            "two different tenant headers",
            format!("{}{}", tenant(TENANT), tenant(OTHER_TENANT)),
        ),
        (
            "forged value first",
            format!("{}{}", tenant(OTHER_TENANT), tenant(TENANT)),
        ),
    ];
    for (case, headers) in cases {
        let o = s.send(
            ClientCert::Files(&good_c, &good_k),
            &["b@example.test"],
            &headers,
        );
        assert_refused_at_data(&o, case);
    }

    // A certificate from the connector's CA with a name that is not the
    // connector's: refused at RCPT.
    for (case, names) in [
        ("other name", vec!["mx.other.test"]),
        (
            "two labels under the wildcard",
            vec!["a.eur01.mail.protection.outlook.com"],
        ),
        (
            "the wildcard's own domain",
            vec!["mail.protection.outlook.com"],
        ),
        (
            "suffix trick",
            vec!["eur01.mail.protection.outlook.com.evil.test"],
        ),
    ] {
        let cert = s.partner.issue(&names);
        let (c, k) = s.write(&cert, "other-name");
        let o = s.send(
            ClientCert::Files(&c, &k),
            &["b@example.test"],
            &tenant(TENANT),
        );
        assert_refused_at_rcpt(&o, case);
    }

    // The right name from a CA the connector does not trust, and an
    // expired certificate from the right CA: refused at RCPT, and the log
    // says the chain did not verify (so the certificate was seen).
    let rogue = TestCa::new("rogue CA").issue(&[M365_NAME]);
    let (c, k) = s.write(&rogue, "rogue");
    let o = s.send(
        ClientCert::Files(&c, &k),
        &["b@example.test"],
        &tenant(TENANT),
    );
    assert_refused_at_rcpt(&o, "untrusted CA");
    let expired = s.partner.issue_expired(&[M365_NAME]);
    let (c, k) = s.write(&expired, "expired");
    let o = s.send(
        ClientCert::Files(&c, &k),
        &["b@example.test"],
        &tenant(TENANT),
    );
    assert_refused_at_rcpt(&o, "expired certificate");
    let log = s.gw.log();
    assert_eq!(
        log.matches("does not verify against its roots").count(),
        2,
        "{log}"
    );

    // No certificate, with or without TLS, from a network not in
    // allow_networks: the tenant header alone proves nothing.
    let o = s.send(ClientCert::None, &["b@example.test"], &tenant(TENANT));
    assert_refused_at_rcpt(&o, "TLS without a certificate");
    let o = s.send(ClientCert::Plain, &["b@example.test"], &tenant(TENANT));
    assert_refused_at_rcpt(&o, "no TLS");

    // Only the two accepted messages reached the MX (b@ twice).
    assert_eq!(s.mx.messages().len(), 2, "{:#?}", s.mx.messages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_the_name_only_in_its_common_name_is_accepted() {
    let s = Setup::start(&[]).await;
    let cn_only = s
        .partner
        .issue_with(&["relay.hospital.example"], |p| p.subject_alt_names.clear())
        .unwrap();
    let (c, k) = s.write(&cn_only, "cn-only");
    let o = s.send(
        ClientCert::Files(&c, &k),
        &["b@example.test"],
        &tenant(TENANT),
    );
    assert_eq!(o.data.as_ref().map(|d| d.0), Some(250), "{o:?}");
    s.mx.wait_for(1, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_leave_other_clients_alone_but_bind_their_own_certificate() {
    // Loopback is an allowed network here.
    let s = Setup::start(&["127.0.0.0/8"]).await;
    // An on-prem server with a self-signed certificate (as a default
    // Exchange install has) still gets TLS and relays by its network; swaks
    // is the client.
    let own = crate::world::pki::self_signed(&["exchange.hospital.example"]);
    let (c, k) = s.write(&own, "self-signed");
    let out = std::process::Command::new("swaks")
        .args(["--server", &s.gw.addr.ip().to_string()])
        .args(["--port", &s.gw.addr.port().to_string()])
        .args(["--from", "a@hospital.example", "--to", "b@example.test"])
        .args(["--helo", "exchange.hospital.example", "--tls"])
        .arg("--tls-cert")
        .arg(&c)
        .arg("--tls-key")
        .arg(&k)
        .args([
            "--header",
            "Subject: from on-prem",
            "--body",
            "on-prem body",
        ])
        .output()
        .expect("swaks is installed (deploy/test installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    // And without any certificate.
    let o = s.send(ClientCert::None, &["b@example.test"], "");
    assert_eq!(o.data.as_ref().map(|d| d.0), Some(250), "{o:?}");
    s.mx.wait_for(2, WAIT).await.unwrap();

    // A client whose certificate is the connector's gets the tenant check
    // even from an allowed network: the cloud's other tenants share it.
    let good = s.partner.issue(&[M365_NAME]);
    let (c, k) = s.write(&good, "good");
    let o = s.send(
        ClientCert::Files(&c, &k),
        &["b@example.test"],
        &tenant(OTHER_TENANT),
    );
    assert_refused_at_data(&o, "another tenant from an allowed network");
    assert_eq!(s.mx.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connectors_are_refused_by_check_config_and_serve() {
    let ca = TestCa::new("gateway CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca
        .issue(&["gateway.example.test"])
        .write(dir.path(), "gw")
        .unwrap();
    let keygen = std::process::Command::new(crate::gateway::BIN)
        .args(["keygen", "--out"])
        .arg(dir.path().join("spool.key"))
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let empty = dir.path().join("empty-roots");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("README"), "not a certificate").unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let head = format!(
        "[server]\nhostname = \"gateway.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"spool\"\nspool_key_file = \"spool.key\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let connector = |roots: &Path, extra: &str| {
        format!(
            "{head}[[relay.connectors]]\nname = \"m365\"\nclient_cert_names = [\"relay.hospital.example\"]\nclient_cert_roots = [{:?}]\n{extra}",
            roots.display().to_string()
        )
    };
    let cases = [
        // Roots that exist but hold nothing usable (found when loading).
        (
            connector(&empty, ""),
            vec!["relay.connectors `m365`", "hold no CA certificate"],
        ),
        (
            connector(&junk, ""),
            vec!["relay.connectors `m365`", "junk.pem"],
        ),
        // Values refused with their line.
        (
            connector(&empty, "tenant_id = \"not-a-guid\"\n"),
            vec!["bad.toml:13", "relay.connectors.tenant_id"],
        ),
        (
            format!(
                "{head}[[relay.connectors]]\nname = \"m365\"\nclient_cert_names = [\"*.outlook.com\"]\nclient_cert_roots = [{:?}]\n",
                empty.display().to_string()
            ),
            vec!["bad.toml:10", "Microsoft 365", "tenant_id"],
        ),
        (
            format!(
                "{head}[[relay.connectors]]\nname = \"m365\"\nclient_cert_names = [\"a*.hospital.example\"]\nclient_cert_roots = [\"/nonexistent/roots.pem\"]\n",
            ),
            vec![
                "bad.toml:11",
                "relay.connectors.client_cert_names",
                "bad.toml:12",
                "relay.connectors.client_cert_roots",
            ],
        ),
    ];
    let path = dir.path().join("bad.toml");
    for (text, wants) in cases {
        std::fs::write(&path, &text).unwrap();
        for verb in ["check-config", "serve"] {
            let out = std::process::Command::new(crate::gateway::BIN)
                .args([verb, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{verb} accepted:\n{text}");
            for want in &wants {
                assert!(err.contains(want), "{verb}: want {want}: {err}");
            }
        }
    }
}
