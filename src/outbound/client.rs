//! A minimal SMTP client for delivery: greeting, EHLO, STARTTLS, AUTH,
//! MAIL/RCPT/DATA with per-recipient replies, RSET and QUIT. Every read is
//! bounded in time and size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::stream::Stream;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// Text lines without the code.
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// The reply as one line, e.g. `550 5.1.1 No such user`.
    pub fn one_line(&self) -> String {
        let text: String = self
            .lines
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        format!("{} {}", self.code, text)
    }

    /// The enhanced status code at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then(|| first.to_string())
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// A failure talking to the remote.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connection to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("{0} timed out waiting for {1}")]
    Timeout(String, &'static str),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} closed the connection")]
    Closed(String),
    #[error("{0} sent a malformed reply")]
    Protocol(String),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, String),
}

impl ClientError {
    /// Whether the failure is the TLS handshake itself (certificate,
    /// protocol), as opposed to the network.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientError::Tls(..))
    }
}

/// What the remote advertised in EHLO.
#[derive(Debug, Clone, Default)]
pub struct Extensions {
    pub starttls: bool,
    pub pipelining: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub requiretls: bool,
}

impl Extensions {
    fn parse(reply: &SmtpReply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => e.starttls = true,
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "REQUIRETLS" => e.requiretls = true,
                "SIZE" => e.size = words.next().and_then(|s| s.parse().ok()).filter(|&n| n > 0),
                "AUTH" => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => e.auth_plain = true,
                            "LOGIN" => e.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        e
    }
}

/// The negotiated TLS session, for the evidence.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
    /// SHA-256 of the leaf certificate (hex).
    pub peer_cert_sha256: Option<String>,
    /// The presented chain, DER.
    pub chain: Vec<Vec<u8>>,
}

/// Limits for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// An open SMTP connection.
pub struct Connection {
    stream: Stream,
    rbuf: Vec<u8>,
    /// Host name we connected to (for messages and SNI).
    pub host: String,
    pub addr: SocketAddr,
    pub ext: Extensions,
    pub tls: Option<TlsFacts>,
    timeouts: Timeouts,
    /// The banner (first line), for the evidence.
    pub banner: String,
}

const MAX_REPLY_LINES: usize = 200;
const MAX_LINE: usize = 4096;

impl Connection {
    /// Connects and reads the greeting. A non-2xx greeting is returned as
    /// `Ok(Err(reply))`.
    pub async fn connect(
        host: &str,
        addr: SocketAddr,
        timeouts: Timeouts,
    ) -> Result<Result<Connection, SmtpReply>, ClientError> {
        let tcp = tokio::time::timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(tcp),
            rbuf: Vec::with_capacity(4096),
            host: host.to_string(),
            addr,
            ext: Extensions::default(),
            tls: None,
            timeouts,
            banner: String::new(),
        };
        let greeting = c.read_reply(timeouts.command, "the greeting").await?;
        c.banner = greeting.lines.first().cloned().unwrap_or_default();
        if greeting.code != 220 {
            return Ok(Err(greeting));
        }
        Ok(Ok(c))
    }

    fn who(&self) -> String {
        format!("{} [{}]", self.host, self.addr.ip())
    }

    /// Sends EHLO (falling back to HELO on 5xx) and records the extensions.
    pub async fn ehlo(&mut self, name: &str) -> Result<SmtpReply, ClientError> {
        let r = self
            .command(&format!("EHLO {name}"), "the EHLO reply")
            .await?;
        if r.code == 250 {
            self.ext = Extensions::parse(&r);
            return Ok(r);
        }
        if (500..600).contains(&r.code) {
            let h = self
                .command(&format!("HELO {name}"), "the HELO reply")
                .await?;
            self.ext = Extensions::default();
            return Ok(h);
        }
        Ok(r)
    }

    /// STARTTLS and the handshake; on success EHLO must be sent again.
    /// `Ok(Err(reply))` when the server refused STARTTLS.
    pub async fn starttls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<Result<(), SmtpReply>, ClientError> {
        let r = self.command("STARTTLS", "the STARTTLS reply").await?;
        if r.code != 220 {
            return Ok(Err(r));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ClientError::Protocol(self.who()));
        };
        let name = rustls_pki_types::ServerName::try_from(sni.trim_end_matches('.').to_string())
            .map_err(|e| ClientError::Tls(self.who(), e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.timeouts.command, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout(self.who(), "the TLS handshake"))?
            .map_err(|e| ClientError::Tls(self.who(), e.to_string()))?;
        let (_, conn) = tls.get_ref();
        let chain: Vec<Vec<u8>> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        self.tls = Some(TlsFacts {
            version: crate::net::tls::version_name(conn.protocol_version()),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_string(),
            peer_cert_sha256: chain.first().map(|c| crate::util::sha256_hex(c)),
            chain,
        });
        self.stream = Stream::tls(tls);
        self.rbuf.clear();
        Ok(Ok(()))
    }

    /// AUTH PLAIN (or LOGIN) with a username and password.
    pub async fn auth(&mut self, user: &str, password: &str) -> Result<SmtpReply, ClientError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        if self.ext.auth_plain || !self.ext.auth_login {
            let token = b64.encode(format!("\0{user}\0{password}"));
            return self
                .command(&format!("AUTH PLAIN {token}"), "the AUTH reply")
                .await;
        }
        let r = self.command("AUTH LOGIN", "the AUTH reply").await?;
        if r.code != 334 {
            return Ok(r);
        }
        let r = self.command(&b64.encode(user), "the AUTH reply").await?;
        if r.code != 334 {
            return Ok(r);
        }
        self.command(&b64.encode(password), "the AUTH reply").await
    }

    /// Sends one command line and reads its reply.
    pub async fn command(
        &mut self,
        line: &str,
        what: &'static str,
    ) -> Result<SmtpReply, ClientError> {
        self.send(line).await?;
        self.read_reply(self.timeouts.command, what).await
    }

    /// Writes command lines without waiting (PIPELINING).
    pub async fn send(&mut self, line: &str) -> Result<(), ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.write_all(&buf).await
    }

    /// Writes raw bytes (message data).
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let who = self.who();
        tokio::time::timeout(self.timeouts.data, self.stream.write_all(data))
            .await
            .map_err(|_| ClientError::Timeout(who.clone(), "the remote to accept data"))?
            .map_err(|e| ClientError::Io(who, e))
    }

    /// Flushes written data.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let who = self.who();
        tokio::time::timeout(self.timeouts.data, self.stream.flush())
            .await
            .map_err(|_| ClientError::Timeout(who.clone(), "the remote to accept data"))?
            .map_err(|e| ClientError::Io(who, e))
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(
        &mut self,
        timeout: Duration,
        what: &'static str,
    ) -> Result<SmtpReply, ClientError> {
        self.flush().await?;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(timeout, what).await?;
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
                return Err(ClientError::Protocol(self.who()));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| ClientError::Protocol(self.who()))?;
            let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if lines.len() > MAX_REPLY_LINES {
                return Err(ClientError::Protocol(self.who()));
            }
            if sep != b'-' {
                return Ok(SmtpReply { code, lines });
            }
        }
    }

    async fn read_line(
        &mut self,
        timeout: Duration,
        what: &'static str,
    ) -> Result<String, ClientError> {
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(ClientError::Protocol(self.who()));
            }
            let mut chunk = [0u8; 4096];
            let who = self.who();
            let n = tokio::time::timeout(timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout(who.clone(), what))?
                .map_err(|e| ClientError::Io(who.clone(), e))?;
            if n == 0 {
                return Err(ClientError::Closed(who));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether an idle (pooled) connection can still carry a transaction:
    /// the remote has neither closed it nor sent anything unasked (the
    /// `421` an MTA sends when its own idle timer fires, say). Never
    /// waits. A close the socket has not seen yet is caught at the first
    /// command instead (see `Deliverer::transaction`).
    pub fn idle_usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 512];
        // Pending means nothing to read and no end of stream: still open.
        // Anything else (EOF, an error, unsolicited bytes) ends its use.
        futures_util::FutureExt::now_or_never(self.stream.read(&mut probe)).is_none()
    }

    /// Timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Says goodbye (best effort, short timeout).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.send("QUIT").await;
            let _ = self
                .read_reply(Duration::from_secs(5), "the QUIT reply")
                .await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Encodes message content for DATA (RFC 5321 section 4.5.2), across
/// chunk boundaries: a `.` at the start of a line is doubled, and every
/// bare CR or bare LF leaves as CRLF. The listener already normalises what
/// it receives; doing it here as well means that no content from any
/// source (spool, encryptor, generated reports) can put a sequence on the
/// wire that a next hop might read as the end of data.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// A CR was the last byte seen; whether it is bare depends on the next.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends the encoded form of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 16);
        for &b in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                self.line_break(out);
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => self.line_break(out),
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
    }

    fn line_break(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }

    /// The end-of-data sequence, with a CRLF first if the content did not
    /// end with one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            self.pending_cr = false;
            self.line_break(out);
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut d = DotStuffer::default();
        let mut out = Vec::new();
        d.push(b".start\r\nmid.dle\r", &mut out);
        d.push(b"\n.", &mut out);
        d.push(b"\r\n", &mut out);
        d.finish(&mut out);
        assert_eq!(out, b"..start\r\nmid.dle\r\n..\r\n.\r\n");
        let mut d = DotStuffer::default();
        let mut out = Vec::new();
        d.push(b"no newline", &mut out);
        d.finish(&mut out);
        assert_eq!(out, b"no newline\r\n.\r\n");
    }

    /// Bare CR and bare LF as CRLF, and a final CRLF if missing.
    fn normalised(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < content.len() {
            match content[i] {
                b'\r' if content.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Whatever the content, the encoded form read back by our own DATA
    /// receiver (which agrees with the RFC's only end of data) ends exactly
    /// at the terminator the encoder wrote and gives back the content,
    /// CRLF-normalised, whatever CR, LF and dots it holds. Every string of CR, LF, `.` and a letter up to 8
    /// bytes, pushed whole and in two pieces.
    #[test]
    fn encoded_content_ends_only_at_the_terminator() {
        use crate::inbound::data::DataReceiver;
        let alphabet = [b'\r', b'\n', b'.', b'a'];
        for len in 0..=8u32 {
            for code in 0..4usize.pow(len) {
                let mut c = code;
                let content: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[c % 4];
                        c /= 4;
                        b
                    })
                    .collect();
                let mut first = None;
                for cut in 0..=content.len() {
                    let mut d = DotStuffer::default();
                    let mut wire = Vec::new();
                    d.push(&content[..cut], &mut wire);
                    d.push(&content[cut..], &mut wire);
                    d.finish(&mut wire);
                    if let Some(f) = &first {
                        assert_eq!(&wire, f, "{content:?} cut at {cut}");
                        continue;
                    }
                    let mut r = DataReceiver::new(1 << 20, 1000, 1 << 16);
                    let mut back = Vec::new();
                    assert_eq!(r.feed(&wire, &mut back), Some(wire.len()), "{content:?}");
                    assert_eq!(back, normalised(&content), "{content:?}");
                    first = Some(wire);
                }
            }
        }
    }

    const T: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        command: Duration::from_secs(5),
        data: Duration::from_secs(5),
    };

    /// A server that greets, then does `then` with the socket.
    async fn greeting_server<F, Fut>(then: F) -> SocketAddr
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 mx.example.test ESMTP\r\n").await.unwrap();
            then(s).await;
        });
        addr
    }

    /// Polls `idle_usable` until it turns false (bounded, not timed).
    async fn becomes_unusable(c: &mut Connection) -> bool {
        for _ in 0..1000 {
            if !c.idle_usable() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn idle_connection_closed_by_the_remote_is_not_usable() {
        let addr = greeting_server(|s| async move { drop(s) }).await;
        let mut c = Connection::connect("mx", addr, T).await.unwrap().unwrap();
        assert!(becomes_unusable(&mut c).await);
    }

    #[tokio::test]
    async fn idle_connection_with_an_unsolicited_421_is_not_usable() {
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = greeting_server(|mut s| async move {
            s.write_all(b"421 4.4.2 idle timeout\r\n").await.unwrap();
            // Keep the socket open: the reply alone must end its use.
            let _ = hold_rx.await;
        })
        .await;
        let mut c = Connection::connect("mx", addr, T).await.unwrap().unwrap();
        assert!(becomes_unusable(&mut c).await);
        drop(hold_tx);
    }

    #[tokio::test]
    async fn idle_connection_that_stays_open_is_usable_and_still_answers() {
        let addr = greeting_server(|s| async move {
            let mut rd = tokio::io::BufReader::new(s);
            let mut line = String::new();
            use tokio::io::AsyncBufReadExt;
            rd.read_line(&mut line).await.unwrap();
            assert_eq!(line, "NOOP\r\n");
            rd.get_mut().write_all(b"250 2.0.0 ok\r\n").await.unwrap();
            rd.read_line(&mut line).await.unwrap();
        })
        .await;
        let mut c = Connection::connect("mx", addr, T).await.unwrap().unwrap();
        for _ in 0..20 {
            assert!(c.idle_usable());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = c.command("NOOP", "the NOOP reply").await.unwrap();
        assert_eq!(r.code, 250);
        assert!(c.idle_usable());
    }

    #[test]
    fn extensions_and_codes() {
        let r = SmtpReply {
            code: 250,
            lines: vec![
                "mx.example.test".into(),
                "SIZE 1000".into(),
                "STARTTLS".into(),
                "AUTH LOGIN PLAIN".into(),
                "PIPELINING".into(),
            ],
        };
        let e = Extensions::parse(&r);
        assert!(e.starttls && e.pipelining && e.auth_plain && e.auth_login);
        assert_eq!(e.size, Some(1000));
        let r = SmtpReply {
            code: 550,
            lines: vec!["5.1.1 no such user".into()],
        };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(r.one_line(), "550 5.1.1 no such user");
    }
}
