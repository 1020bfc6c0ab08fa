//! One SMTP session: the command loop, relay control, STARTTLS, AUTH and
//! DATA into the spool. Every read has a timeout and a size limit.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::InboundContext;
use super::auth;
use super::command::{self, AddressRules, Body, Command, MailParams, Mailbox};
use super::data::{DataProblem, DataReceiver, HeaderFacts, header_facts};
use super::reply::Reply;
use crate::queue::{ClientInfo, QueueId, QueuedMessage, Recipient};
use crate::util::stream::Stream;
use rustls_pki_types::CertificateDer;

/// Why the session ends.
#[derive(Debug)]
enum End {
    /// Client said QUIT or closed.
    Done,
    /// I/O failure or timeout; nothing more can be said.
    Io(std::io::Error),
    /// We closed with a final reply already sent.
    Closed,
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Io(e)
    }
}

enum Line {
    Ok(Vec<u8>),
    TooLong,
}

/// What the client's connector certificate means for one message.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// No connector certificate: relay rests on the network or AUTH.
    NoConnector,
    /// This connector's tenant check passed.
    Connector(String),
    /// A connector certificate, but no matching tenant.
    Refused,
}

struct Transaction {
    sender: Option<Mailbox>,
    params: MailParams,
    rcpts: Vec<Mailbox>,
}

/// The per-connection state.
pub struct Session {
    ctx: Arc<InboundContext>,
    peer: SocketAddr,
    stream: Stream,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<(String, String)>,
    auth_user: Option<String>,
    /// Connectors (indices) the client's TLS certificate identifies.
    cert_connectors: Vec<usize>,
    tx: Option<Transaction>,
    errors: usize,
    /// Commands that move no mail (see [`is_junk`]) since the last
    /// accepted message.
    junk: usize,
    /// The session ends here whatever it is doing (`session_timeout`).
    deadline: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Which bound ended a wait for the client.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// No bytes for the per-read timeout.
    Idle,
    /// The whole DATA phase took too long (`data_phase_timeout`).
    DataPhase,
    /// The session took too long (`session_timeout`).
    Session,
}

/// Commands that move no mail: a client may send only so many of them
/// between messages, so it cannot hold a session slot by chatting.
fn is_junk(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Noop
            | Command::Rset
            | Command::Helo(_)
            | Command::Ehlo(_)
            | Command::Vrfy
            | Command::Expn
            | Command::Help
            | Command::NotOffered(_)
    )
}

impl Session {
    /// A session on an accepted connection.
    pub fn new(
        ctx: Arc<InboundContext>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Session {
        let deadline = super::later(Instant::now(), ctx.settings.server.limits.session_timeout);
        Session {
            ctx,
            peer,
            stream: Stream::Plain(stream),
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            cert_connectors: Vec::new(),
            tx: None,
            errors: 0,
            junk: 0,
            deadline,
            shutdown,
        }
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let started = std::time::Instant::now();
        let end = self.serve().await;
        let _ = self.flush().await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.stream.shutdown()).await;
        match end {
            Ok(()) | Err(End::Done) | Err(End::Closed) => {
                tracing::debug!(peer = %self.peer, secs = started.elapsed().as_secs_f32(), "session closed")
            }
            Err(End::Io(e)) => tracing::debug!(peer = %self.peer, error = %e, "session ended"),
        }
    }

    fn reply(&mut self, r: &Reply) {
        if r.is_error() {
            self.errors += 1;
        }
        self.wbuf.extend_from_slice(r.to_wire().as_bytes());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let limit = self.ctx.settings.server.limits.command_timeout;
            let buf = std::mem::take(&mut self.wbuf);
            tokio::time::timeout(limit, self.stream.write_all(&buf))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")
                })??;
            tokio::time::timeout(limit, self.stream.flush())
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")
                })??;
            self.wbuf = buf;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes into the buffer, flushing pending replies first
    /// (this is what makes PIPELINING work: replies go out when the
    /// client's batch is consumed). Waits at most `timeout`, and never past
    /// the session's deadline.
    async fn fill(&mut self, timeout: std::time::Duration) -> Result<(), End> {
        self.fill_within(timeout, None).await
    }

    /// [`Session::fill`], also bounded by the end of the DATA phase.
    async fn fill_within(
        &mut self,
        timeout: std::time::Duration,
        data_deadline: Option<Instant>,
    ) -> Result<(), End> {
        let mut bound = (super::later(Instant::now(), timeout), Bound::Idle);
        if let Some(d) = data_deadline.filter(|d| *d < bound.0) {
            bound = (d, Bound::DataPhase);
        }
        if self.deadline < bound.0 {
            bound = (self.deadline, Bound::Session);
        }
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::select! {
            r = tokio::time::timeout_at(bound.0, self.stream.read(&mut chunk)) => match r {
                Err(_) => {
                    self.timed_out(bound.1);
                    return Err(End::Closed);
                }
                Ok(r) => r?,
            },
            _ = self.shutdown.changed() => {
                self.reply(&Reply::new(421, "4.3.2", &format!("{} Service shutting down", self.ctx.settings.server.hostname)));
                return Err(End::Closed);
            }
        };
        if n == 0 {
            return Err(End::Done);
        }
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn timed_out(&mut self, bound: Bound) {
        let why = match bound {
            Bound::Idle => "timeout exceeded",
            Bound::DataPhase => "DATA took too long",
            Bound::Session => "session lasted too long",
        };
        if !matches!(bound, Bound::Idle) {
            tracing::info!(peer = %self.peer, bound = ?bound, "closing a session that took too long");
        }
        let host = self.ctx.settings.server.hostname.clone();
        self.reply(&Reply::new(421, "4.4.2", &format!("{host} Error: {why}")));
    }

    /// One command line; an over-long line is consumed and reported.
    async fn read_line(&mut self) -> Result<Line, End> {
        let max = self.ctx.settings.server.limits.max_command_line;
        let timeout = self.ctx.settings.server.limits.command_timeout;
        let mut too_long = false;
        loop {
            if let Some(pos) = self.rbuf[self.rpos..].iter().position(|&b| b == b'\n') {
                let start = self.rpos;
                self.rpos += pos + 1;
                if too_long {
                    return Ok(Line::TooLong);
                }
                let mut line = self.rbuf[start..start + pos].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Ok(line));
            }
            if self.rbuf.len() - self.rpos > max {
                // Keep memory bounded: drop what we have, remember to refuse.
                too_long = true;
                self.rbuf.clear();
                self.rpos = 0;
            }
            self.fill(timeout).await?;
        }
    }

    async fn serve(&mut self) -> Result<(), End> {
        let host = self.ctx.settings.server.hostname.clone();
        self.reply(&Reply::new(220, "", &format!("{host} ESMTP sealgate")));
        loop {
            if self.errors >= self.ctx.settings.server.limits.max_errors {
                self.reply(&Reply::new(
                    421,
                    "4.7.0",
                    &format!("{host} Error: too many errors"),
                ));
                return Err(End::Closed);
            }
            let line = match self.read_line().await? {
                Line::Ok(l) => l,
                Line::TooLong => {
                    self.reply(&Reply::new(500, "5.5.2", "Error: line too long"));
                    continue;
                }
            };
            let rules = AddressRules {
                allow_percent_hack: self.ctx.settings.relay.allow_percent_hack,
            };
            let parsed = command::parse_with(&line, rules);
            let junk = match &parsed {
                Ok(cmd) => is_junk(cmd),
                Err(_) => true,
            };
            if junk {
                self.junk += 1;
                if self.junk > self.ctx.settings.server.limits.max_junk_commands {
                    tracing::info!(peer = %self.peer, commands = self.junk, "closing a session that sends commands but no mail");
                    self.reply(&Reply::new(
                        421,
                        "4.7.0",
                        &format!("{host} Error: too many commands without a message"),
                    ));
                    return Err(End::Closed);
                }
            }
            let cmd = match parsed {
                Ok(c) => c,
                Err(r) => {
                    self.reply(&r);
                    continue;
                }
            };
            match cmd {
                Command::Quit => {
                    self.reply(&Reply::new(221, "2.0.0", "Bye"));
                    return Err(End::Done);
                }
                Command::Helo(name) => {
                    self.helo = Some(name);
                    self.esmtp = false;
                    self.tx = None;
                    self.reply(&Reply::new(250, "", &host));
                }
                Command::Ehlo(name) => {
                    self.helo = Some(name);
                    self.esmtp = true;
                    self.tx = None;
                    let r = self.ehlo_reply();
                    self.reply(&r);
                }
                Command::StartTls => self.starttls().await?,
                Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
                Command::Mail(sender, params) => {
                    let r = self.mail(sender, params);
                    self.reply(&r);
                }
                Command::Rcpt(mb) => {
                    let r = self.rcpt(mb);
                    self.reply(&r);
                }
                Command::Data => self.data().await?,
                Command::Rset => {
                    self.tx = None;
                    self.reply(&Reply::new(250, "2.0.0", "Ok"));
                }
                Command::Noop => self.reply(&Reply::new(250, "2.0.0", "Ok")),
                Command::Vrfy => self.reply(&Reply::new(502, "5.5.1", "VRFY command is disabled")),
                Command::Expn => self.reply(&Reply::new(502, "5.5.1", "EXPN command is disabled")),
                Command::Help => self.reply(&Reply::new(214, "2.0.0", "See RFC 5321")),
                Command::NotOffered(_) => {
                    self.reply(&Reply::new(502, "5.5.1", "Command not implemented"))
                }
            }
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let s = &self.ctx.settings.server;
        let mut lines = vec![s.hostname.clone()];
        lines.push(format!("SIZE {}", s.limits.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("PIPELINING".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("SMTPUTF8".into());
        if self.ctx.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        // RFC 8689: offered only inside TLS.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        if self.tls.is_some() && self.ctx.users.any() && self.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::new(250, "", &lines.join("\n"))
    }

    async fn starttls(&mut self) -> Result<(), End> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            self.reply(&Reply::new(502, "5.5.1", "Command not implemented"));
            return Ok(());
        };
        if self.tls.is_some() {
            self.reply(&Reply::new(503, "5.5.1", "Already using TLS"));
            return Ok(());
        }
        self.reply(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.flush().await?;
        // Anything the client pipelined after STARTTLS was sent in the clear
        // and could have been injected by an attacker (CVE-2011-0411 class):
        // it is thrown away, never executed inside the TLS session.
        if self.rbuf.len() > self.rpos {
            tracing::info!(peer = %self.peer, bytes = self.rbuf.len() - self.rpos, "discarding plaintext pipelined after STARTTLS");
        }
        self.rbuf.clear();
        self.rpos = 0;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(End::Closed);
        };
        let timeout = self
            .ctx
            .settings
            .server
            .limits
            .command_timeout
            .min(std::time::Duration::from_secs(60));
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                let version = crate::net::tls::version_name(conn.protocol_version());
                let cipher = conn
                    .negotiated_cipher_suite()
                    .and_then(|c| c.suite().as_str())
                    .unwrap_or("unknown")
                    .to_string();
                self.tls = Some((version, cipher));
                self.cert_connectors = self.identify_connectors(conn.peer_certificates());
                self.stream = Stream::tls(tls);
                // RFC 3207 section 4.2: forget everything learned before TLS.
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "inbound TLS handshake failed");
                Err(End::Closed)
            }
            Err(_) => Err(End::Closed),
        }
    }

    /// Which connectors the client certificate (if any) identifies.
    fn identify_connectors(&self, chain: Option<&[CertificateDer<'_>]>) -> Vec<usize> {
        let Some(chain) = chain.filter(|c| !c.is_empty()) else {
            return Vec::new();
        };
        let matched = self.ctx.connectors.identify(chain);
        if matched.is_empty() {
            tracing::info!(peer = %self.peer, "client certificate identifies no relay connector");
        } else {
            let names: Vec<&str> = matched
                .iter()
                .map(|&i| self.ctx.connectors.name(i))
                .collect();
            tracing::info!(peer = %self.peer, connectors = ?names, "client certificate identifies a relay connector");
        }
        matched
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Result<(), End> {
        if !self.ctx.users.any() {
            self.reply(&Reply::new(502, "5.5.1", "Command not implemented"));
            return Ok(());
        }
        if self.tls.is_none() {
            self.reply(&Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
            return Ok(());
        }
        if self.auth_user.is_some() {
            self.reply(&Reply::new(503, "5.5.1", "Already authenticated"));
            return Ok(());
        }
        if self.tx.is_some() {
            self.reply(&Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
            return Ok(());
        }
        // A locked-out client is told so at once, before any challenge.
        if let Some(locked) = self.ctx.lockout.locked(self.peer.ip(), Instant::now()) {
            self.auth_locked(locked);
            return Ok(());
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(i) if i != "=" => i,
                    _ => match self.challenge("").await? {
                        Some(r) => r,
                        None => return Ok(()),
                    },
                };
                auth::decode_plain(&resp)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => Some(i),
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                let Some(user) = user else { return Ok(()) };
                let Some(pass) = self.challenge("UGFzc3dvcmQ6").await? else {
                    return Ok(());
                };
                match (
                    auth::decode_b64(&user).and_then(|u| String::from_utf8(u).ok()),
                    auth::decode_b64(&pass),
                ) {
                    (Some(u), Some(p)) => Some((u, p)),
                    _ => None,
                }
            }
            _ => {
                self.reply(&Reply::new(
                    504,
                    "5.5.4",
                    "Unrecognized authentication type",
                ));
                return Ok(());
            }
        };
        let Some((user, pass)) = creds else {
            self.reply(&Reply::new(501, "5.5.2", "Cannot decode response"));
            return Ok(());
        };
        self.check_password(user, pass).await;
        Ok(())
    }

    /// Counts the attempt against the lockout, checks the password (one
    /// bounded argon2 slot) and replies.
    async fn check_password(&mut self, user: String, pass: Vec<u8>) {
        let attempt = match self
            .ctx
            .lockout
            .begin(self.peer.ip(), &user, Instant::now())
        {
            Ok(a) => a,
            Err(locked) => return self.auth_locked(locked),
        };
        // The name a client sent may be anything (a patient's address, a
        // password typed in the wrong field): only its hash goes to info.
        let tag = auth::user_tag(&user);
        tracing::debug!(peer = %self.peer, user = %user, user_tag = %tag, "AUTH attempt");
        match self.ctx.users.verify(user.clone(), pass).await {
            auth::Check::Accepted => {
                drop(attempt.finish(true, Instant::now()));
                // The name is now a configured account, not client text.
                tracing::info!(peer = %self.peer, user = %user, "authenticated");
                self.auth_user = Some(user);
                self.reply(&Reply::new(235, "2.7.0", "Authentication successful"));
            }
            auth::Check::Busy => {
                drop(attempt);
                tracing::warn!(peer = %self.peer, "AUTH refused: every password check slot stayed busy (server.auth_max_verifications)");
                self.reply(&Reply::new(
                    454,
                    "4.7.0",
                    "Temporary authentication failure",
                ));
            }
            auth::Check::Refused => {
                for l in attempt.finish(false, Instant::now()) {
                    self.record_lockout(&l);
                }
                tracing::info!(peer = %self.peer, user_tag = %tag, "authentication failed");
                // Slow down guessing beyond what argon2 already costs.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                self.reply(&Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ));
            }
        }
    }

    /// Logs a lockout that has just begun and records it as an audit row
    /// (in the background: the journal's fsync must not hold the reply).
    fn record_lockout(&self, l: &auth::LockoutStarted) {
        tracing::warn!(
            event = "auth_lockout",
            peer_ip = %self.peer.ip(),
            scope = l.scope.as_str(),
            failures = l.failures,
            lockout_secs = l.period.as_secs(),
            "AUTH locked out after repeated failures"
        );
        let event = crate::audit::AuditEvent::listener(
            "auth_lockout",
            self.peer.ip(),
            "454 4.7.0 Too many failed authentication attempts, try again later",
            serde_json::json!({
                "scope": l.scope.as_str(),
                "failures": l.failures,
                "lockout_secs": l.period.as_secs(),
                "tls": self.tls.is_some(),
            }),
        );
        let auditor = self.ctx.auditor.clone();
        tokio::spawn(async move {
            if let Err(e) = auditor.record(event).await {
                tracing::error!(error = %e, "cannot journal an AUTH lockout; the warn log line above is its only record");
            }
        });
    }

    fn auth_locked(&mut self, locked: auth::Locked) {
        tracing::info!(peer = %self.peer, scope = locked.scope.as_str(), "AUTH refused: locked out after repeated failures");
        self.reply(&Reply::new(
            454,
            "4.7.0",
            "Too many failed authentication attempts, try again later",
        ));
    }

    /// Sends a 334 challenge and reads the answer; `None` if cancelled.
    async fn challenge(&mut self, text: &str) -> Result<Option<String>, End> {
        self.wbuf
            .extend_from_slice(format!("334 {text}\r\n").as_bytes());
        match self.read_line().await? {
            Line::Ok(l) if l == b"*" => {
                self.reply(&Reply::new(501, "5.0.0", "Authentication cancelled"));
                Ok(None)
            }
            Line::Ok(l) => Ok(Some(String::from_utf8_lossy(&l).into_owned())),
            Line::TooLong => {
                self.reply(&Reply::new(500, "5.5.2", "Error: line too long"));
                Ok(None)
            }
        }
    }

    fn mail(&mut self, sender: Option<Mailbox>, params: MailParams) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return Reply::new(503, "5.5.1", "Error: nested MAIL command");
        }
        if !self.esmtp && (params != MailParams::default()) {
            return Reply::new(555, "5.5.4", "MAIL parameters need EHLO");
        }
        if let Some(size) = params.size {
            if size > self.ctx.settings.server.limits.max_message_size {
                return Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                );
            }
        }
        if params.requiretls && self.tls.is_none() {
            return Reply::new(530, "5.7.10", "REQUIRETLS needs a TLS session");
        }
        if let Some(s) = &sender {
            if s.is_utf8() && !params.smtputf8 {
                return Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
            }
        }
        self.tx = Some(Transaction {
            sender,
            params,
            rcpts: Vec::new(),
        });
        Reply::new(250, "2.1.0", "Ok")
    }

    fn rcpt(&mut self, mb: Mailbox) -> Reply {
        let may_relay = self.auth_user.is_some()
            || self.ctx.settings.relay.allows(self.peer.ip())
            || !self.cert_connectors.is_empty();
        let max = self.ctx.settings.server.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        if mb.is_utf8() && !tx.params.smtputf8 {
            return Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8");
        }
        if !may_relay {
            // The detail goes to the log; the reply stays generic.
            tracing::info!(peer = %self.peer, recipient_domain = %mb.domain, "relay denied: client is not in relay.allow_networks, not authenticated and has no connector certificate");
            return Reply::new(550, "5.7.1", "Relay access denied");
        }
        if tx.rcpts.len() >= max {
            return Reply::new(452, "4.5.3", "Error: too many recipients");
        }
        if !tx.rcpts.iter().any(|r| r.same_address(&mb)) {
            tx.rcpts.push(mb);
        }
        Reply::new(250, "2.1.5", "Ok")
    }

    async fn data(&mut self) -> Result<(), End> {
        let Some(tx) = self.tx.take() else {
            self.reply(&Reply::new(503, "5.5.1", "Error: need MAIL command"));
            return Ok(());
        };
        if tx.rcpts.is_empty() {
            self.reply(&Reply::new(554, "5.5.1", "Error: no valid recipients"));
            return Ok(());
        }
        let limits = self.ctx.settings.server.limits.clone();
        let id = QueueId::new();
        let spool = self.ctx.queue.spool().clone();
        if let Some(r) = self.storage_refusal(&spool) {
            self.reply(&r);
            return Ok(());
        }
        let mut writer = match spool.create_content(&id).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot create spool file");
                self.reply(&spool_failure(&e));
                return Ok(());
            }
        };
        self.reply(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let received = self.received_header(&id, &tx);
        let mut spool_failed: Option<crate::queue::SpoolError> = None;
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write(received.as_bytes()).await {
                tracing::error!(error = %e, "spool write failed");
                spool_failed = Some(e);
            }
        }
        let mut rx = DataReceiver::new(
            limits.max_message_size,
            limits.max_line_length,
            limits.max_header_size,
        );
        let mut out = Vec::with_capacity(64 * 1024);
        let data_deadline = super::later(Instant::now(), limits.data_phase_timeout);
        loop {
            if let Some(used) = rx.feed(&self.rbuf[self.rpos..], &mut out) {
                self.rpos += used;
                break;
            }
            self.rpos = self.rbuf.len();
            if out.len() >= 64 * 1024 && spool_failed.is_none() {
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.write(&out).await {
                        tracing::error!(error = %e, "spool write failed");
                        spool_failed = Some(e);
                    }
                }
                // Concurrent messages must not eat the reserve that queued
                // mail needs for its state updates: stop below it.
                if spool_failed.is_none() && self.storage_refusal(&spool).is_some() {
                    spool_failed = Some(crate::queue::SpoolError::Io {
                        path: spool.root().to_path_buf(),
                        source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                    });
                }
                out.clear();
            } else if spool_failed.is_some() {
                out.clear();
            }
            if rx.discarded() > limits.max_message_size {
                // A client that goes on long after the limit is cut off.
                if writer.is_some() {
                    spool.discard_content(&id).await;
                }
                self.reply(&Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ));
                return Err(End::Closed);
            }
            if let Err(e) = self
                .fill_within(limits.data_timeout, Some(data_deadline))
                .await
            {
                if writer.is_some() {
                    spool.discard_content(&id).await;
                }
                return Err(e);
            }
        }
        let facts = header_facts(rx.headers());
        let connector = self.admit_connector(&id, &facts);
        let refusal = match rx.problem() {
            Some(DataProblem::TooBig) => Some(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            )),
            Some(DataProblem::HeaderTooBig) => Some(Reply::new(
                552,
                "5.3.4",
                "Message header size exceeds limit",
            )),
            Some(DataProblem::LineTooLong) => {
                Some(Reply::new(500, "5.5.2", "Message line too long"))
            }
            None if facts.received >= limits.max_received_headers => {
                tracing::info!(peer = %self.peer, hops = facts.received, "mail loop: too many Received headers");
                Some(Reply::new(554, "5.4.6", "Too many hops (mail loop?)"))
            }
            None if connector == Admission::Refused => {
                Some(Reply::new(550, "5.7.1", "Relay access denied"))
            }
            None if spool_failed.is_some() => spool_failed.as_ref().map(spool_failure),
            None => None,
        };
        if let Some(r) = refusal {
            if writer.is_some() {
                spool.discard_content(&id).await;
            }
            self.reply(&r);
            return Ok(());
        }
        let Some(mut w) = writer else { return Ok(()) };
        let committed = async {
            w.write(&out).await?;
            w.finish().await
        }
        .await;
        let (size, sha) = match committed {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "spool write failed");
                spool.discard_content(&id).await;
                self.reply(&spool_failure(&e));
                return Ok(());
            }
        };
        let msg = QueuedMessage {
            id: id.clone(),
            received_at: Utc::now(),
            sender: tx
                .sender
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            recipients: tx
                .rcpts
                .iter()
                .map(|r| Recipient::new(r.to_string()))
                .collect(),
            message_id: facts.message_id,
            size,
            content_sha256: sha,
            body_8bit: tx.params.body == Body::EightBitMime,
            smtputf8: tx.params.smtputf8,
            client: ClientInfo {
                ip: self.peer.ip().to_string(),
                helo: self.helo.clone().unwrap_or_default(),
                auth_user: self.auth_user.clone(),
                tls: self.tls.is_some(),
                connector: match connector {
                    Admission::Connector(name) => Some(name),
                    Admission::NoConnector | Admission::Refused => None,
                },
            },
            requiretls: tx.params.requiretls,
            local: false,
        };
        let rcpts = msg.recipients.len();
        match self.ctx.queue.enqueue(msg).await {
            Ok(()) => {
                tracing::info!(queue_id = %id, peer = %self.peer, size, recipients = rcpts, "message accepted");
                self.junk = 0;
                self.reply(&Reply::new(250, "2.0.0", &format!("Ok: queued as {id}")));
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot commit message to the spool");
                // Both files: the envelope may already be renamed into place
                // (a folder fsync failed); the client is told to try again.
                if let Err(e) = spool.remove(&id).await {
                    tracing::error!(queue_id = %id, error = %e, "cannot remove the refused message from the spool; it may be delivered although the client was told 452/451");
                }
                let r = match &e {
                    crate::queue::QueueError::Spool(e) => spool_failure(e),
                    _ => Reply::new(451, "4.3.0", "Error: queue file write error"),
                };
                self.reply(&r);
            }
        }
        Ok(())
    }

    /// `452 4.3.1` when the spool's file system is below its reserve (or
    /// its free space cannot be read): refused before `354`, so the client
    /// does not send a message we could not keep.
    fn storage_refusal(&self, spool: &crate::queue::Spool) -> Option<Reply> {
        let reserve = self.ctx.settings.server.spool_reserve;
        match spool.free_space() {
            Ok(free) if free >= reserve => None,
            Ok(free) => {
                tracing::warn!(
                    free_bytes = free,
                    reserve_bytes = reserve,
                    "spool file system below its reserve; refusing new mail with 452"
                );
                Some(insufficient_storage())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool's free space; refusing new mail with 452");
                Some(insufficient_storage())
            }
        }
    }

    /// Whether a connector admits this message. A client whose certificate
    /// identifies connectors is refused when the message's tenant headers
    /// match none of them, whatever else it has: every tenant of a cloud
    /// presents the same certificate.
    fn admit_connector(&self, id: &QueueId, facts: &HeaderFacts) -> Admission {
        if self.cert_connectors.is_empty() {
            return Admission::NoConnector;
        }
        match self.ctx.connectors.admit(&self.cert_connectors, facts) {
            Ok(i) => Admission::Connector(self.ctx.connectors.name(i).to_string()),
            Err(why) => {
                tracing::info!(queue_id = %id, peer = %self.peer, why = ?why, "relay denied: the message's tenant does not match the connector");
                Admission::Refused
            }
        }
    }

    fn received_header(&self, id: &QueueId, tx: &Transaction) -> String {
        let proto = match (self.esmtp, self.tls.is_some(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| !c.is_control() && *c != '(' && *c != ')')
            .take(255)
            .collect();
        let tls = match &self.tls {
            Some((v, c)) => format!("\r\n\t(using {v} with cipher {c})"),
            None => String::new(),
        };
        // RFC 6531 section 3.7.3: UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA.
        let proto = if tx.params.smtputf8 {
            format!("UTF8SMTP{}", proto.trim_start_matches("ESMTP"))
        } else {
            proto.to_string()
        };
        format!(
            "Received: from {helo} ([{ip}]){tls}\r\n\tby {host} (sealgate) with {proto} id {id};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = self.ctx.settings.server.hostname,
            date = Utc::now().to_rfc2822(),
        )
    }
}

fn insufficient_storage() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
}

/// The reply for a message the spool could not keep: always temporary.
fn spool_failure(e: &crate::queue::SpoolError) -> Reply {
    if e.is_out_of_space() {
        insufficient_storage()
    } else {
        Reply::new(451, "4.3.0", "Error: queue file write error")
    }
}
