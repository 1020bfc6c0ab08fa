//! A complete small world for one test: DNS on loopback, a private CA, MX
//! hosts on a fresh loopback address, and a gateway configured to use them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::gateway::{self, Gateway, GatewayOptions};
use crate::world::{DnsServer, MxOptions, TestCa, TestMx, Zone};

pub struct World {
    pub dns: DnsServer,
    pub zone: Zone,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn new() -> World {
        let zone = Zone::new();
        let dns = DnsServer::start(zone.clone()).await;
        let ip = gateway::fresh_ip();
        let port = gateway::free_port(ip);
        let ca = TestCa::new("sealgate test CA");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.write_pem(dir.path()).unwrap();
        World {
            dns,
            zone,
            ip,
            port,
            ca,
            ca_file,
            dir,
        }
    }

    /// `domain` MX 10 `host`, `host` A the world's address.
    pub fn domain(&self, domain: &str, host: &str) {
        self.zone.add_mx(domain, 10, host);
        self.zone.add_a(host, self.ip);
    }

    /// A plain MX on the world's address and port.
    pub async fn mx(&self, opts: MxOptions) -> TestMx {
        TestMx::start(opts.ip(self.ip).port(self.port)).await
    }

    /// An MX offering STARTTLS with a certificate from the private CA.
    pub async fn tls_mx(&self, host: &str, opts: MxOptions) -> TestMx {
        let cert = self.ca.issue(&[host]);
        self.mx(opts.tls(&cert)).await
    }

    pub fn options(&self) -> GatewayOptions {
        let trust_anchor = self.dns.write_trust_anchor(self.dir.path());
        GatewayOptions {
            dns: Some(self.dns.addr()),
            delivery_port: self.port,
            extra_ca: Some(self.ca_file.clone()),
            trust_anchor: Some(trust_anchor),
            ..Default::default()
        }
    }

    pub fn gateway(&self) -> Result<Gateway> {
        Gateway::start(self.options())
    }
}

pub const WAIT: Duration = Duration::from_secs(30);

/// A small message.
pub fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Dr. A <a@clinic.example.test>\r\nTo: b@example.test\r\nSubject: {subject}\r\nMessage-ID: <{}@clinic.example.test>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n",
        subject.len()
    )
    .into_bytes()
}

/// Sends with Python's smtplib (a real, independent SMTP client).
pub fn python_send(
    addr: std::net::SocketAddr,
    from: &str,
    to: &[&str],
    msg: &[u8],
) -> Result<String> {
    let script = r#"
import smtplib, sys
host, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[4].split(',')
data = sys.stdin.buffer.read()
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo('client.example.test')
refused = s.sendmail(sender, rcpts, data)
print('refused', refused)
s.quit()
"#;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
            from,
            &to.join(","),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(msg)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `message` with Python's `email` package (a parser we did not
/// write, `policy.default`, strict about defects) and prints its MIME
/// tree, one line per part: depth, content type, its parameters sorted,
/// and any parsing defects; then what `extra` (Python, with `msg` bound)
/// prints. Fails if Python does.
pub fn python_mime_tree(message: &[u8], extra: &str) -> String {
    let script = format!(
        r#"
import sys, email, email.policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
def walk(part, depth):
    params = sorted((k, v) for k, v in part['content-type'].params.items()) if part['content-type'] else []
    print(depth, part.get_content_type(), params, [type(d).__name__ for d in part.defects])
    if part.is_multipart():
        for p in part.iter_parts():
            walk(p, depth + 1)
walk(msg, 0)
{extra}
"#
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python email failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
