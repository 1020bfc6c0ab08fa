//! A minimal SMTP client for driving servers in tests (the test MX, or sealgate's
//! inbound listener). Every read has a timeout (10 s by default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Io;

/// A reply: code and the text lines joined with `\n` (without the code prefixes).
pub type Reply = (u16, String);

pub struct SmtpClient {
    rd: BufReader<Box<dyn Io>>,
    /// The greeting reply read by `connect`.
    pub greeting: Reply,
    /// Timeout for each reply.
    pub timeout: Duration,
    /// Negotiated TLS version after `starttls`.
    pub tls_version: Option<rustls::ProtocolVersion>,
}

impl std::fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpClient")
            .field("greeting", &self.greeting)
            .field("tls_version", &self.tls_version)
            .finish()
    }
}

impl SmtpClient {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Result<SmtpClient> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect {addr} timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        let _ = stream.set_nodelay(true);
        let mut c = SmtpClient {
            rd: BufReader::new(Box::new(stream)),
            greeting: (0, String::new()),
            timeout: Duration::from_secs(10),
            tls_version: None,
        };
        c.greeting = c.read_reply().await.context("reading greeting")?;
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let mut text: Vec<String> = Vec::new();
            loop {
                let mut line = String::new();
                let n = self.rd.read_line(&mut line).await?;
                if n == 0 {
                    bail!("connection closed while reading reply (got {text:?})");
                }
                let line = line.trim_end_matches(['\r', '\n']);
                if line.len() < 3 {
                    bail!("malformed reply line {line:?}");
                }
                let code: u16 = line
                    .get(..3)
                    .unwrap_or("")
                    .parse()
                    .with_context(|| format!("malformed reply line {line:?}"))?;
                let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
                text.push(line.get(4..).unwrap_or("").to_string());
                if sep != b'-' {
                    return Ok((code, text.join("\n")));
                }
            }
        })
        .await
        .context("timed out waiting for SMTP reply")?
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.rd.get_mut();
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// Sends `line` + CRLF and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Result<Reply> {
        self.send_raw(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// Like [`SmtpClient::cmd`] but fails unless the reply code is `expect`.
    pub async fn expect(&mut self, line: &str, expect: u16) -> Result<Reply> {
        let r = self.cmd(line).await?;
        if r.0 != expect {
            bail!("{line:?}: expected {expect}, got {} {}", r.0, r.1);
        }
        Ok(r)
    }

    /// EHLO; returns the capability keywords (uppercased first word of each line after
    /// the first, e.g. "STARTTLS", "SIZE").
    pub async fn ehlo(&mut self, name: &str) -> Result<Vec<String>> {
        let (_, text) = self.expect(&format!("EHLO {name}"), 250).await?;
        Ok(text
            .lines()
            .skip(1)
            .map(|l| l.split(' ').next().unwrap_or("").to_ascii_uppercase())
            .collect())
    }

    /// Sends STARTTLS, expects 220, then does the TLS handshake with `cfg` and SNI
    /// `server_name`.
    pub async fn starttls(
        self,
        cfg: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<SmtpClient> {
        let mut this = self;
        this.expect("STARTTLS", 220).await?;
        if !this.rd.buffer().is_empty() {
            bail!("server sent data after 220 to STARTTLS");
        }
        let name = ServerName::try_from(server_name.to_string())?;
        let io = this.rd.into_inner();
        let tls = tokio::time::timeout(
            this.timeout,
            tokio_rustls::TlsConnector::from(cfg).connect(name, io),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        let version = tls.get_ref().1.protocol_version();
        Ok(SmtpClient {
            rd: BufReader::new(Box::new(tls)),
            greeting: this.greeting,
            timeout: this.timeout,
            tls_version: version,
        })
    }

    /// DATA, then the dot-stuffed `body` (a CRLF is added if missing) and the final dot;
    /// returns the final reply. Fails if DATA is not answered 354.
    pub async fn data(&mut self, body: &[u8]) -> Result<Reply> {
        let r = self.cmd("DATA").await?;
        if r.0 != 354 {
            bail!("DATA: expected 354, got {} {}", r.0, r.1);
        }
        self.send_raw(&dot_stuff(body)).await?;
        self.read_reply().await
    }

    /// MAIL FROM, RCPT TO for each, DATA; fails on any unexpected reply code before the
    /// end of data and returns the final reply.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> Result<Reply> {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await?;
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250).await?;
        }
        self.data(body).await
    }

    pub async fn quit(mut self) -> Result<()> {
        self.cmd("QUIT").await?;
        Ok(())
    }
}

/// Dot-stuffs `body`, ensures it ends with CRLF and appends ".\r\n".
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        if out.ends_with(b"\n") {
            out.pop();
        }
        if !out.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}
