//! The test "world": a private PKI, a DNS server, remote SMTP servers (MXs) and a small
//! SMTP client, all on 127.0.0.1, for the integration tests.
#![allow(dead_code, unused_imports)]

pub mod aiosmtpd;
pub mod client;
pub mod dns;
pub mod knot;
pub mod mx;
pub mod pki;
pub mod pyhttps;
pub mod sink;
pub mod unbound;

pub use aiosmtpd::Aiosmtpd;
pub use client::SmtpClient;
pub use dns::{Behaviour, DnsServer, Zone};
pub use mx::{MxOptions, Received, Script, TestMx, TlsInfo};
pub use pki::{TestCa, TestCert};
pub use sink::{Sink, SinkMessage};

/// Any bidirectional async byte stream (plain TCP or TLS), boxed by the servers/clients.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
