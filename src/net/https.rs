//! HTTPS requests to policy and key directories (MTA-STS, WKD, keyservers)
//! and TLS-RPT endpoints: hyper's HTTP/1.1 client connection over our
//! rustls stream. Every one of these servers is chosen by a recipient
//! domain, so nothing here trusts them: names are resolved through the
//! configured resolver and every address is tried in turn, certificates
//! are checked against the configured roots, the response head and body
//! are bounded in size, the whole request in time, and redirects are never
//! followed (a 3xx is returned as it is).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use tokio::time::Instant;

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The IP address it came from.
    pub peer: String,
}

impl Fetched {
    /// Whether the media type is `text/plain` (parameters such as
    /// `charset` allowed), as RFC 8461 section 3.2 asks of an MTA-STS
    /// policy.
    pub fn is_text_plain(&self) -> bool {
        self.content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
        })
    }
}

/// Why a request failed. Each message starts with the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("https://{authority}{path}: not a valid URL: {reason}")]
    BadUrl {
        authority: String,
        path: String,
        reason: String,
    },
    #[error("{url}: {reason}")]
    Resolve { url: String, reason: String },
    #[error("{url}: {host} has no address records")]
    NoAddress { url: String, host: String },
    #[error("{url}: no address of the host could be reached ({tries})")]
    Connect {
        url: String,
        tries: String,
        /// An address completed the TCP connection and refused the TLS
        /// session because its certificate did not verify for the host
        /// (RFC 8460's `sts-webpki-invalid` for an MTA-STS policy host).
        bad_certificate: bool,
    },
    #[error("{url}: the server at {peer} sent a malformed HTTP response: {reason}")]
    Protocol {
        url: String,
        peer: SocketAddr,
        reason: String,
    },
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: timed out after {after}")]
    Timeout { url: String, after: String },
}

/// Largest response head (status line and header fields) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// At most this many addresses of one host are tried.
const MAX_ADDRESSES: usize = 16;
/// Largest response body to a POST (TLS-RPT servers answer with little).
const MAX_POST_ANSWER: usize = 64 * 1024;

/// Fetches `https://{authority}{path}` within `timeout`, refusing bodies
/// larger than `max_body`. `authority` is a host name or address with an
/// optional `:port` (443 by default). Kept with a `String` error for the
/// key directory callers; see [`fetch`].
pub async fn get(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    authority: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, String> {
    fetch(resolver, tls, authority, path, None, timeout, max_body)
        .await
        .map_err(|e| e.to_string())
}

/// POSTs `body` with `content_type` to `https://{authority}{path}`.
pub async fn post(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    authority: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Fetched, String> {
    fetch(
        resolver,
        tls,
        authority,
        path,
        Some((content_type, body)),
        timeout,
        MAX_POST_ANSWER,
    )
    .await
    .map_err(|e| e.to_string())
}

/// One request (a GET, or a POST when `post` is given), bounded by
/// `timeout` as a whole.
pub async fn fetch(
    resolver: &hickory_resolver::TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    authority: &str,
    path: &str,
    post: Option<(&str, &[u8])>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, HttpsError> {
    let url = format!("https://{authority}{path}");
    let deadline = Instant::now() + timeout;
    let work = async {
        let (host, port) = split_authority(authority).map_err(|reason| HttpsError::BadUrl {
            authority: authority.to_string(),
            path: path.to_string(),
            reason,
        })?;
        let request =
            build_request(authority, path, post).map_err(|reason| HttpsError::BadUrl {
                authority: authority.to_string(),
                path: path.to_string(),
                reason,
            })?;
        let addrs = super::route::host_addrs(resolver, &host, port)
            .await
            .map_err(|e| HttpsError::Resolve {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if addrs.is_empty() {
            return Err(HttpsError::NoAddress {
                url: url.clone(),
                host,
            });
        }
        fetch_from(&addrs, &host, tls, request, max_body, deadline, &url).await
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| HttpsError::Timeout {
            url: url.clone(),
            after: crate::util::format_duration(timeout),
        })?
}

/// `host[:port]` or `[v6][:port]` into the name to resolve and verify
/// (without brackets) and the port.
fn split_authority(authority: &str) -> Result<(String, u16), String> {
    if authority.contains(['@', '/', '?', '#']) || authority.is_empty() {
        return Err("expected a host name with an optional port".into());
    }
    let a: http::uri::Authority = authority.parse().map_err(|e| format!("{e}"))?;
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host name".into());
    }
    // What follows the host is nothing or `:port` (http's parser leaves
    // a port it cannot read out rather than refusing it).
    let port = match authority.get(a.host().len()..).unwrap_or_default() {
        "" => 443,
        rest => rest
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port `{}` is not 1-65535", rest.trim_start_matches(':')))?,
    };
    Ok((host.to_string(), port))
}

fn build_request(
    authority: &str,
    path: &str,
    post: Option<(&str, &[u8])>,
) -> Result<http::Request<Full<Bytes>>, String> {
    if !path.starts_with('/') {
        return Err("the path must start with `/`".into());
    }
    let agent = concat!("sealgate/", env!("CARGO_PKG_VERSION"));
    let builder = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, agent)
        // One request per connection: the server may close after it.
        .header(http::header::CONNECTION, "close");
    let request = match post {
        None => builder
            .method(http::Method::GET)
            .header(http::header::ACCEPT, "text/plain, */*")
            .body(Full::new(Bytes::new())),
        Some((ct, body)) => builder
            .method(http::Method::POST)
            .header(http::header::CONTENT_TYPE, ct)
            .body(Full::new(Bytes::copy_from_slice(body))),
    };
    request.map_err(|e| e.to_string())
}

/// Tries each address in turn until one completes the TLS handshake, then
/// sends the request there. An address that refuses, does not answer or
/// fails the handshake passes to the next; each gets an equal share of the
/// time left for the connection, so one that never answers cannot use up
/// the others' time. Once a server has answered the handshake its answer
/// (or failure) is final: a request is never sent twice.
async fn fetch_from(
    addrs: &[SocketAddr],
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
    deadline: Instant,
    url: &str,
) -> Result<Fetched, HttpsError> {
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        HttpsError::Resolve {
            url: url.to_string(),
            reason: format!("`{host}` cannot be checked against a certificate: {e}"),
        }
    })?;
    let addrs = &addrs[..addrs.len().min(MAX_ADDRESSES)];
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut tries = Vec::new();
    let mut bad_certificate = false;
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        // `addrs` holds at most MAX_ADDRESSES entries.
        let share = left / (addrs.len() - i) as u32;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| (format!("{addr}: {e}"), false))?;
            connector.connect(name.clone(), tcp).await.map_err(|e| {
                let certificate = matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                    Some(rustls::Error::InvalidCertificate(_))
                );
                (format!("{addr}: TLS: {e}"), certificate)
            })
        };
        let stream = match tokio::time::timeout(share, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err((e, certificate))) => {
                bad_certificate |= certificate;
                tries.push(e);
                continue;
            }
            Err(_) => {
                tries.push(format!(
                    "{addr}: no answer within {}",
                    crate::util::format_duration(share)
                ));
                continue;
            }
        };
        return exchange(stream, request, max_body, *addr, url).await;
    }
    Err(HttpsError::Connect {
        url: url.to_string(),
        tries: tries.join("; "),
        bad_certificate,
    })
}

/// One request and its response over an established stream, with hyper's
/// HTTP/1.1 client (informational 1xx answers are skipped by it).
async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
    peer: SocketAddr,
    url: &str,
) -> Result<Fetched, HttpsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |reason: String| HttpsError::Protocol {
        url: url.to_string(),
        peer,
        reason,
    };
    let too_large = || HttpsError::TooLarge {
        url: url.to_string(),
        limit: max_body,
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD.max(8192))
        // Names are case-insensitive, but small servers (report
        // collectors, key directories) do not all know it.
        .title_case_headers(true)
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let work = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // A declared length over the limit is refused before reading it.
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    protocol(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Fetched {
            status,
            content_type,
            body: body.to_vec(),
            peer: peer.ip().to_string(),
        })
    };
    // The connection is driven here, not in a task of its own, so that
    // when the caller's timeout drops this future the socket goes too.
    tokio::pin!(work);
    tokio::pin!(conn);
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut work => return r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                // A clean end still lets `work` take what was read.
                if let Err(e) = c {
                    return Err(protocol(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("mta-sts.example.org"),
            Ok(("mta-sts.example.org".into(), 443))
        );
        assert_eq!(
            split_authority("reports.example.org:8443"),
            Ok(("reports.example.org".into(), 8443))
        );
        assert_eq!(split_authority("[::1]:4443"), Ok(("::1".into(), 4443)));
        assert_eq!(split_authority("127.0.0.1"), Ok(("127.0.0.1".into(), 443)));
        for bad in [
            "",
            "user@example.org",
            "example.org:0",
            "example.org:99999",
            "example.org/x",
            "exa mple.org",
        ] {
            assert!(split_authority(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_types() {
        let f = |ct: Option<&str>| Fetched {
            status: 200,
            content_type: ct.map(str::to_string),
            body: Vec::new(),
            peer: String::new(),
        };
        assert!(f(Some("text/plain")).is_text_plain());
        assert!(f(Some("Text/Plain; charset=utf-8")).is_text_plain());
        assert!(!f(Some("text/html")).is_text_plain());
        assert!(!f(Some("text/plainx")).is_text_plain());
        assert!(!f(None).is_text_plain());
    }

    /// A TLS server on 127.0.0.1 that answers every request with `answer`
    /// (raw bytes, then the connection stays open unless `close`).
    struct RawServer {
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for RawServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn raw_server(answer: Vec<u8>, close: bool) -> RawServer {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let provider = crate::net::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls.write_all(&answer).await;
                    let _ = tls.flush().await;
                    if close {
                        let _ = tls.shutdown().await;
                    } else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                });
            }
        });
        RawServer {
            addr,
            client: Arc::new(client),
            task,
        }
    }

    async fn ask(s: &RawServer, addrs: &[SocketAddr], max: usize) -> Result<Fetched, HttpsError> {
        let req = build_request("127.0.0.1", "/.well-known/mta-sts.txt", None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        tokio::time::timeout_at(
            deadline,
            fetch_from(
                addrs,
                "127.0.0.1",
                s.client.clone(),
                req,
                max,
                deadline,
                "u",
            ),
        )
        .await
        .unwrap_or(Err(HttpsError::Timeout {
            url: "u".into(),
            after: "5s".into(),
        }))
    }

    #[tokio::test]
    async fn a_huge_chunk_size_is_an_error_not_a_panic() {
        let s = raw_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            true,
        )
        .await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(
            matches!(e, HttpsError::Protocol { .. } | HttpsError::TooLarge { .. }),
            "{e}"
        );
        let s = raw_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc\r\n"
                .to_vec(),
            true,
        )
        .await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::Protocol { .. }), "{e}");
    }

    #[tokio::test]
    async fn chunked_keep_alive_and_informational_answers() {
        // A 1xx first, then a chunked body; the server keeps the
        // connection open: the body's end is the last chunk, not EOF.
        let s = raw_server(
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
                .to_vec(),
            false,
        )
        .await;
        let f = ask(&s, &[s.addr], 1024).await.unwrap();
        assert_eq!(f.status, 200);
        assert_eq!(f.body, b"hello world");
        assert!(f.is_text_plain());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let big = "x".repeat(2000);
        let declared = format!("HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n{big}");
        let s = raw_server(declared.into_bytes(), true).await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::TooLarge { .. }), "{e}");
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n"
        );
        let s = raw_server(chunked.into_bytes(), true).await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::TooLarge { .. }), "{e}");
        let closed = format!("HTTP/1.1 200 OK\r\n\r\n{big}");
        let s = raw_server(closed.into_bytes(), true).await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn every_address_is_tried() {
        let s = raw_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
        .await;
        // A port nothing listens on (bound, then released).
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let f = ask(&s, &[refused, s.addr], 1024).await.unwrap();
        assert_eq!(f.body, b"ok");
        let e = ask(&s, &[refused], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_head_without_end_is_bounded() {
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..5000 {
            endless.extend_from_slice(format!("X-Filler-{i}: yes\r\n").as_bytes());
        }
        let s = raw_server(endless, false).await;
        let e = ask(&s, &[s.addr], 1024).await.unwrap_err();
        assert!(matches!(e, HttpsError::Protocol { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_port_in_the_authority_is_used() {
        let s = raw_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
        .await;
        let resolver = hickory_resolver::Resolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::new(),
            hickory_resolver::name_server::TokioConnectionProvider::default(),
        )
        .build();
        let authority = format!("127.0.0.1:{}", s.addr.port());
        let f = get(
            &resolver,
            s.client.clone(),
            &authority,
            "/x",
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap();
        assert_eq!(f.body, b"ok");
    }
}
