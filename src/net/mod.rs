//! What the probes and delivery share, beneath both: the resolvers (plain
//! and DNSSEC-validating) and MX routes, DANE's TLSA records and
//! certificate check, the TLS client configurations and verifiers, HTTPS
//! fetches with bounded reads, and MTA-STS policies with their cache.
//!
//! `probe/` asks these what a destination can receive; `outbound/` uses
//! the same answers to send. Neither imports the other: code here imports
//! only `config`, `capability` and `util`.

pub mod dane;
pub mod https;
pub mod mta_sts;
pub mod route;
pub mod tls;
