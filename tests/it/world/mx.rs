//! A scriptable SMTP server ("remote MX") recording every message it accepts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::Io;
use super::pki::TestCert;

/// An SMTP reply: code and text (the text may contain `\n` for a multi-line reply;
/// it should normally start with an enhanced status code, e.g. `"4.3.0 try later"`).
///
/// Special codes: `0` = close the connection without replying; `421` = reply, then close.
pub type Reply = (u16, String);

/// A reply sequence by attempt number: attempt 1 gets `seq[0]`, ... and once the sequence
/// is exhausted `then` (or the server default when `then` is None).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub seq: Vec<Reply>,
    pub then: Option<Reply>,
}

impl Script {
    /// Always reply `code text`.
    pub fn always(code: u16, text: &str) -> Self {
        Script {
            seq: vec![],
            then: Some((code, text.to_string())),
        }
    }

    /// These replies for the first attempts, then the default (accept).
    /// E.g. `Script::first([(451, "4.3.0 try again")])`.
    pub fn first<S: Into<String>>(replies: impl IntoIterator<Item = (u16, S)>) -> Self {
        Script {
            seq: replies.into_iter().map(|(c, t)| (c, t.into())).collect(),
            then: None,
        }
    }

    /// Reply used after the sequence is exhausted.
    pub fn then(mut self, code: u16, text: &str) -> Self {
        self.then = Some((code, text.to_string()));
        self
    }

    /// Reply for 1-based `attempt` (None = server default).
    pub fn reply(&self, attempt: usize) -> Option<Reply> {
        attempt
            .checked_sub(1)
            .and_then(|i| self.seq.get(i).cloned())
            .or_else(|| self.then.clone())
    }
}

/// `(address, 1-based attempt) -> Some(reply)` to override the default reply.
pub type AddrReplyFn = Arc<dyn Fn(&str, usize) -> Option<Reply> + Send + Sync>;
/// `(message as it would be recorded, 1-based attempt) -> Some(reply)`.
pub type DataReplyFn = Arc<dyn Fn(&Received, usize) -> Option<Reply> + Send + Sync>;

/// Which TLS versions the server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    #[default]
    Tls12And13,
    Tls12Only,
    Tls13Only,
}

/// Options for [`TestMx`]. Build with `MxOptions::new("mx1.example.test")` and the
/// builder methods; all fields are public too.
#[derive(Clone)]
pub struct MxOptions {
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Address to listen on (default 127.0.0.1; any 127.0.0.0/8 address works on Linux,
    /// so several MXs can share one port on different loopback addresses).
    pub ip: IpAddr,
    /// Port (0 = random).
    pub port: u16,
    /// Certificate and key for STARTTLS (the chain is presented).
    pub tls: Option<TestCert>,
    /// Advertise/accept STARTTLS (only effective with `tls` set).
    pub offer_starttls: bool,
    pub tls_versions: TlsVersions,
    /// Advertise `SIZE n` and enforce it.
    pub size: Option<usize>,
    /// Extra EHLO keywords (e.g. "SMTPUTF8", "REQUIRETLS").
    pub extra_ehlo: Vec<String>,
    /// Greeting reply instead of `220 <hostname> ESMTP`. A non-2xx greeting other than
    /// 421/0 makes the server answer 503 to everything but QUIT.
    pub greeting: Option<Reply>,
    pub greeting_delay: Option<Duration>,
    /// Reply to EHLO instead of the capability list (e.g. 502 to force HELO).
    pub ehlo_reply: Option<Reply>,
    /// MAIL FROM override (attempt = global count of MAIL commands).
    pub mail_reply: Option<AddrReplyFn>,
    /// RCPT TO override (attempt counted per recipient, case-insensitively).
    pub rcpt_reply: Option<AddrReplyFn>,
    /// Reply after the end of DATA (attempt = global count of completed DATA phases).
    pub data_reply: Option<DataReplyFn>,
    /// Sleep this long before the reply after the end of DATA.
    pub data_reply_delay: Option<Duration>,
    /// Idle timeout waiting for a command / data line; then `421` and close.
    pub idle_timeout: Duration,
    /// Close the connection right after each reply to the end of DATA (as
    /// an MTA whose idle timer fires, or that restarts, between messages).
    pub hang_up_after_data: bool,
}

impl std::fmt::Debug for MxOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxOptions")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("offer_starttls", &self.offer_starttls)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Default for MxOptions {
    fn default() -> Self {
        Self::new("mx.example.test")
    }
}

impl MxOptions {
    pub fn new(hostname: &str) -> Self {
        MxOptions {
            hostname: hostname.to_string(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            tls: None,
            offer_starttls: true,
            tls_versions: TlsVersions::default(),
            size: None,
            extra_ehlo: vec![],
            greeting: None,
            greeting_delay: None,
            ehlo_reply: None,
            mail_reply: None,
            rcpt_reply: None,
            data_reply: None,
            data_reply_delay: None,
            idle_timeout: Duration::from_secs(60),
            hang_up_after_data: false,
        }
    }

    pub fn ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.ip = ip.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Enables STARTTLS with this certificate.
    pub fn tls(mut self, cert: &TestCert) -> Self {
        self.tls = Some(cert.clone());
        self
    }

    /// Sets `offer_starttls` (false: never advertise/accept STARTTLS even with a cert).
    pub fn offer_starttls(mut self, offer: bool) -> Self {
        self.offer_starttls = offer;
        self
    }

    pub fn tls_versions(mut self, v: TlsVersions) -> Self {
        self.tls_versions = v;
        self
    }

    pub fn size(mut self, n: usize) -> Self {
        self.size = Some(n);
        self
    }

    pub fn ehlo_keyword(mut self, kw: &str) -> Self {
        self.extra_ehlo.push(kw.to_string());
        self
    }

    pub fn greeting(mut self, code: u16, text: &str) -> Self {
        self.greeting = Some((code, text.to_string()));
        self
    }

    pub fn greeting_delay(mut self, d: Duration) -> Self {
        self.greeting_delay = Some(d);
        self
    }

    pub fn ehlo_reply(mut self, code: u16, text: &str) -> Self {
        self.ehlo_reply = Some((code, text.to_string()));
        self
    }

    pub fn mail_reply(
        mut self,
        f: impl Fn(&str, usize) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        self.mail_reply = Some(Arc::new(f));
        self
    }

    /// MAIL FROM replies by global attempt number.
    pub fn mail_script(self, s: Script) -> Self {
        self.mail_reply(move |_, n| s.reply(n))
    }

    /// Replaces the RCPT closure (called for every recipient).
    pub fn rcpt_reply(
        mut self,
        f: impl Fn(&str, usize) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        self.rcpt_reply = Some(Arc::new(f));
        self
    }

    /// Script for one recipient (case-insensitive), layered over any earlier
    /// `rcpt_reply`/`rcpt_script`.
    pub fn rcpt_script(mut self, addr: &str, s: Script) -> Self {
        let addr = addr.to_ascii_lowercase();
        let prev = self.rcpt_reply.take();
        self.rcpt_reply = Some(Arc::new(move |a: &str, n: usize| {
            if a.eq_ignore_ascii_case(&addr) {
                s.reply(n)
            } else {
                prev.as_ref().and_then(|p| p(a, n))
            }
        }));
        self
    }

    pub fn data_reply(
        mut self,
        f: impl Fn(&Received, usize) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        self.data_reply = Some(Arc::new(f));
        self
    }

    /// End-of-DATA replies by global attempt number, e.g.
    /// `Script::first([(451, "4.3.0 later")])`: first 451, then 250.
    pub fn data_script(self, s: Script) -> Self {
        self.data_reply(move |_, n| s.reply(n))
    }

    pub fn data_reply_delay(mut self, d: Duration) -> Self {
        self.data_reply_delay = Some(d);
        self
    }

    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets `hang_up_after_data`.
    pub fn hang_up_after_data(mut self) -> Self {
        self.hang_up_after_data = true;
        self
    }
}

/// TLS parameters of a session after STARTTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: rustls::ProtocolVersion,
    /// SNI sent by the client, if any.
    pub sni: Option<String>,
    pub cipher_suite: Option<rustls::CipherSuite>,
}

/// A message the server accepted (2xx after DATA).
#[derive(Clone, Debug)]
pub struct Received {
    /// Reverse-path without angle brackets ("" for the null sender).
    pub mail_from: String,
    /// ESMTP parameters of MAIL FROM (e.g. "SIZE=123", "BODY=8BITMIME").
    pub mail_params: Vec<String>,
    /// Accepted recipients, without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// Message content, dot-unstuffed, without the final CRLF.CRLF.
    pub data: Vec<u8>,
    pub tls: Option<TlsInfo>,
    /// Argument of the last EHLO/HELO.
    pub helo: String,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
    /// 1-based connection number (see [`TestMx::connections`]).
    pub conn_id: usize,
    pub peer: SocketAddr,
}

impl Received {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Value of the first header named `name` (case-insensitive, unfolded, trimmed).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.data_str();
        let mut found: Option<String> = None;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                break;
            }
            if let Some(v) = found.as_mut() {
                if line.starts_with(' ') || line.starts_with('\t') {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case(name)
            {
                found = Some(v.trim().to_string());
            }
        }
        found
    }
}

#[derive(Default)]
struct State {
    connections: usize,
    transactions: usize,
    data_commands: usize,
    tls_ok: usize,
    tls_failed: usize,
    mail_attempts: usize,
    data_attempts: usize,
    rcpt_attempts: HashMap<String, usize>,
    messages: Vec<Received>,
    transcript: Vec<(usize, String)>,
}

struct Shared {
    opts: MxOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Mutex<State>,
    count_tx: watch::Sender<usize>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running test SMTP server. Dropping it stops the server and its connections.
pub struct TestMx {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for TestMx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for TestMx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMx")
            .field("addr", &self.addr)
            .field("hostname", &self.shared.opts.hostname)
            .finish()
    }
}

impl TestMx {
    /// Starts on `<opts.ip>:<opts.port>` (default 127.0.0.1, random port). Panics on
    /// failure.
    pub async fn start(opts: MxOptions) -> TestMx {
        Self::try_start(opts).await.expect("starting test MX")
    }

    /// Starts on a given port.
    pub async fn start_on(port: u16, opts: MxOptions) -> Result<TestMx> {
        Self::try_start(opts.port(port)).await
    }

    pub async fn try_start(opts: MxOptions) -> Result<TestMx> {
        let tls = match &opts.tls {
            Some(cert) => {
                let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.tls_versions
                {
                    TlsVersions::Tls12And13 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                    TlsVersions::Tls12Only => &[&rustls::version::TLS12],
                    TlsVersions::Tls13Only => &[&rustls::version::TLS13],
                };
                let cfg = rustls::ServerConfig::builder_with_provider(super::pki::provider())
                    .with_protocol_versions(versions)?
                    .with_no_client_auth()
                    .with_single_cert(cert.chain_der(), cert.private_key())?;
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
            }
            None => None,
        };
        let listener = TcpListener::bind((opts.ip, opts.port)).await?;
        let addr = listener.local_addr()?;
        let (count_tx, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            opts,
            tls,
            state: Mutex::new(State::default()),
            count_tx,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TestMx { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hostname(&self) -> &str {
        &self.shared.opts.hostname
    }

    /// Accepted messages so far.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.state().messages.clone()
    }

    /// Waits until at least `n` messages were accepted; returns all of them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let mut rx = self.shared.count_tx.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        match res {
            Ok(Ok(_)) => Ok(self.messages()),
            _ => {
                let got = self.messages();
                bail!(
                    "{}: timed out after {timeout:?} waiting for {n} message(s), got {}; transcript:\n{}",
                    self.shared.opts.hostname,
                    got.len(),
                    self.transcript_text()
                )
            }
        }
    }

    /// Polls `cond` every 10 ms until it holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&TestMx) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: condition not met within {timeout:?}; transcript:\n{}",
                    self.shared.opts.hostname,
                    self.transcript_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// MAIL FROM commands answered 2xx.
    pub fn transactions(&self) -> usize {
        self.shared.state().transactions
    }

    /// DATA commands received (whatever the reply).
    pub fn data_commands(&self) -> usize {
        self.shared.state().data_commands
    }

    /// Successful STARTTLS handshakes.
    pub fn tls_handshakes(&self) -> usize {
        self.shared.state().tls_ok
    }

    /// Failed STARTTLS handshakes.
    pub fn tls_failures(&self) -> usize {
        self.shared.state().tls_failed
    }

    /// RCPT TO attempts for `addr` (case-insensitive).
    pub fn rcpt_attempts(&self, addr: &str) -> usize {
        self.shared
            .state()
            .rcpt_attempts
            .get(&addr.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Every command line received (outside DATA content), with its connection number.
    pub fn transcript(&self) -> Vec<(usize, String)> {
        self.shared.state().transcript.clone()
    }

    /// Command lines (uppercased verb only, e.g. "EHLO", "MAIL", "QUIT") in order.
    pub fn verbs(&self) -> Vec<String> {
        self.transcript()
            .into_iter()
            .map(|(_, l)| l.split(' ').next().unwrap_or("").to_ascii_uppercase())
            .collect()
    }

    fn transcript_text(&self) -> String {
        self.transcript()
            .iter()
            .map(|(c, l)| format!("  [{c}] {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut children = JoinSet::new();
    loop {
        while children.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let conn_id = {
            let mut st = shared.state();
            st.connections += 1;
            st.connections
        };
        let shared = shared.clone();
        children.spawn(async move {
            let _ = session(stream, peer, conn_id, shared).await;
        });
    }
}

type Conn = BufReader<Box<dyn Io>>;

const MAX_LINE: u64 = 1 << 20;

enum Line {
    Eof,
    TooLong,
    TimedOut,
    Text(Vec<u8>),
}

async fn read_line(rd: &mut Conn, idle: Duration) -> Line {
    let mut buf = Vec::new();
    let fut = async {
        let mut limited = (&mut *rd).take(MAX_LINE);
        limited.read_until(b'\n', &mut buf).await
    };
    match tokio::time::timeout(idle, fut).await {
        Err(_) => Line::TimedOut,
        Ok(Err(_)) | Ok(Ok(0)) => Line::Eof,
        Ok(Ok(n)) => {
            if !buf.ends_with(b"\n") {
                if n as u64 >= MAX_LINE {
                    Line::TooLong
                } else {
                    // EOF in the middle of a line
                    Line::Eof
                }
            } else {
                Line::Text(buf)
            }
        }
    }
}

async fn send(rd: &mut Conn, code: u16, text: &str) -> std::io::Result<()> {
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{l}\r\n"));
    }
    let w = rd.get_mut();
    w.write_all(out.as_bytes()).await?;
    w.flush().await
}

/// What to do after a scripted reply.
enum Flow {
    Continue,
    Close,
}

async fn send_reply(rd: &mut Conn, r: &Reply) -> std::io::Result<Flow> {
    match r.0 {
        0 => Ok(Flow::Close),
        421 => {
            send(rd, r.0, &r.1).await?;
            Ok(Flow::Close)
        }
        _ => {
            send(rd, r.0, &r.1).await?;
            Ok(Flow::Continue)
        }
    }
}

struct Tx {
    mail_from: String,
    mail_params: Vec<String>,
    rcpts: Vec<String>,
}

/// Parses `FROM:<addr> params` / `TO:<addr> params` (after the verb).
fn parse_path(arg: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let arg = arg.trim_start();
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg.get(prefix.len()..)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let addr = rest[..end].to_string();
    let params = rest[end + 1..]
        .split_ascii_whitespace()
        .map(|s| s.to_string())
        .collect();
    Some((addr, params))
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: usize,
    shared: Arc<Shared>,
) -> Result<()> {
    let opts = &shared.opts;
    let _ = stream.set_nodelay(true);
    let mut rd: Conn = BufReader::new(Box::new(stream) as Box<dyn Io>);

    if let Some(d) = opts.greeting_delay {
        tokio::time::sleep(d).await;
    }
    let mut reject_all = false;
    match &opts.greeting {
        Some(g) => {
            if let Flow::Close = send_reply(&mut rd, g).await? {
                return Ok(());
            }
            reject_all = !(200..300).contains(&g.0);
        }
        None => {
            send(
                &mut rd,
                220,
                &format!("{} ESMTP sealgate-test", opts.hostname),
            )
            .await?
        }
    }

    let mut helo: Option<(String, bool)> = None;
    let mut tls: Option<TlsInfo> = None;
    let mut tx: Option<Tx> = None;

    loop {
        let raw = match read_line(&mut rd, opts.idle_timeout).await {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                send(&mut rd, 500, "5.5.2 Line too long").await?;
                return Ok(());
            }
            Line::TimedOut => {
                send(&mut rd, 421, "4.4.2 Idle timeout").await?;
                return Ok(());
            }
            Line::Text(l) => l,
        };
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        shared.state().transcript.push((conn_id, line.clone()));
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };

        if reject_all {
            if verb == "QUIT" {
                send(&mut rd, 221, "2.0.0 Bye").await?;
                return Ok(());
            }
            send(&mut rd, 503, "5.5.1 No service").await?;
            continue;
        }

        match verb.as_str() {
            "EHLO" | "HELO" => {
                if arg.trim().is_empty() {
                    send(&mut rd, 501, "5.5.4 Domain required").await?;
                    continue;
                }
                if verb == "EHLO"
                    && let Some(r) = &opts.ehlo_reply
                {
                    if let Flow::Close = send_reply(&mut rd, r).await? {
                        return Ok(());
                    }
                    continue;
                }
                tx = None;
                let esmtp = verb == "EHLO";
                helo = Some((arg.trim().to_string(), esmtp));
                if !esmtp {
                    send(&mut rd, 250, &opts.hostname).await?;
                    continue;
                }
                let mut lines = vec![format!("{} greets {}", opts.hostname, arg.trim())];
                lines.push("PIPELINING".into());
                lines.push("8BITMIME".into());
                lines.push("ENHANCEDSTATUSCODES".into());
                if let Some(n) = opts.size {
                    lines.push(format!("SIZE {n}"));
                }
                if shared.tls.is_some() && opts.offer_starttls && tls.is_none() {
                    lines.push("STARTTLS".into());
                }
                lines.extend(opts.extra_ehlo.iter().cloned());
                send(&mut rd, 250, &lines.join("\n")).await?;
            }
            "STARTTLS" => {
                if tls.is_some() {
                    send(&mut rd, 503, "5.5.1 TLS already active").await?;
                    continue;
                }
                let acceptor = match (&shared.tls, opts.offer_starttls) {
                    (Some(a), true) => a.clone(),
                    _ => {
                        send(&mut rd, 502, "5.5.1 STARTTLS not available").await?;
                        continue;
                    }
                };
                if !arg.trim().is_empty() {
                    send(&mut rd, 501, "5.5.4 Syntax error").await?;
                    continue;
                }
                send(&mut rd, 220, "2.0.0 Ready to start TLS").await?;
                if !rd.buffer().is_empty() {
                    // plaintext injected after STARTTLS: refuse
                    shared.state().tls_failed += 1;
                    return Ok(());
                }
                let io = rd.into_inner();
                let hs = tokio::time::timeout(Duration::from_secs(15), acceptor.accept(io)).await;
                let stream = match hs {
                    Ok(Ok(s)) => s,
                    _ => {
                        shared.state().tls_failed += 1;
                        return Ok(());
                    }
                };
                let conn = stream.get_ref().1;
                tls = Some(TlsInfo {
                    version: conn
                        .protocol_version()
                        .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                    sni: conn.server_name().map(|s| s.to_string()),
                    cipher_suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
                });
                shared.state().tls_ok += 1;
                rd = BufReader::new(Box::new(stream) as Box<dyn Io>);
                helo = None;
                tx = None;
            }
            "MAIL" => {
                if helo.is_none() {
                    send(&mut rd, 503, "5.5.1 EHLO/HELO first").await?;
                    continue;
                }
                if tx.is_some() {
                    send(&mut rd, 503, "5.5.1 Nested MAIL command").await?;
                    continue;
                }
                let Some((from, params)) = parse_path(&arg, "FROM:") else {
                    send(&mut rd, 501, "5.5.4 Syntax: MAIL FROM:<address>").await?;
                    continue;
                };
                let size_param = params.iter().find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.eq_ignore_ascii_case("SIZE")
                        .then(|| v.parse::<usize>().ok())?
                });
                if let (Some(limit), Some(sz)) = (opts.size, size_param)
                    && sz > limit
                {
                    send(&mut rd, 552, "5.3.4 Message size exceeds fixed limit").await?;
                    continue;
                }
                let attempt = {
                    let mut st = shared.state();
                    st.mail_attempts += 1;
                    st.mail_attempts
                };
                let reply = opts
                    .mail_reply
                    .as_ref()
                    .and_then(|f| f(&from, attempt))
                    .unwrap_or((250, "2.1.0 Sender OK".to_string()));
                if (200..300).contains(&reply.0) {
                    shared.state().transactions += 1;
                    tx = Some(Tx {
                        mail_from: from,
                        mail_params: params,
                        rcpts: vec![],
                    });
                }
                if let Flow::Close = send_reply(&mut rd, &reply).await? {
                    return Ok(());
                }
            }
            "RCPT" => {
                let Some(t) = tx.as_mut() else {
                    send(&mut rd, 503, "5.5.1 MAIL first").await?;
                    continue;
                };
                let Some((to, _params)) = parse_path(&arg, "TO:") else {
                    send(&mut rd, 501, "5.5.4 Syntax: RCPT TO:<address>").await?;
                    continue;
                };
                let attempt = {
                    let mut st = shared.state();
                    let c = st.rcpt_attempts.entry(to.to_ascii_lowercase()).or_insert(0);
                    *c += 1;
                    *c
                };
                let reply = opts
                    .rcpt_reply
                    .as_ref()
                    .and_then(|f| f(&to, attempt))
                    .unwrap_or((250, "2.1.5 Recipient OK".to_string()));
                if (200..300).contains(&reply.0) {
                    t.rcpts.push(to);
                }
                if let Flow::Close = send_reply(&mut rd, &reply).await? {
                    return Ok(());
                }
            }
            "DATA" => {
                shared.state().data_commands += 1;
                let Some(t) = tx.take() else {
                    send(&mut rd, 503, "5.5.1 MAIL first").await?;
                    continue;
                };
                if t.rcpts.is_empty() {
                    send(&mut rd, 554, "5.5.1 No valid recipients").await?;
                    continue;
                }
                send(&mut rd, 354, "End data with <CR><LF>.<CR><LF>").await?;
                let mut data: Vec<u8> = Vec::new();
                loop {
                    let l = match read_line(&mut rd, opts.idle_timeout).await {
                        Line::Text(l) => l,
                        Line::TimedOut => {
                            send(&mut rd, 421, "4.4.2 Timeout during DATA").await?;
                            return Ok(());
                        }
                        Line::TooLong => {
                            send(&mut rd, 500, "5.5.2 Line too long").await?;
                            return Ok(());
                        }
                        Line::Eof => return Ok(()),
                    };
                    if l == b".\r\n" || l == b".\n" {
                        break;
                    }
                    let content = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                    data.extend_from_slice(content);
                }
                if data.ends_with(b"\r\n") {
                    data.truncate(data.len() - 2);
                } else if data.ends_with(b"\n") {
                    data.truncate(data.len() - 1);
                }
                let (helo_name, esmtp) = helo.clone().unwrap_or_default();
                let msg = Received {
                    mail_from: t.mail_from,
                    mail_params: t.mail_params,
                    rcpt_to: t.rcpts,
                    data,
                    tls: tls.clone(),
                    helo: helo_name,
                    esmtp,
                    conn_id,
                    peer,
                };
                if let Some(d) = opts.data_reply_delay {
                    tokio::time::sleep(d).await;
                }
                if let Some(limit) = opts.size
                    && msg.data.len() > limit
                {
                    send(&mut rd, 552, "5.3.4 Message too big").await?;
                    continue;
                }
                let attempt = {
                    let mut st = shared.state();
                    st.data_attempts += 1;
                    st.data_attempts
                };
                let reply = opts
                    .data_reply
                    .as_ref()
                    .and_then(|f| f(&msg, attempt))
                    .unwrap_or_else(|| (250, format!("2.0.0 OK queued as T{conn_id}x{attempt}")));
                if (200..300).contains(&reply.0) {
                    let n = {
                        let mut st = shared.state();
                        st.messages.push(msg);
                        st.messages.len()
                    };
                    shared.count_tx.send_replace(n);
                }
                if let Flow::Close = send_reply(&mut rd, &reply).await? {
                    return Ok(());
                }
                if opts.hang_up_after_data {
                    return Ok(());
                }
            }
            "RSET" => {
                tx = None;
                send(&mut rd, 250, "2.0.0 OK").await?;
            }
            "NOOP" => send(&mut rd, 250, "2.0.0 OK").await?,
            // Accepts any credentials; tests read them from the transcript.
            "AUTH" => send(&mut rd, 235, "2.7.0 Authentication successful").await?,
            "VRFY" => send(&mut rd, 252, "2.1.5 Cannot VRFY").await?,
            "QUIT" => {
                send(&mut rd, 221, "2.0.0 Bye").await?;
                return Ok(());
            }
            _ => send(&mut rd, 500, "5.5.2 Command not recognized").await?,
        }
    }
}
