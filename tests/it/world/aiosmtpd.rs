//! aiosmtpd (Python's asyncio SMTP server, `apt-get install python3-aiosmtpd`)
//! as a next hop we did not write: it stores every message it accepts in a
//! Maildir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running `python3 -m aiosmtpd` with the Maildir handler.
pub struct Aiosmtpd {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub maildir: PathBuf,
}

/// The interpreter that has aiosmtpd: the one on `PATH`, else the
/// system's (Debian installs the package for /usr/bin/python3 only).
fn interpreter() -> Result<&'static str> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python);
        }
    }
    bail!("aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)")
}

impl Aiosmtpd {
    /// Starts on `addr` and waits (bounded) until it accepts connections.
    pub async fn start(addr: SocketAddr, maildir: &Path) -> Result<Aiosmtpd> {
        Aiosmtpd::start_with(addr, maildir, None).await
    }

    /// Starts with STARTTLS offered and required before MAIL (aiosmtpd's
    /// `--tlscert`/`--tlskey`): a client that stays in plaintext gets
    /// "530 Must issue a STARTTLS command first".
    pub async fn start_tls(
        addr: SocketAddr,
        maildir: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Aiosmtpd> {
        Aiosmtpd::start_with(addr, maildir, Some((cert, key))).await
    }

    async fn start_with(
        addr: SocketAddr,
        maildir: &Path,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Aiosmtpd> {
        let mut cmd = Command::new(interpreter()?);
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &addr.to_string()]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        let mut child = cmd
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting aiosmtpd")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("aiosmtpd on {addr} exited at start: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("aiosmtpd on {addr} did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Aiosmtpd {
            child: Some(child),
            addr,
            maildir: maildir.to_path_buf(),
        })
    }

    /// Every message delivered so far (the Maildir's `new/`).
    pub fn messages(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Waits until at least `n` messages arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!(
                    "aiosmtpd on {}: {} message(s) after {timeout:?}, wanted {n}",
                    self.addr,
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the kernel closes its connections, as when a next hop
    /// crashes or restarts.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        self.kill();
    }
}
