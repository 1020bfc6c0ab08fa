//! Inbound: the SMTP listener. Accepts connections on every `listen`
//! address, enforces relay control and limits, and hands each accepted
//! message to the queue as a [`crate::queue::QueuedMessage`].
//!
//! Shape follows mini-redis: a semaphore caps sessions, each session is a
//! task, shutdown is a watch channel every task selects on.

pub mod auth;
pub mod command;
pub mod connector;
pub mod data;
pub mod reply;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::Settings;
use crate::queue::Queue;

/// What every session shares.
pub struct InboundContext {
    pub settings: Arc<Settings>,
    pub queue: Queue,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub users: auth::Users,
    /// Failed AUTH attempts per client and overall, shared by all sessions.
    pub lockout: auth::Lockout,
    /// Cloud connectors a client certificate may identify.
    pub connectors: connector::Connectors,
    /// Where listener events (an AUTH lockout) are recorded.
    pub auditor: crate::audit::Auditor,
}

/// Errors starting the listener.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server.tls: {0}")]
    Tls(String),
}

/// Builds the STARTTLS acceptor from `[server.tls]`: TLS 1.2 and 1.3 only.
/// With `client_certs` (the connectors' verifier) a client certificate is
/// asked for, never required.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<tokio_rustls::TlsAcceptor, InboundError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| InboundError::Tls(format!("cannot read certificate {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| InboundError::Tls(format!("bad certificate in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(InboundError::Tls(format!(
            "no certificate found in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        InboundError::Tls(format!("cannot read private key {}: {e}", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| InboundError::Tls(e.to_string()))?;
    let config = match client_certs {
        Some(v) => config.with_client_cert_verifier(v),
        None => config.with_no_client_auth(),
    };
    let config = config.with_single_cert(certs, key).map_err(|e| {
        InboundError::Tls(format!(
            "certificate and key do not match or are unusable: {e}"
        ))
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds every listen address (so start-up fails early and clearly).
pub async fn bind(settings: &Settings) -> Result<Vec<TcpListener>, InboundError> {
    let mut out = Vec::new();
    for addr in &settings.server.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| InboundError::Bind {
                addr: *addr,
                source,
            })?;
        out.push(l);
    }
    Ok(out)
}

/// `now + d`, or the far future when a configured duration is too long
/// to add (an `Instant` overflow would panic).
pub(crate) fn later(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86400);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Counts sessions per client IP.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }
    fn leave(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Accepts connections on `listeners` until `shutdown` turns true, then
/// waits (up to 30 s) for running sessions to finish.
pub async fn serve(
    ctx: Arc<InboundContext>,
    listeners: Vec<TcpListener>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ctx.settings.server.limits.clone();
    let sessions = Arc::new(Semaphore::new(limits.max_sessions));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let ctx = ctx.clone();
        let sessions = sessions.clone();
        let per_ip = per_ip.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = shutdown.changed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ip = crate::config::canonical_ip(peer.ip());
                let Ok(permit) = sessions.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %peer, "too many sessions; refusing connection");
                    refuse(stream, "421 4.3.2 Too many connections, try again later\r\n");
                    continue;
                };
                if !per_ip.enter(ip, limits.max_sessions_per_ip) {
                    tracing::warn!(peer = %peer, "too many sessions from this address; refusing connection");
                    refuse(stream, "421 4.7.0 Too many connections from your address\r\n");
                    continue;
                }
                let ctx = ctx.clone();
                let per_ip = per_ip.clone();
                let shutdown = shutdown.clone();
                running.spawn(async move {
                    session::Session::new(ctx, stream, peer, shutdown).run().await;
                    per_ip.leave(ip);
                    drop(permit);
                });
                // Reap finished sessions so the set does not grow.
                while running.try_join_next().is_some() {}
            }
            let drain = async { while running.join_next().await.is_some() {} };
            if tokio::time::timeout(std::time::Duration::from_secs(30), drain).await.is_err() {
                running.abort_all();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn refuse(mut stream: tokio::net::TcpStream, text: &'static str) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.write_all(text.as_bytes()),
        )
        .await;
    });
}
