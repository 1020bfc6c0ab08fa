//! Python's `http.server` over `ssl` (the standard library, Debian's
//! `python3`) as an HTTPS server we did not write: it serves one document
//! at every path (an MTA-STS policy, a key for a key directory), and
//! misbehaves on request. Its behaviour is read from
//! files at every request, so a test can change it while it runs:
//! `mode` (one of [`Mode`]), `body` (the document), `close` (present:
//! close after each response), and it appends each request's path to
//! `requests`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200, `text/plain`, Content-Length, connection kept open.
    Plain,
    /// 200, `text/plain`, the body in small chunks, connection kept open.
    Chunked,
    /// A `103 Early Hints` first, then as `Plain`.
    Informational,
    /// `text/html` instead of `text/plain`.
    WrongType,
    /// A chunk size of `ffffffffffffffff`, a few bytes, then close.
    HugeChunk,
    /// A chunked body of 200 KiB.
    Big,
    /// Waits 20 seconds before answering.
    Slow,
    /// 301 to another host.
    Redirect,
    /// 404, `text/plain`.
    NotFound,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Chunked => "chunked",
            Mode::Informational => "info",
            Mode::WrongType => "wrongtype",
            Mode::HugeChunk => "hugechunk",
            Mode::Big => "big",
            Mode::Slow => "slow",
            Mode::Redirect => "redirect",
            Mode::NotFound => "notfound",
        }
    }
}

const SCRIPT: &str = r#"
import http.server, os, ssl, sys, time

ip, port, cert, key, state = sys.argv[1:6]

def read(name, default=""):
    try:
        with open(os.path.join(state, name)) as f:
            return f.read()
    except FileNotFoundError:
        return default

def read_bytes(name):
    try:
        with open(os.path.join(state, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with open(os.path.join(state, "requests"), "a") as f:
            f.write(self.path + "\n")
        mode = read("mode", "plain").strip()
        body = read_bytes("body")
        # Keep-alive whatever the client asked for: the body's framing,
        # not the end of the connection, must end the response.
        self.close_connection = False
        if read("close"):
            self.close_connection = True
        if mode == "slow":
            time.sleep(20)
        if mode == "info":
            self.send_response_only(103)
            self.send_header("Link", "</policy.css>; rel=preload")
            self.end_headers()
        if mode == "redirect":
            self.send_response(301)
            self.send_header("Location", "https://elsewhere.example.test/.well-known/mta-sts.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404 if mode == "notfound" else 200)
        if self.close_connection:
            self.send_header("Connection", "close")
        ctype = "text/html" if mode == "wrongtype" else "text/plain; charset=utf-8"
        self.send_header("Content-Type", ctype)
        if mode in ("chunked", "hugechunk", "big"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if mode == "hugechunk":
                self.wfile.write(b"ffffffffffffffff\r\n" + body[:10] + b"\r\n0\r\n\r\n")
                self.close_connection = True
            else:
                data = b"x" * (200 * 1024) if mode == "big" else body
                step = 4096 if mode == "big" else 7
                for i in range(0, len(data), step):
                    piece = data[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.wfile.flush()

httpd = http.server.ThreadingHTTPServer((ip, int(port)), Handler)
httpd.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

/// A running Python HTTPS server.
pub struct PyHttps {
    child: Option<Child>,
    pub addr: SocketAddr,
    state: PathBuf,
}

impl PyHttps {
    /// Starts on `ip:port` with the certificate and key files given, and
    /// waits (bounded) until it accepts connections.
    pub async fn start(
        ip: Ipv4Addr,
        port: u16,
        cert: &Path,
        key: &Path,
        state: &Path,
        mode: Mode,
        body: &str,
    ) -> Result<PyHttps> {
        std::fs::create_dir_all(state)?;
        let addr = SocketAddr::from((ip, port));
        let server = PyHttps {
            child: None,
            addr,
            state: state.to_path_buf(),
        };
        server.set(mode, body)?;
        let child = Command::new("python3")
            .args(["-c", SCRIPT, &ip.to_string(), &port.to_string()])
            .arg(cert)
            .arg(key)
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 http.server")?;
        let mut server = server;
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if let Some(c) = server.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("python3 http.server on {addr} exited at start: {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("python3 http.server on {addr} did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Changes what the next requests get.
    pub fn set(&self, mode: Mode, body: &str) -> Result<()> {
        self.set_bytes(mode, body.as_bytes())
    }

    /// Like [`PyHttps::set`] with a binary document (an OpenPGP key).
    pub fn set_bytes(&self, mode: Mode, body: &[u8]) -> Result<()> {
        std::fs::write(self.state.join("body"), body)?;
        std::fs::write(self.state.join("mode"), mode.name())?;
        Ok(())
    }

    /// Closes each connection after its response (`Connection: close`)
    /// instead of keeping it open.
    pub fn close_after_each(&self) -> Result<()> {
        std::fs::write(self.state.join("close"), "1")?;
        Ok(())
    }

    /// The paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("requests"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for PyHttps {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
