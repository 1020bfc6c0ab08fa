//! A small HTTPS GET for policy and key directories (MTA-STS, later WKD):
//! HTTP/1.1 over rustls, names resolved through the configured resolver,
//! certificates checked against the configured roots, no redirects, a size
//! limit and a time limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The IP address it came from.
    pub peer: String,
}

/// Fetches `https://{host}{path}` (port 443) within `timeout`, refusing
/// bodies larger than `max_body`.
pub async fn get(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, String> {
    tokio::time::timeout(timeout, request(resolver, tls, host, path, None, max_body))
        .await
        .map_err(|_| {
            format!(
                "https://{host}{path}: timed out after {}",
                crate::util::format_duration(timeout)
            )
        })?
}

/// POSTs `body` with `content_type` to `https://{host}{path}` (port 443).
pub async fn post(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Fetched, String> {
    tokio::time::timeout(
        timeout,
        request(
            resolver,
            tls,
            host,
            path,
            Some((content_type, body)),
            64 * 1024,
        ),
    )
    .await
    .map_err(|_| {
        format!(
            "https://{host}{path}: timed out after {}",
            crate::util::format_duration(timeout)
        )
    })?
}

async fn request(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
    post: Option<(&str, &[u8])>,
    max_body: usize,
) -> Result<Fetched, String> {
    let url = format!("https://{host}{path}");
    let addrs = crate::outbound::route::host_addrs(resolver, host, 443)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{url}: {host} has no address records"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{url}: connecting to {addr}: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let agent = concat!("sealgate/", env!("CARGO_PKG_VERSION"));
    let req = match post {
        None => format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        ),
        Some((ct, body)) => format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some((_, body)) = post {
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    }
    let limit = max_body + 16 * 1024;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // Servers often close TLS without close_notify; what we have counts.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("{url}: {e}")),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > limit {
            return Err(format!("{url}: response larger than {max_body} bytes"));
        }
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{url}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: malformed status line"))?;
    let mut content_type = None;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(v.trim().to_string()),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "content-length" => length = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let mut body = raw[head_end + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| format!("{url}: malformed chunked body"))?;
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(format!("{url}: body shorter than Content-Length"));
        }
        body.truncate(n);
    }
    if body.len() > max_body {
        return Err(format!("{url}: response larger than {max_body} bytes"));
    }
    Ok(Fetched {
        status,
        content_type,
        body,
        peer: addr.ip().to_string(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk() {
        assert_eq!(
            super::dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(super::dechunk(b"ff\r\nshort\r\n"), None);
    }
}
