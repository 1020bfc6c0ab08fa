//! sealgate: an SMTP relay/gateway that keeps protected health information
//! from leaving an organisation in the clear.
//!
//! The modules follow the data path; read them in this order to follow one
//! message: `inbound` → `queue` → `policy` → `probe` → `encrypt` →
//! `outbound` → `audit`.
//! `config` turns TOML into runtime settings, `cli` holds the subcommands.

pub mod audit;
pub mod capability;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod encrypt;
pub mod inbound;
pub mod outbound;
pub mod policy;
pub mod probe;
pub mod queue;
pub mod server;
pub mod util;
