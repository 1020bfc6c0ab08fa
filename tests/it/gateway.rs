//! Runs the real `sealgate` binary on loopback with a throwaway config,
//! spool and audit database.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const BIN: &str = env!("CARGO_BIN_EXE_sealgate");

/// What the test world needs the gateway configured with.
#[derive(Clone)]
pub struct GatewayOptions {
    pub allow_networks: Vec<String>,
    pub dns: Option<SocketAddr>,
    pub delivery_port: u16,
    pub smarthost: Option<String>,
    pub extra_ca: Option<PathBuf>,
    pub trust_anchor: Option<PathBuf>,
    pub database_url: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub users: Vec<(String, String)>,
    /// Extra lines inside `[server]`.
    pub server_extra: String,
    /// Extra lines inside `[relay]`.
    pub relay_extra: String,
    /// Extra lines inside `[queue]`.
    pub queue_extra: String,
    /// Extra lines inside `[delivery]`.
    pub delivery_extra: String,
    /// Extra tables appended at the end.
    pub extra: String,
    pub retry_base: String,
    pub retry_max: String,
    pub max_age: String,
    /// The policy file (the mail-path tests relay with opportunistic TLS).
    pub policy: String,
    /// Spool folder (default: `spool` in the gateway's folder).
    pub spool_dir: Option<PathBuf>,
    /// Listening address (default: a free port on 127.0.0.1).
    pub listen: Option<SocketAddr>,
}

/// A policy for the mail-path tests: every recipient over opportunistic
/// TLS, so delivery mechanics can be tested without DANE or MTA-STS.
pub const OPPORTUNISTIC_POLICY: &str =
    "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"opportunistic\"\nphi_min_tls = \"verified\"\n";

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            allow_networks: vec!["127.0.0.1/32".into()],
            dns: None,
            delivery_port: 25,
            smarthost: None,
            extra_ca: None,
            trust_anchor: None,
            database_url: None,
            tls: None,
            users: Vec::new(),
            server_extra: String::new(),
            relay_extra: String::new(),
            queue_extra: String::new(),
            delivery_extra: String::new(),
            extra: String::new(),
            retry_base: "1s".into(),
            retry_max: "2s".into(),
            max_age: "5d".into(),
            policy: OPPORTUNISTIC_POLICY.into(),
            spool_dir: None,
            listen: None,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    spool: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

impl Gateway {
    /// Writes the config and starts the daemon.
    pub fn start(opts: GatewayOptions) -> Result<Gateway> {
        let dir = tempfile::Builder::new().prefix("sg").tempdir()?;
        let config = write_config(dir.path(), &opts)?;
        let key = dir.path().join("spool.key");
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()?;
        if !out.status.success() {
            bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let spool = opts
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let mut g = Gateway {
            spool,
            dir,
            config,
            addr: "127.0.0.1:1".parse()?,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        };
        g.spawn()?;
        Ok(g)
    }

    /// Starts (again) on the same config, spool and database.
    pub fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env(
                "SEALGATE_LOG",
                "debug,hickory_proto=warn,hickory_resolver=warn,sqlx=warn,rustls=warn,h2=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sealgate")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("sealgate started") {
                    let _ = tx.send(line.clone());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("sealgate did not start:\n{}", self.log());
            }
        };
        let start = line.find("listen=[").context("no listen in start line")? + "listen=[".len();
        let end = line[start..].find([']', ',']).context("bad listen")? + start;
        self.addr = line[start..end].parse()?;
        self.child = Some(child);
        Ok(())
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`HUP`, `TERM`...) to the daemon.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() {
                        bail!("sealgate exited with {status}:\n{}", self.log());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("sealgate did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Runs a CLI subcommand against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(&self.config);
        cmd.output().expect("running sealgate")
    }

    /// The audit rows, via `sealgate audit export --format json`.
    pub fn audit_rows(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cli(&["audit", "export", "--format", "json"]);
        if !out.status.success() {
            bail!(
                "audit export failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["rows"].as_array().cloned().unwrap_or_default())
    }

    /// The queue, via `sealgate queue list --json`.
    pub fn queue(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cli(&["queue", "list", "--json"]);
        if !out.status.success() {
            bail!(
                "queue list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice::<Vec<serde_json::Value>>(
            &out.stdout,
        )?)
    }

    /// Waits until `cond` holds on the audit rows.
    pub async fn wait_audit(
        &self,
        timeout: Duration,
        cond: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.audit_rows().unwrap_or_default();
            if cond(&rows) {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                bail!(
                    "audit rows never matched; rows: {rows:#?}\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the queue is empty.
    pub async fn wait_queue_empty(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queue()?.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "queue never emptied: {:#?}\nlog:\n{}",
                    self.queue()?,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn write_config(dir: &Path, o: &GatewayOptions) -> Result<PathBuf> {
    let mut s = String::new();
    let listen = o
        .listen
        .map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    let spool = o
        .spool_dir
        .as_ref()
        .map_or("spool".to_string(), |p| p.display().to_string());
    s.push_str(&format!(
        "[server]\nhostname = \"gateway.example.test\"\nlisten = [{}]\n",
        q(&listen)
    ));
    s.push_str(&format!(
        "spool_dir = {}\nspool_key_file = \"spool.key\"\n",
        q(&spool)
    ));
    s.push_str(&o.server_extra);
    s.push('\n');
    for (name, hash) in &o.users {
        s.push_str(&format!(
            "[[server.users]]\nname = {}\npassword_hash = {}\n",
            q(name),
            q(hash)
        ));
    }
    if let Some((cert, key)) = &o.tls {
        s.push_str(&format!(
            "[server.tls]\ncert = {}\nkey = {}\n",
            q(&cert.display().to_string()),
            q(&key.display().to_string())
        ));
    }
    let nets: Vec<String> = o.allow_networks.iter().map(|n| q(n)).collect();
    s.push_str(&format!(
        "[relay]\nallow_networks = [{}]\n",
        nets.join(", ")
    ));
    s.push_str(&o.relay_extra);
    s.push('\n');
    s.push_str(&format!("[delivery]\nport = {}\nconnect_timeout = \"5s\"\ncommand_timeout = \"10s\"\ndata_timeout = \"20s\"\n", o.delivery_port));
    if let Some(sh) = &o.smarthost {
        s.push_str(&format!("smarthost = {}\n", q(sh)));
    }
    s.push_str(&o.delivery_extra);
    s.push('\n');
    s.push_str(&format!(
        "[queue]\nretry_base = {}\nretry_max = {}\nmax_age = {}\n",
        q(&o.retry_base),
        q(&o.retry_max),
        q(&o.max_age)
    ));
    s.push_str(&o.queue_extra);
    s.push('\n');
    if let Some(dns) = o.dns {
        s.push_str(&format!(
            "[dns]\nnameservers = [{}]\ntimeout = \"2s\"\n",
            q(&dns.to_string())
        ));
        if let Some(ta) = &o.trust_anchor {
            s.push_str(&format!(
                "trust_anchor = {}\n",
                q(&ta.display().to_string())
            ));
        }
    }
    if let Some(ca) = &o.extra_ca {
        s.push_str(&format!(
            "[tls]\nextra_ca = [{}]\n",
            q(&ca.display().to_string())
        ));
    }
    if let Some(url) = &o.database_url {
        s.push_str(&format!("[audit]\ndatabase_url = {}\n", q(url)));
    }
    std::fs::create_dir_all(dir.join("policy.d"))?;
    std::fs::write(dir.join("policy.d/policy.toml"), &o.policy)?;
    s.push_str("[policy]\nfiles = [\"policy.d/*.toml\"]\n");
    s.push_str("[probe]\ntimeout = \"3s\"\ncache_ttl = \"1m\"\n");
    s.push_str(&o.extra);
    let path = dir.join("sealgate.toml");
    std::fs::write(&path, s)?;
    Ok(path)
}

/// A fresh loopback IP for a test's MX hosts, so tests running in
/// parallel never share an address:port, within this process or across
/// processes: each process holds an exclusive lock on one of 128 blocks
/// of 127.x.0.0/16 (a lock file, released when the process ends), and
/// counts through its block.
pub fn fresh_ip() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 250 hosts (.2 to .251) in each of 256 /24s.
    assert!(n < 250 * 256, "this test process used up its address block");
    std::net::Ipv4Addr::new(127, 10 + ip_block(), (n / 250) as u8, (2 + n % 250) as u8)
}

/// This process's block number (0..128), claimed once.
fn ip_block() -> u8 {
    static BLOCK: std::sync::OnceLock<(u8, std::fs::File)> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            for b in 0..128u8 {
                let path = std::env::temp_dir().join(format!("sealgate-it-ip-block-{b}.lock"));
                let Ok(file) = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                else {
                    continue;
                };
                if file.try_lock().is_ok() {
                    return (b, file);
                }
            }
            panic!("all 128 loopback address blocks are taken by other test processes")
        })
        .0
}

/// A free TCP port on `ip`.
pub fn free_port(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
