//! One integration test crate (links once): the real sealgate binary on
//! loopback against a test world of DNS, MX hosts, a private CA and
//! databases.

mod audit_db;
mod common;
mod config_check;
mod connectors;
mod dane;
mod delivery;
mod dnssec_hostile;
mod dnssec_world;
mod faults;
mod gateway;
mod inbound;
mod pgp;
mod policy;
mod portal;
mod sandbox;
mod smarthost;
mod sts;
mod sts_http;
mod world;
mod world_selftest;
