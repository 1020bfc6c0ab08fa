//! The secure portal: the method for recipients who can receive neither
//! end-to-end encryption nor verified TLS. The message is stored
//! encrypted (`seal`, `store`) and the recipient picks it up in the
//! browser after proving control of the address.
//!
//! Built so far: the encrypted store (chunked AES-256-GCM under a fresh
//! data key per message, wrapped by the master key, optionally bound to
//! the pickup link; expiry and revocation destroy the key at once and the
//! content after). The notification, the web pages and replies are still
//! to come (issue 11).

pub mod access;
pub mod seal;
pub mod store;

use crate::config::PortalSettings;
use crate::queue::SpoolKey;
pub use store::{PortalStore, StoreError};

/// How often expired messages are looked for.
const EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Destroys the keys of expired messages and then their content, every
/// [`EXPIRY_INTERVAL`], for as long as the daemon runs. It needs no master
/// key (a broken key file never keeps a message alive); a store that
/// cannot be opened (database down) is tried again the next round.
pub async fn expiry_loop(database_url: String) {
    let mut store = None;
    loop {
        if store.is_none() {
            match PortalStore::open_keyless(&database_url).await {
                Ok(s) => store = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "portal store unavailable; expired messages are destroyed once it is back")
                }
            }
        }
        if let Some(s) = &store {
            match s.sweep(chrono::Utc::now()).await {
                Ok(swept) if swept != store::Swept::default() => tracing::info!(
                    expired = swept.expired,
                    purged = swept.purged,
                    abandoned = swept.abandoned,
                    "portal expiry: keys of expired messages destroyed, content deleted"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "portal expiry failed; tried again next round")
                }
            }
        }
        tokio::time::sleep(EXPIRY_INTERVAL).await;
    }
}

/// Opens the store in the audit database with the master keys of
/// `[portal] master_key_file` (a key file like the spool key's, current
/// key first). Refused when it holds any key of the spool key file
/// (`spool_key_file`, read here): a copy of it is as bad as the file.
pub async fn open_store(
    database_url: &str,
    portal: &PortalSettings,
    spool_key_file: &std::path::Path,
) -> Result<PortalStore, StoreError> {
    let key = SpoolKey::load(&portal.master_key_file).map_err(|e| match e {
        crate::queue::SpoolError::Key { path, reason } => {
            StoreError::MasterKey(format!("{}: {reason}", path.display()))
        }
        other => StoreError::MasterKey(other.to_string()),
    })?;
    let spool = SpoolKey::load(spool_key_file)
        .map_err(|e| StoreError::MasterKey(format!("checking it against the spool key: {e}")))?;
    if shares_a_key(key.raw_keys(), spool.raw_keys()) {
        return Err(StoreError::MasterKey(SHARED_WITH_SPOOL.into()));
    }
    PortalStore::open(database_url, key.raw_keys().to_vec(), portal.link_bound).await
}

/// Why a master key file that holds a spool key is refused.
pub const SHARED_WITH_SPOOL: &str = "holds a key of the spool key file: give the portal a key of its own (`sealgate keygen --out FILE`), so that one leaked key does not open both";

/// Whether the two key lists have a key in common (constant-time per
/// comparison: the keys are secrets).
pub fn shares_a_key(a: &[[u8; 32]], b: &[[u8; 32]]) -> bool {
    let mut shared = false;
    for x in a {
        for y in b {
            shared |= crate::util::constant_time_eq(x, y);
        }
    }
    shared
}
