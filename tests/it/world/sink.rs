//! Postfix's `smtp-sink` as a next hop: an SMTP server we did not write.
//! It reads bare LF as a line end (as much of the internet does), so any
//! content that left sealgate with a lone LF before a dot would end its
//! DATA early and show up here as a broken or extra message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One transaction as `smtp-sink -d` dumped it.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as received (line ends as the sink wrote them: LF).
    pub data: String,
}

/// A running `smtp-sink`.
pub struct Sink {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Sink {
    /// Starts `smtp-sink` on `addr`, dumping every transaction to a file.
    pub fn start(addr: SocketAddr) -> Result<Sink> {
        let dir = tempfile::Builder::new().prefix("sink").tempdir()?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let template = format!("{}/%s.", dir.path().display());
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let bin = ["/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("smtp-sink");
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(["-d", &template])
            .arg(addr.to_string())
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting smtp-sink (Debian package postfix)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("smtp-sink did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Sink {
            child: Some(child),
            addr,
            dir,
        })
    }

    /// Stops the sink (its dumps stay readable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Every transaction dumped so far.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.files()
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|text| parse_dump(&text))
            .collect()
    }

    /// Waits until at least `n` transactions were dumped.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<SinkMessage>> {
        let deadline = Instant::now() + timeout;
        while self.files().len() < n {
            if Instant::now() > deadline {
                bail!("smtp-sink got {} of {n} messages", self.files().len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A dump is written as the data arrives; give the last one a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(self.messages())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_dump(text: &str) -> SinkMessage {
    let mut m = SinkMessage {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: String::new(),
    };
    let mut rest = text;
    while let Some((line, tail)) = rest.split_once('\n') {
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            m.mail_from = angle(v);
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            m.rcpt_to.push(angle(v));
        } else if !line.starts_with("X-Client-") && !line.starts_with("X-Helo-Args") {
            break;
        }
        rest = tail;
    }
    m.data = rest.to_string();
    m
}

fn angle(v: &str) -> String {
    let v = v.split_whitespace().next().unwrap_or("");
    v.trim_start_matches('<').trim_end_matches('>').to_string()
}
