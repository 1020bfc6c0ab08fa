//! Backlog benchmark: the real `sealgate` binary started on a spool that
//! already holds a large deferred backlog, measured for memory, start-up,
//! the accept rate of new mail, and `queue list`.
//!
//! ```text
//! smtp-source ──► sealgate serve ──► smtp-sink (smarthost)
//!                   │
//!                   └── spool: N deferred messages, next attempt in 30 days
//! ```
//!
//! Run with `cargo bench --bench backlog`; for the README's million,
//! `SEALGATE_BACKLOG_MESSAGES=1000000 cargo bench --bench backlog` (about
//! 8 GiB of disk and two million inodes for the spool, and some minutes to
//! create it). Knobs (environment variables):
//!
//! - `SEALGATE_BACKLOG_MESSAGES` deferred messages written into the spool
//!   before the daemon starts (default 100000)
//! - `SEALGATE_BACKLOG_ACCEPT`   new messages sent by `smtp-source` per
//!   phase (default 5000)
//! - `SEALGATE_BACKLOG_SESSIONS` concurrent `smtp-source` sessions (default 20)
//! - `SEALGATE_BACKLOG_SIZE`     size of each new message in bytes (default 10240)
//! - `SEALGATE_BACKLOG_WINDOW`   `[queue] max_window` (default: the daemon's own)
//! - `SEALGATE_BACKLOG_BASELINE=0` skip the run on an empty spool
//! - `SEALGATE_BACKLOG_BIN`      the daemon binary (default: this build's), to
//!   compare another version on the same kind of spool
//! - `SEALGATE_BACKLOG_DIR`      parent folder of the run (default: the
//!   system temporary folder)
//! - `SEALGATE_BACKLOG_KEEP=1`   keep the run's folder
//!
//! Each run: the backlog is written with sealgate's own spool code (the
//! same files the daemon writes: content, envelope, fsyncs); the daemon
//! starts on it (start-up time and RSS); `smtp-source` (Postfix) sends new
//! mail, delivered to `smtp-sink` (accept rate; the backlog is not due, so
//! only the new mail moves); then `sealgate queue list --json` runs while
//! `smtp-source` sends again (list time, the CLI's peak RSS, the daemon's
//! RSS while listing, and the accept rate meanwhile). Everything is on
//! 127.0.0.1; the daemon's resolver is an in-process DNS server.

use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use sealgate::queue::{
    ClientInfo, QueueId, QueuedMessage, Recipient, RecipientStatus, Spool, SpoolKey,
};

const BIN: &str = env!("CARGO_BIN_EXE_sealgate");

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- options

struct Options {
    backlog: usize,
    accept: usize,
    sessions: usize,
    size: usize,
    window: Option<usize>,
    baseline: bool,
    bin: PathBuf,
    parent: PathBuf,
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
    let o = Options {
        backlog: env_num("SEALGATE_BACKLOG_MESSAGES", 100_000),
        accept: env_num("SEALGATE_BACKLOG_ACCEPT", 5000),
        sessions: env_num("SEALGATE_BACKLOG_SESSIONS", 20),
        size: env_num("SEALGATE_BACKLOG_SIZE", 10 * 1024),
        window: std::env::var("SEALGATE_BACKLOG_WINDOW")
            .ok()
            .map(|_| env_num("SEALGATE_BACKLOG_WINDOW", 0)),
        baseline: std::env::var("SEALGATE_BACKLOG_BASELINE").map_or(true, |v| v != "0"),
        bin: std::env::var_os("SEALGATE_BACKLOG_BIN")
            .map_or_else(|| PathBuf::from(BIN), PathBuf::from),
        parent: std::env::var_os("SEALGATE_BACKLOG_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from),
        keep: std::env::var("SEALGATE_BACKLOG_KEEP").is_ok_and(|v| v == "1"),
    };
    if o.accept == 0 || o.sessions == 0 || o.size == 0 {
        die("accept, sessions and size must be non-zero");
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("backlog bench: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------- backlog

/// Writes `n` deferred messages (next attempt in 30 days) into the spool,
/// `workers` at a time, as the daemon would have left them.
async fn write_backlog(spool: &Spool, n: usize, workers: usize) -> Res<Duration> {
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (spool, next) = (spool.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                write_deferred(&spool, i).await?;
                if (i + 1) % (n / 10).max(1) == 0 {
                    eprintln!(
                        "backlog bench: {} of {n} deferred messages written ({:.0}/s)",
                        i + 1,
                        (i + 1) as f64 / t0.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(t0.elapsed())
}

async fn write_deferred(spool: &Spool, i: usize) -> Res<()> {
    let now = Utc::now();
    let mut rcpt = Recipient::new(format!("rcpt{i}@{DEST_DOMAIN}"));
    rcpt.status = RecipientStatus::Deferred;
    rcpt.attempts = 1;
    rcpt.next_attempt = Some(now + chrono::Duration::days(30));
    rcpt.last_error = Some("451 4.4.1 next hop down (backlog bench)".into());
    rcpt.last_status = Some("4.4.1".into());
    let mut msg = QueuedMessage {
        id: QueueId::new(),
        received_at: now,
        sender: "load@client.test".into(),
        recipients: vec![rcpt],
        message_id: Some(format!("<backlog-{i}@client.test>")),
        size: 0,
        content_sha256: String::new(),
        body_8bit: false,
        smtputf8: false,
        client: ClientInfo {
            ip: "127.0.0.1".into(),
            helo: "client.test".into(),
            auth_user: None,
            tls: false,
            connector: None,
        },
        local: false,
        requiretls: false,
    };
    let body = format!(
        "From: <load@client.test>\r\nTo: <rcpt{i}@{DEST_DOMAIN}>\r\nSubject: backlog {i}\r\nMessage-ID: <backlog-{i}@client.test>\r\n\r\n{}\r\n",
        "queued while the next hop was down ".repeat(30)
    );
    let e = |e: sealgate::queue::SpoolError| e.to_string();
    let mut w = spool.create_content(&msg.id).await.map_err(e)?;
    w.write(body.as_bytes()).await.map_err(e)?;
    let (size, sha) = w.finish().await.map_err(e)?;
    msg.size = size;
    msg.content_sha256 = sha;
    spool.write_envelope(&msg).await.map_err(e)
}

// ---------------------------------------------------------------- processes

/// Recipient domain: an insecure delegation under the signed test root,
/// with no MX, MTA-STS or TLSA; delivery goes to the smarthost anyway.
const DEST_DOMAIN: &str = "dest.test";

/// The integration tests' DNS server (DNSSEC-signed root, own trust anchor).
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/world/dns.rs"]
mod dns;

/// A child process killed when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Res<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Postfix's `smtp-sink` counting messages into `counts`.
fn start_sink(dir: &Path) -> Res<(Proc, SocketAddr, PathBuf)> {
    let addr = free_port()?;
    let counts = dir.join("sink.counts");
    let out = std::fs::File::create(&counts).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("smtp-sink");
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .arg("-c")
        .arg(addr.to_string())
        .arg("256")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting smtp-sink (Debian package postfix): {e}"))?;
    let p = Proc(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("smtp-sink did not listen on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, addr, counts))
}

/// Messages the sink has received (its `-c` counters: `... mesg=N`).
fn sink_count(counts: &Path) -> usize {
    let text = std::fs::read_to_string(counts).unwrap_or_default();
    text.rsplit("mesg=")
        .next()
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn write_config(
    o: &Options,
    dir: &Path,
    sink: SocketAddr,
    dns: SocketAddr,
    anchor: &Path,
) -> Res<PathBuf> {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\nmethods = [\"tls\"]\nmin_tls = \"opportunistic\"\n",
    )
    .map_err(|e| format!("writing policy: {e}"))?;
    let window = o
        .window
        .map(|w| format!("max_window = {w}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"[server]
hostname = "gateway.backlog.test"
listen = ["127.0.0.1:0"]
spool_dir = "spool"
spool_key_file = "spool.key"
max_sessions = 1000
max_sessions_per_ip = 1000

[relay]
allow_networks = ["127.0.0.1/32"]

[delivery]
smarthost = "{sink}"
# The sink speaks no TLS: the bench measures the mail path, not TLS.
smarthost_min_tls = "opportunistic"

[queue]
retry_base = "1s"
retry_max = "2s"
{window}
[dns]
nameservers = ["{dns}"]
trust_anchor = {anchor:?}
timeout = "2s"

[policy]
files = [{policy:?}]
"#
    );
    let path = dir.join("sealgate.toml");
    std::fs::write(&path, text).map_err(|e| format!("writing config: {e}"))?;
    Ok(path)
}

/// Starts the daemon; returns it, its SMTP address and the start-up time
/// (until it logs `sealgate started`).
fn start_daemon(o: &Options, dir: &Path, config: &Path) -> Res<(Proc, SocketAddr, Duration)> {
    let log = dir.join("sealgate.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let child = Command::new(&o.bin)
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "SEALGATE_LOG",
            "info,sqlx=warn,hickory_proto=warn,hickory_resolver=warn,rustls=warn",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", o.bin.display()))?;
    let mut p = Proc(Some(child));
    let deadline = t0 + Duration::from_secs(1800);
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
            return Ok((p, addr, t0.elapsed()));
        }
        if let Some(c) = p.0.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                p.0 = None;
                return Err(format!(
                    "sealgate exited ({status}) before starting:\n{text}"
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("sealgate did not start within 30 min:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then wait for the exit; returns how long it took.
fn stop_daemon(mut p: Proc) -> Res<Duration> {
    let Some(mut c) = p.0.take() else {
        return Err("not running".into());
    };
    let t0 = Instant::now();
    Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .map_err(|e| format!("kill -TERM: {e}"))?;
    loop {
        if c.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = c.kill();
            let _ = c.wait();
            return Err("sealgate did not stop within 120 s of SIGTERM (killed)".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (VmHWM, VmRSS) of a process in KiB.
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

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Sends `n` messages with `smtp-source`; returns the time it took.
fn smtp_source(o: &Options, addr: SocketAddr, n: usize) -> Res<Duration> {
    let t0 = Instant::now();
    let out = Command::new("smtp-source")
        .args(["-s", &o.sessions.to_string()])
        .args(["-m", &n.to_string()])
        .args(["-l", &o.size.to_string()])
        .args(["-f", "load@client.test"])
        .args(["-t", &format!("rcpt@{DEST_DOMAIN}")])
        .args(["-M", "client.test"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running smtp-source (Debian package postfix): {e}"))?;
    let took = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "smtp-source failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// Waits until the sink has `n` messages; returns when it got there.
fn wait_sink(counts: &Path, n: usize, limit: Duration) -> Res<Instant> {
    let t0 = Instant::now();
    loop {
        let got = sink_count(counts);
        if got >= n {
            return Ok(Instant::now());
        }
        if t0.elapsed() > limit {
            return Err(format!("the sink got {got} of {n} messages in {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `queue list --json` did: wall time, messages listed, the CLI's
/// peak RSS (KiB).
struct Listed {
    took: Duration,
    messages: usize,
    bytes: u64,
    cli_peak_kib: u64,
}

/// Runs `sealgate queue list --json`, counting what it prints.
fn queue_list(config: &Path) -> Res<Listed> {
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .args(["queue", "list", "--json", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("queue list: {e}"))?;
    let stdout = child.stdout.take().ok_or("queue list: no stdout")?;
    let (mut messages, mut bytes) = (0, 0u64);
    // Each element of the pretty-printed array opens with a line `  {`.
    for line in std::io::BufReader::with_capacity(1 << 16, stdout).split(b'\n') {
        let line = line.map_err(|e| format!("reading queue list: {e}"))?;
        bytes += line.len() as u64 + 1;
        if line == b"  {" {
            messages += 1;
        }
    }
    let (status, peak) = wait_with_peak(&mut child)?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!("queue list failed ({status}): {err}"));
    }
    Ok(Listed {
        took: t0.elapsed(),
        messages,
        bytes,
        cli_peak_kib: peak,
    })
}

/// Reaps `child` with `wait4`, which also reports its peak RSS (KiB).
fn wait_with_peak(child: &mut Child) -> Res<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: wait4 writes only into the two locals passed by pointer, and
    // `pid` is our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    Ok((
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss.max(0) as u64,
    ))
}

/// Samples a process's VmRSS until `done`; returns the largest (KiB).
fn sample_rss(pid: u32, done: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    while !done.load(Ordering::Relaxed) {
        peak.fetch_max(rss_kib(pid).1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- one run

struct RunResult {
    backlog: usize,
    write_secs: f64,
    start: Duration,
    queued_logged: String,
    rss_started: (u64, u64),
    accept: Duration,
    delivered: Duration,
    rss_after_accept: (u64, u64),
    list: Listed,
    accept_during_list: Duration,
    rss_during_list: u64,
    hwm_end: u64,
    stop: Duration,
    cpu_secs: f64,
}

fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = text.rfind(')').map(|i| &text[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn run(o: &Options, rt: &tokio::runtime::Runtime, backlog: usize) -> Res<RunResult> {
    let dir = tempfile::Builder::new()
        .prefix("sgbacklog")
        .tempdir_in(&o.parent)
        .map_err(|e| format!("temporary folder in {}: {e}", o.parent.display()))?;
    let d = dir.path();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(d.join("spool.key"))
        .output()
        .map_err(|e| format!("running {BIN}: {e}"))?;
    if !out.status.success() {
        return Err(format!("keygen: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let key = SpoolKey::load(&d.join("spool.key")).map_err(|e| e.to_string())?;
    let write_secs = {
        let spool = Spool::open(&d.join("spool"), key).map_err(|e| e.to_string())?;
        eprintln!(
            "backlog bench: writing {backlog} deferred messages into {}",
            d.display()
        );
        rt.block_on(write_backlog(&spool, backlog, 32))?
            .as_secs_f64()
    };
    // Cold caches would measure the disk, not the daemon; drop nothing, but
    // let the writeback settle.
    let _ = Command::new("sync").status();

    let (dns, anchor) = rt.block_on(async {
        let zone = dns::Zone::new();
        zone.set_default_ttl(300);
        zone.add_insecure_delegation(DEST_DOMAIN);
        let server = dns::DnsServer::try_start(zone)
            .await
            .map_err(|e| format!("starting the DNS server: {e:#}"))?;
        let anchor = server.write_trust_anchor(d);
        Ok::<_, String>((server, anchor))
    })?;
    let (_sink, sink_addr, counts) = start_sink(d)?;
    let config = write_config(o, d, sink_addr, dns.addr(), &anchor)?;
    let (daemon, addr, start) = start_daemon(o, d, &config)?;
    let pid = daemon.pid();
    let log = std::fs::read_to_string(d.join("sealgate.log")).unwrap_or_default();
    let queued_logged = log
        .lines()
        .find(|l| l.contains("sealgate started"))
        .and_then(|l| l.split("queued=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    let rss_started = rss_kib(pid);
    eprintln!(
        "backlog bench: started in {:.2}s with queued={queued_logged}, RSS {} MiB; sending {} messages",
        start.as_secs_f64(),
        mib(rss_started.1),
        o.accept
    );

    let t_send = Instant::now();
    let accept = smtp_source(o, addr, o.accept)?;
    let delivered_at = wait_sink(&counts, o.accept, Duration::from_secs(600))?;
    let delivered = delivered_at - t_send;
    let rss_after_accept = rss_kib(pid);

    eprintln!("backlog bench: queue list while smtp-source sends again");
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || sample_rss(pid, done, peak))
    };
    let lister = {
        let config = config.clone();
        std::thread::spawn(move || queue_list(&config))
    };
    let accept_during_list = smtp_source(o, addr, o.accept)?;
    let list = lister
        .join()
        .map_err(|_| "queue list thread panicked".to_string())??;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    wait_sink(&counts, 2 * o.accept, Duration::from_secs(600))?;
    let hwm_end = rss_kib(pid).0;
    let cpu = cpu_secs(pid);
    let stop = stop_daemon(daemon)?;
    if o.keep {
        let kept = dir.keep();
        eprintln!("backlog bench: kept {}", kept.display());
    }
    Ok(RunResult {
        backlog,
        write_secs,
        start,
        queued_logged,
        rss_started,
        accept,
        delivered,
        rss_after_accept,
        list,
        accept_during_list,
        rss_during_list: peak.load(Ordering::Relaxed),
        hwm_end,
        stop,
        cpu_secs: cpu,
    })
}

// ---------------------------------------------------------------- main

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64().max(1e-9))
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("tokio runtime: {e}")));
    let mut sizes = Vec::new();
    if o.baseline && o.backlog > 0 {
        sizes.push(0);
    }
    sizes.push(o.backlog);
    let mut results = Vec::new();
    for &n in &sizes {
        match run(&o, &rt, n) {
            Ok(r) => results.push(r),
            Err(e) => die(&format!("backlog {n}: {e}")),
        }
    }
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n## sealgate with a deferred backlog ({nproc} CPUs shared by smtp-source, smtp-sink and the daemon; daemon {}; {} new messages of {} B per phase, {} sessions)\n",
        o.bin.display(),
        o.accept,
        o.size,
        o.sessions
    );
    let _ = writeln!(
        out,
        "| backlog | start s | RSS started MiB | accepted msg/s | delivered msg/s | RSS after MiB | queue list s | listed | CLI peak RSS MiB | daemon RSS while listing MiB | accepted msg/s while listing | daemon peak RSS MiB |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &results {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
            r.backlog,
            r.start.as_secs_f64(),
            mib(r.rss_started.1),
            rate(o.accept, r.accept),
            rate(o.accept, r.delivered),
            mib(r.rss_after_accept.1),
            r.list.took.as_secs_f64(),
            r.list.messages,
            mib(r.list.cli_peak_kib),
            mib(r.rss_during_list),
            rate(o.accept, r.accept_during_list),
            mib(r.hwm_end),
        );
    }
    let _ = writeln!(out);
    for r in &results {
        let _ = writeln!(
            out,
            "- backlog {}: written in {:.1}s; daemon logged queued={}; listing {} MiB in {:.2}s (smtp-source during it took {:.2}s); stop {:.2}s; daemon CPU {:.1}s",
            r.backlog,
            r.write_secs,
            r.queued_logged,
            r.list.bytes / (1024 * 1024),
            r.list.took.as_secs_f64(),
            r.accept_during_list.as_secs_f64(),
            r.stop.as_secs_f64(),
            r.cpu_secs,
        );
    }
    let _ = out.flush();
}
