//! Daemon load benchmark: the real `sealgate` binary between a pipelining
//! SMTP load client and an in-process SMTP sink, all on loopback.
//!
//! ```text
//! load client (C sessions) ──► sealgate serve ──► sink (smarthost)
//! ```
//!
//! Run with `cargo bench --bench load`. Knobs (environment variables):
//!
//! - `SEALGATE_LOAD_SESSIONS`  concurrent client sessions (default 50)
//! - `SEALGATE_LOAD_MESSAGES`  messages per size (default 2000)
//! - `SEALGATE_LOAD_SIZES`     comma-separated message sizes in bytes
//!   (default `10240,102400`)
//! - `SEALGATE_LOAD_TIMEOUT`   seconds allowed per size before the run is
//!   aborted (default 300)
//! - `SEALGATE_LOAD_KEEP=1`    keep the temporary folders (config, spool,
//!   audit database, `sealgate.log`) for inspection
//! - `SEALGATE_LOG`            log filter passed to the daemon (default
//!   `info,...` like the daemon's own default)
//!
//! Each size gets a fresh daemon, spool, audit database and sink, so the
//! peak RSS (VmHWM) is per size. Every socket is on 127.0.0.1; the daemon's
//! resolver is pointed at 127.0.0.1 too, so nothing leaves the machine.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_sealgate");

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- options

struct Options {
    sessions: usize,
    messages: usize,
    sizes: Vec<usize>,
    timeout: Duration,
    keep: bool,
}

fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| die(&format!("{name}={v:?} is not a number"))),
        Err(_) => default,
    }
}

fn options() -> Options {
    let sizes = match std::env::var("SEALGATE_LOAD_SIZES") {
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| die(&format!("SEALGATE_LOAD_SIZES: bad size {s:?}")))
            })
            .collect(),
        Err(_) => vec![10 * 1024, 100 * 1024],
    };
    let o = Options {
        sessions: env_num("SEALGATE_LOAD_SESSIONS", 50),
        messages: env_num("SEALGATE_LOAD_MESSAGES", 2000),
        sizes,
        timeout: Duration::from_secs(env_num("SEALGATE_LOAD_TIMEOUT", 300) as u64),
        keep: std::env::var("SEALGATE_LOAD_KEEP").is_ok_and(|v| v == "1"),
    };
    if o.sessions == 0 || o.messages == 0 || o.sizes.is_empty() {
        die("sessions, messages and sizes must be non-zero");
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("load bench: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------- sink

/// What the sink saw.
#[derive(Default)]
struct SinkStats {
    /// When each message's end of data arrived, in order.
    delivered: Vec<Instant>,
    connections: usize,
}

/// Starts the sink; accepts everything, counts messages.
async fn start_sink() -> Res<(SocketAddr, Arc<Mutex<SinkStats>>)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("sink bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let stats = Arc::new(Mutex::new(SinkStats::default()));
    let st = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                continue;
            };
            st.lock().unwrap().connections += 1;
            let st = st.clone();
            tokio::spawn(async move {
                let _ = sink_session(sock, st).await;
            });
        }
    });
    Ok((addr, stats))
}

/// Index just past `\r\n.\r\n` in `b`, if it is there.
fn end_of_data(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        let d = i + b[i..].iter().position(|&c| c == b'.')?;
        if d + 3 > b.len() {
            return None;
        }
        if d >= 2 && &b[d - 2..d] == b"\r\n" && &b[d + 1..d + 3] == b"\r\n" {
            return Some(d + 3);
        }
        i = d + 1;
    }
    None
}

async fn sink_session(sock: TcpStream, stats: Arc<Mutex<SinkStats>>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (mut r, mut w) = sock.into_split();
    w.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut in_data = false;
    let mut quit = false;
    loop {
        // Handle everything already buffered (pipelined commands).
        loop {
            if in_data {
                if let Some(end) = end_of_data(&buf) {
                    buf.drain(..end);
                    in_data = false;
                    stats.lock().unwrap().delivered.push(Instant::now());
                    out.extend_from_slice(b"250 2.0.0 ok\r\n");
                    continue;
                }
                // Keep only what could be the start of the terminator.
                let keep_from = buf.len().saturating_sub(5);
                buf.drain(..keep_from);
                break;
            }
            let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
                break;
            };
            let verb: [u8; 4] = {
                let mut v = [b' '; 4];
                for (d, s) in v.iter_mut().zip(buf[..nl].iter()) {
                    *d = s.to_ascii_uppercase();
                }
                v
            };
            buf.drain(..=nl);
            match &verb {
                b"EHLO" => out.extend_from_slice(
                    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n",
                ),
                b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => {
                    out.extend_from_slice(b"250 2.0.0 ok\r\n")
                }
                b"DATA" => {
                    out.extend_from_slice(b"354 go ahead\r\n");
                    in_data = true;
                    // The CRLF ending the DATA line starts the terminator
                    // search, so an empty body ends at a bare ".\r\n".
                    buf.splice(0..0, *b"\r\n");
                }
                b"QUIT" => {
                    out.extend_from_slice(b"221 2.0.0 bye\r\n");
                    quit = true;
                    break;
                }
                _ => out.extend_from_slice(b"502 5.5.1 not implemented\r\n"),
            }
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if r.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------- daemon

struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) -> Res<String> {
        let Some(mut c) = self.child.take() else {
            return Ok("not running".into());
        };
        let pid = c.id().to_string();
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill -TERM: {e}"))?;
        loop {
            if let Some(status) = c.try_wait().map_err(|e| e.to_string())? {
                return Ok(format!(
                    "{status} after {:.2}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                return Err("sealgate did not stop within 30s of SIGTERM (killed)".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write_config(
    dir: &Path,
    sink: SocketAddr,
    dns: SocketAddr,
    trust_anchor: &Path,
    sessions: usize,
) -> Res<PathBuf> {
    let max_sessions = (sessions * 4).max(1000);
    // Opportunistic TLS for everyone: the sink offers no STARTTLS, and
    // the body has nothing a PHI detector would fire on.
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"opportunistic\"\n",
    )
    .map_err(|e| format!("writing policy: {e}"))?;
    let text = format!(
        r#"[server]
hostname = "gateway.load.test"
listen = ["127.0.0.1:0"]
spool_dir = "spool"
spool_key_file = "spool.key"
max_sessions = {max_sessions}
max_sessions_per_ip = {max_sessions}

[relay]
allow_networks = ["127.0.0.1/32"]

[delivery]
smarthost = "{sink}"
# The sink speaks no TLS: the bench measures the mail path, not TLS.
smarthost_min_tls = "opportunistic"

[queue]
retry_base = "1s"
retry_max = "2s"

# Every lookup (recipient-domain probes) goes to the in-process DNS
# server on loopback, never to the machine's resolver.
[dns]
nameservers = ["{dns}"]
trust_anchor = {trust_anchor:?}
timeout = "2s"

[policy]
files = [{policy:?}]
"#
    );
    let path = dir.join("sealgate.toml");
    std::fs::write(&path, text).map_err(|e| format!("writing config: {e}"))?;
    Ok(path)
}

// ---------------------------------------------------------------- DNS

/// The integration tests' DNS server (DNSSEC-signed root, own trust anchor).
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/world/dns.rs"]
mod dns;

/// Recipient domain of the load: an insecure (unsigned) delegation under
/// the signed test root, like most real domains, with no MX, MTA-STS or
/// TLSA records. Delivery goes to the smarthost anyway.
const DEST_DOMAIN: &str = "dest.test";

async fn start_dns(dir: &Path) -> Res<(dns::DnsServer, PathBuf)> {
    let zone = dns::Zone::new();
    zone.set_default_ttl(300);
    zone.add_insecure_delegation(DEST_DOMAIN);
    let server = dns::DnsServer::try_start(zone)
        .await
        .map_err(|e| format!("starting the DNS server: {e:#}"))?;
    let anchor = server.write_trust_anchor(dir);
    Ok((server, anchor))
}

/// Keygen, config, start; returns once the daemon logged `sealgate started`.
fn start_daemon(
    dir: &Path,
    sink: SocketAddr,
    dns: SocketAddr,
    trust_anchor: &Path,
    sessions: usize,
) -> Res<(Daemon, SocketAddr)> {
    let config = write_config(dir, sink, dns, trust_anchor, sessions)?;
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.join("spool.key"))
        .output()
        .map_err(|e| format!("running {BIN}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let log = dir.join("sealgate.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let filter = std::env::var("SEALGATE_LOG").unwrap_or_else(|_| {
        "info,sqlx=warn,hickory_proto=warn,hickory_resolver=warn,rustls=warn".into()
    });
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SEALGATE_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| format!("starting sealgate: {e}"))?;
    let mut d = Daemon {
        child: Some(child),
        log: log.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("sealgate started")) {
            let start = line
                .find("listen=[")
                .ok_or_else(|| format!("no listen= in {line:?}"))?
                + "listen=[".len();
            let end = line[start..]
                .find([']', ','])
                .ok_or_else(|| format!("bad listen= in {line:?}"))?
                + start;
            let addr = line[start..end]
                .parse()
                .map_err(|e| format!("bad listen address in {line:?}: {e}"))?;
            return Ok((d, addr));
        }
        if let Some(c) = d.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                d.child = None;
                return Err(format!(
                    "sealgate exited ({status}) before starting:\n{text}"
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("sealgate did not start within 30s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (VmHWM, VmRSS) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU seconds of a process (`self` or a pid).
fn cpu_secs(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based) of the whole line.
    let Some(rest) = text.rfind(')').map(|i| &text[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SC_CLK_TCK is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------- client

#[derive(Default)]
struct ClientStats {
    accepted: usize,
    /// Wait for the reply after end of data.
    eod_latency: Vec<Duration>,
    /// MAIL written to the final 250.
    tx_latency: Vec<Duration>,
    last_accept: Option<Instant>,
    /// Non-success replies and errors, by kind.
    problems: BTreeMap<String, usize>,
    failed: usize,
    connects: usize,
}

struct Shared {
    addr: SocketAddr,
    next: AtomicUsize,
    total: usize,
    body: Vec<u8>,
    stats: Mutex<ClientStats>,
}

impl Shared {
    fn problem(&self, kind: String) {
        *self.stats.lock().unwrap().problems.entry(kind).or_default() += 1;
    }
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    line: String,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

impl Conn {
    /// One (possibly multi-line) reply: code and the last line.
    async fn reply(&mut self) -> std::io::Result<(u16, String)> {
        loop {
            self.line.clear();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.r.read_line(&mut self.line))
                .await
                .map_err(|_| std::io::Error::other("reply timeout"))??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let l = self.line.trim_end();
            let code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, l.to_string()));
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(16 * 1024, r),
            w,
            line: String::new(),
        };
        let (code, text) = c.reply().await.map_err(|e| format!("banner: {e}"))?;
        if code != 220 {
            return Err(format!("banner {}", short(&text)));
        }
        c.w.write_all(b"EHLO loadclient.test\r\n")
            .await
            .map_err(|e| format!("EHLO write: {e}"))?;
        let mut pipelining = false;
        loop {
            c.line.clear();
            c.r.read_line(&mut c.line)
                .await
                .map_err(|e| format!("EHLO reply: {e}"))?;
            let l = c.line.trim_end();
            if l.len() < 3 {
                return Err("EHLO reply: connection closed".into());
            }
            if !l.starts_with("250") {
                return Err(format!("EHLO {}", short(l)));
            }
            if l.get(4..)
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
            {
                pipelining = true;
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if !pipelining {
            return Err("the gateway does not offer PIPELINING".into());
        }
        Ok(c)
    }
}

/// The first words of a reply, for grouping.
fn short(reply: &str) -> String {
    reply
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

enum Outcome {
    Accepted {
        eod: Duration,
        tx: Duration,
    },
    /// Temporary refusal; the connection may still be usable.
    Temporary {
        reply: String,
        conn_ok: bool,
    },
    Permanent(String),
}

fn headers(i: usize) -> String {
    format!(
        "From: Load Client <load@client.test>\r\nTo: <rcpt{i}@{DEST_DOMAIN}>\r\nSubject: load test message {i}\r\nMessage-ID: <load-{i}@client.test>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
}

/// A plain-text body of about `size` bytes, lines of 76 characters, no dots.
fn body(size: usize) -> Vec<u8> {
    let target = size.saturating_sub(headers(0).len()).max(78);
    let mut b = Vec::with_capacity(target + 80);
    let mut x: u32 = 0x9e37_79b9;
    while b.len() + 78 <= target {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let c = (x % 27) as u8;
            b.push(if c == 26 { b' ' } else { b'a' + c });
        }
        b.extend_from_slice(b"\r\n");
    }
    b
}

async fn transaction(c: &mut Conn, sh: &Shared, i: usize) -> std::io::Result<Outcome> {
    let t0 = Instant::now();
    let cmds =
        format!("MAIL FROM:<load@client.test>\r\nRCPT TO:<rcpt{i}@{DEST_DOMAIN}>\r\nDATA\r\n");
    c.w.write_all(cmds.as_bytes()).await?;
    let (mail, mail_t) = c.reply().await?;
    let (rcpt, rcpt_t) = c.reply().await?;
    let (data, data_t) = c.reply().await?;
    if data != 354 {
        // Worst reply wins; a 421 means the server is closing.
        let (code, text) = [(mail, mail_t), (rcpt, rcpt_t), (data, data_t)]
            .into_iter()
            .find(|(code, _)| *code >= 400)
            .unwrap_or((data, "unexpected DATA reply".into()));
        return Ok(if (400..500).contains(&code) {
            Outcome::Temporary {
                reply: short(&text),
                conn_ok: code != 421,
            }
        } else {
            Outcome::Permanent(short(&text))
        });
    }
    let mut msg = headers(i).into_bytes();
    msg.extend_from_slice(&sh.body);
    msg.extend_from_slice(b".\r\n");
    c.w.write_all(&msg).await?;
    let eod_sent = Instant::now();
    let (code, text) = c.reply().await?;
    let now = Instant::now();
    Ok(match code {
        250 if mail == 250 && rcpt == 250 => Outcome::Accepted {
            eod: now - eod_sent,
            tx: now - t0,
        },
        400..=499 => Outcome::Temporary {
            reply: short(&text),
            conn_ok: code != 421,
        },
        _ => Outcome::Permanent(short(&text)),
    })
}

const MAX_ATTEMPTS: u32 = 20;

/// Give up when the sink has seen nothing new for this long.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// One client session: claims messages until all are taken, reconnecting
/// (and retrying the message) after temporary failures.
async fn client(sh: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= sh.total {
            break;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > MAX_ATTEMPTS {
                sh.stats.lock().unwrap().failed += 1;
                break;
            }
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect(sh.addr).await {
                    Ok(c) => {
                        sh.stats.lock().unwrap().connects += 1;
                        conn.insert(c)
                    }
                    Err(e) => {
                        sh.problem(e);
                        continue;
                    }
                },
            };
            match transaction(c, &sh, i).await {
                Ok(Outcome::Accepted { eod, tx }) => {
                    let mut s = sh.stats.lock().unwrap();
                    s.accepted += 1;
                    s.eod_latency.push(eod);
                    s.tx_latency.push(tx);
                    s.last_accept = Some(Instant::now());
                    break;
                }
                Ok(Outcome::Temporary { reply, conn_ok }) => {
                    sh.problem(reply);
                    if conn_ok {
                        if c.w.write_all(b"RSET\r\n").await.is_err() || c.reply().await.is_err() {
                            conn = None;
                        }
                    } else {
                        conn = None;
                    }
                }
                Ok(Outcome::Permanent(reply)) => {
                    sh.problem(reply);
                    sh.stats.lock().unwrap().failed += 1;
                    if c.w.write_all(b"RSET\r\n").await.is_err() || c.reply().await.is_err() {
                        conn = None;
                    }
                    break;
                }
                Err(e) => {
                    sh.problem(format!("i/o: {e}"));
                    conn = None;
                }
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.w.write_all(b"QUIT\r\n").await;
        let _ = c.reply().await;
    }
}

// ---------------------------------------------------------------- one run

struct RunResult {
    size: usize,
    sessions: usize,
    messages: usize,
    accepted: usize,
    failed: usize,
    delivered: usize,
    accept_secs: f64,
    deliver_secs: f64,
    eod_p50: Duration,
    eod_p99: Duration,
    tx_p50: Duration,
    peak_rss_kib: u64,
    daemon_cpu: f64,
    bench_cpu: f64,
    problems: BTreeMap<String, usize>,
    connects: usize,
    sink_connections: usize,
    dns_queries: usize,
    stop: String,
    log_summary: String,
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// Warnings, errors and other notable lines in the daemon's log.
fn summarise_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    for l in text.lines() {
        let level = if l.contains(" ERROR ") {
            Some("ERROR")
        } else if l.contains(" WARN ") {
            Some("WARN")
        } else {
            None
        };
        for (needle, name) in [
            ("message accepted", "message accepted"),
            ("delivery attempt", "delivery attempt"),
            ("delivery deferred", "delivery deferred"),
            ("no route", "no route"),
            ("bounce: ", "bounce (DSN queued)"),
            ("panicked", "panic"),
        ] {
            if l.contains(needle) {
                *counts.entry(name).or_default() += 1;
            }
        }
        for (field, name) in [
            (" deferred=", "attempt with deferred rcpt"),
            (" bounced=", "attempt with bounced rcpt"),
        ] {
            let n = l
                .split(field)
                .nth(1)
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if n > 0 {
                *counts.entry(name).or_default() += 1;
            }
        }
        if let Some(level) = level {
            *counts.entry(level).or_default() += 1;
            if examples.len() < 5 {
                examples.push(l.chars().take(300).collect());
            }
        }
    }
    let mut s = counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    for e in examples {
        s.push_str("\n    ");
        s.push_str(&e);
    }
    s
}

async fn run(o: &Options, size: usize) -> Res<RunResult> {
    let dir = tempfile::Builder::new()
        .prefix("sgload")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (sink_addr, sink) = start_sink().await?;
    let (dns, anchor) = start_dns(dir.path()).await?;
    let (mut daemon, addr) = start_daemon(dir.path(), sink_addr, dns.addr(), &anchor, o.sessions)?;
    let pid = daemon.pid();
    let cpu0 = cpu_secs(&pid.to_string());
    let self_cpu0 = cpu_secs("self");
    eprintln!(
        "load bench: size {size} B, {} messages, {} sessions; sealgate pid {pid} on {addr}, sink on {sink_addr}, dir {}",
        o.messages,
        o.sessions,
        dir.path().display()
    );

    let shared = Arc::new(Shared {
        addr,
        next: AtomicUsize::new(0),
        total: o.messages,
        body: body(size),
        stats: Mutex::new(ClientStats::default()),
    });
    let t0 = Instant::now();
    let deadline = t0 + o.timeout;
    let tasks: Vec<_> = (0..o.sessions)
        .map(|_| tokio::spawn(client(shared.clone())))
        .collect();
    for t in tasks {
        t.await.map_err(|e| format!("client task: {e}"))?;
    }
    let (accepted, failed, last_accept) = {
        let s = shared.stats.lock().unwrap();
        (s.accepted, s.failed, s.last_accept)
    };
    eprintln!(
        "load bench: {accepted} accepted in {:.2}s, waiting for delivery",
        last_accept.map_or(0.0, |t| (t - t0).as_secs_f64())
    );

    // Wait until the sink has every accepted message; give up when
    // nothing arrives for STALL_LIMIT or the run's time is over.
    let mut progress = (0, Instant::now(), Instant::now());
    let deliver_end = loop {
        let (n, at) = {
            let s = sink.lock().unwrap();
            (
                s.delivered.len(),
                s.delivered.get(accepted.saturating_sub(1)).copied(),
            )
        };
        if n >= accepted {
            break at.unwrap_or(t0);
        }
        if n != progress.0 {
            progress = (n, Instant::now(), Instant::now());
        } else if progress.2.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "load bench: delivery stalled at {n}/{accepted} for {:.0}s",
                progress.1.elapsed().as_secs_f64()
            );
            progress.2 = Instant::now();
        }
        let stalled = progress.1.elapsed() > STALL_LIMIT;
        if stalled || Instant::now() > deadline {
            let summary = summarise_log(&daemon.log);
            let stop = daemon.stop().unwrap_or_else(|e| e);
            let kept = dir.keep();
            return Err(format!(
                "{} with {n}/{accepted} accepted messages delivered; sealgate stop: {stop}\n  daemon log: {summary}\n  kept {} (sealgate.log, spool, audit db)",
                if stalled {
                    format!("no delivery progress for {}s", STALL_LIMIT.as_secs())
                } else {
                    format!("time limit of {}s reached", o.timeout.as_secs())
                },
                kept.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // A little grace to catch duplicate deliveries.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (peak_rss_kib, _) = rss_kib(pid);
    let daemon_cpu = cpu_secs(&pid.to_string()) - cpu0;
    let bench_cpu = cpu_secs("self") - self_cpu0;
    let stop = daemon.stop()?;
    let log_summary = summarise_log(&daemon.log);

    let mut s = shared.stats.lock().unwrap();
    let (delivered, sink_connections) = {
        let k = sink.lock().unwrap();
        (k.delivered.len(), k.connections)
    };
    let result = RunResult {
        size,
        sessions: o.sessions,
        messages: o.messages,
        accepted,
        failed,
        delivered,
        accept_secs: last_accept.map_or(0.0, |t| (t - t0).as_secs_f64()),
        deliver_secs: (deliver_end - t0).as_secs_f64(),
        eod_p50: percentile(&mut s.eod_latency, 0.50),
        eod_p99: percentile(&mut s.eod_latency, 0.99),
        tx_p50: percentile(&mut s.tx_latency, 0.50),
        peak_rss_kib,
        daemon_cpu,
        bench_cpu,
        problems: std::mem::take(&mut s.problems),
        connects: s.connects,
        sink_connections,
        dns_queries: dns.queries(),
        stop,
        log_summary,
    };
    if o.keep {
        let kept = dir.keep();
        eprintln!("load bench: kept {}", kept.display());
    }
    Ok(result)
}

// ---------------------------------------------------------------- main

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn rate(n: usize, secs: f64) -> String {
    if secs > 0.0 {
        format!("{:.0}", n as f64 / secs)
    } else {
        "-".into()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut results = Vec::new();
    for &size in &o.sizes {
        // Backstop: `run` enforces `o.timeout` itself while waiting for
        // delivery; this also bounds a hung client phase.
        let limit = o.timeout + Duration::from_secs(30);
        let outcome = rt.block_on(async { tokio::time::timeout(limit, run(&o, size)).await });
        match outcome {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => die(&format!("size {size}: {e}")),
            Err(_) => die(&format!(
                "size {size}: aborted after {}s (SEALGATE_LOAD_TIMEOUT + 30s); the daemon was killed",
                limit.as_secs()
            )),
        }
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n## sealgate load ({nproc} CPUs; client, sink and daemon share them; binary {BIN})\n"
    );
    let _ = writeln!(
        out,
        "| size | sessions | msgs | accepted | accepted msg/s | delivered msg/s | p50 250-after-DATA ms | p99 ms | p50 whole tx ms | peak RSS MiB | daemon CPU s | bench CPU s |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &results {
        let _ = writeln!(
            out,
            "| {} KiB | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.size / 1024,
            r.sessions,
            r.messages,
            r.accepted,
            rate(r.accepted, r.accept_secs),
            rate(r.accepted, r.deliver_secs),
            ms(r.eod_p50),
            ms(r.eod_p99),
            ms(r.tx_p50),
            r.peak_rss_kib as f64 / 1024.0,
            r.daemon_cpu,
            r.bench_cpu,
        );
    }
    let _ = writeln!(out);
    for r in &results {
        let _ = writeln!(
            out,
            "- {} KiB: accepted in {:.2}s, all delivered at {:.2}s; failed {}, sink saw {} messages over {} connections (duplicates: {}); client connections {}; DNS queries {}; stop: {}",
            r.size / 1024,
            r.accept_secs,
            r.deliver_secs,
            r.failed,
            r.delivered,
            r.sink_connections,
            r.delivered.saturating_sub(r.accepted),
            r.connects,
            r.dns_queries,
            r.stop,
        );
        if !r.problems.is_empty() {
            let p: Vec<String> = r
                .problems
                .iter()
                .map(|(k, v)| format!("{v}x {k}"))
                .collect();
            let _ = writeln!(out, "  - client saw: {}", p.join("; "));
        }
        let _ = writeln!(out, "  - daemon log: {}", r.log_summary);
    }
    let _ = out.flush();
}
