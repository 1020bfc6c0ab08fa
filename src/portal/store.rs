//! The portal store: messages kept for pickup, encrypted (see `seal`), in
//! the audit database (SQLite or PostgreSQL, the same statements), so any
//! node sharing the database can serve them.
//!
//! A message is a row in `portal_messages` (who, when, until when, the
//! wrapped data key, the token's hash) and its content in
//! `portal_chunks`, one sealed chunk per row: storing and reading stream
//! chunk by chunk, so memory does not grow with the message.
//!
//! Storing writes the row first as `storing` (no key), then the chunks,
//! then the wrapped key with the state `active`: a crash in between leaves
//! a row no link opens, which [`PortalStore::sweep`] removes. Expiry and
//! revocation destroy the wrapped key first, in one statement, so the
//! content is unreadable from that moment; the chunks are deleted after
//! it, and the row itself [`ROW_RETENTION`] later (until then its link
//! shows "expired" or "revoked"). SQLite connections overwrite what they
//! delete (`secure_delete`) and the write-ahead log is truncated after a
//! sweep; PostgreSQL tables are vacuumed. Copies made before (backups,
//! WAL archives) still hold the wrapped keys: with `link_bound` they open
//! nothing without the recipient's link.
//!
//! The wrapped key is bound to its row's facts (`seal::Binding`): a
//! database writer without the master key cannot point another link, a
//! later expiry or another recipient at a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use super::seal::{self, CHUNK, DataKey, SealError};
use crate::queue::ContentReader;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("portal store {url}: {action} failed: {reason}")]
    Database {
        url: String,
        action: &'static str,
        reason: String,
    },
    #[error("[portal] master_key_file: {0}")]
    MasterKey(String),
    #[error("portal store: reading the spooled message: {0}")]
    Spool(String),
    #[error("portal store: message {0}: {1}")]
    Sealed(String, SealError),
    #[error(
        "portal store: message {0} was wrapped by a master key that is no longer in the key file"
    )]
    UnknownMasterKey(String),
    #[error("portal store: message {id} is damaged: {reason}")]
    Damaged { id: String, reason: String },
    #[error("portal store: message {0} was revoked or removed while it was being stored")]
    Gone(String),
    #[error(
        "portal store: the message would expire at {0}, which is not in the future ([portal] expiry)"
    )]
    Expiry(DateTime<Utc>),
}

/// States of a stored message.
const STORING: &str = "storing";
const ACTIVE: &str = "active";
const EXPIRED: &str = "expired";
const REVOKED: &str = "revoked";

/// How long a message may stay half-stored before the sweep removes it.
const STORING_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Messages whose chunks one sweep deletes at most (the rest next time).
const PURGE_BATCH: i64 = 100;

/// The least time between two VACUUMs of the PostgreSQL tables.
const VACUUM_INTERVAL: Duration = Duration::from_secs(600);

/// How long the row of a destroyed message stays (its link says
/// "expired" or "revoked"); then sender and recipient go too.
pub const ROW_RETENTION: Duration = Duration::from_secs(30 * 86400);

/// Key of the PostgreSQL advisory lock that serialises creating the tables
/// across nodes starting at once ("sgportal").
const SCHEMA_LOCK_KEY: i64 = 0x7367_706f_7274_616c;

fn schema(blob: &str) -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS portal_messages (\
         id TEXT PRIMARY KEY, \
         queue_id TEXT NOT NULL, \
         sender TEXT NOT NULL, \
         recipient TEXT NOT NULL, \
         created_at BIGINT NOT NULL, \
         expires_at BIGINT NOT NULL, \
         state TEXT NOT NULL, \
         token_hash TEXT NOT NULL UNIQUE, \
         link_bound BIGINT NOT NULL, \
         master_key_id TEXT NOT NULL, \
         wrapped_key TEXT, \
         size BIGINT NOT NULL, \
         chunks BIGINT NOT NULL, \
         destroyed_at BIGINT)"
            .to_string(),
        "CREATE INDEX IF NOT EXISTS portal_messages_expiry ON portal_messages (state, expires_at)"
            .to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS portal_chunks (\
             message_id TEXT NOT NULL, \
             seq BIGINT NOT NULL, \
             data {blob} NOT NULL, \
             PRIMARY KEY (message_id, seq))"
        ),
    ]
}

/// What is known of a message before it is stored.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub expires_at: DateTime<Utc>,
}

/// A stored message, and the link that opens it (given once, never
/// stored: only its hash is; never in a Debug output).
#[derive(Clone)]
pub struct Stored {
    pub id: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub size: u64,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("id", &self.id)
            .field("token", &"..")
            .field("expires_at", &self.expires_at)
            .field("size", &self.size)
            .finish()
    }
}

/// A message found by its link, its key unwrapped.
#[derive(Debug)]
pub struct Opened {
    pub id: String,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub size: u64,
    chunks: u64,
    key: DataKey,
}

/// What a link leads to.
#[derive(Debug)]
pub enum Pickup {
    /// The message, readable.
    Open(Opened),
    /// It expired; nothing of it can be read any more.
    Expired,
    /// The sender (or an operator) revoked it.
    Revoked,
    /// No message has this link.
    Unknown,
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Messages whose key was destroyed because they expired.
    pub expired: u64,
    /// Messages whose content was deleted.
    pub purged: u64,
    /// Half-stored messages removed.
    pub abandoned: u64,
    /// Rows of destroyed messages removed after their retention.
    pub forgotten: u64,
}

/// See the module documentation.
pub struct PortalStore {
    pool: AnyPool,
    url: String,
    /// The master keys, current first (the key file's order); empty for
    /// a store opened for expiry and revocation only.
    masters: Vec<[u8; 32]>,
    link_bound: bool,
    postgres: bool,
    /// Deleted data not yet scrubbed (a busy checkpoint, a vacuum put off).
    scrub_pending: AtomicBool,
    last_vacuum: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Creates the tables, under an advisory lock on PostgreSQL (two nodes
/// creating them at once would collide).
async fn create_tables(pool: &AnyPool, postgres: bool) -> Result<(), sqlx::Error> {
    let blob = if postgres { "BYTEA" } else { "BLOB" };
    // One transaction: the PostgreSQL lock is released with it, whatever
    // fails, and a half-created schema is never left behind.
    let mut tx = pool.begin().await?;
    if postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
    }
    let access = super::access::SCHEMA.iter().map(|s| s.to_string());
    for stmt in schema(blob).into_iter().chain(access) {
        sqlx::query(&stmt).execute(&mut *tx).await?;
    }
    tx.commit().await
}

impl std::fmt::Debug for PortalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortalStore({})", self.url)
    }
}

pub(super) fn unix(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

pub(super) fn from_unix(s: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(s, 0)
}

/// `t + d`, the latest time there is when that overflows: a stored time
/// far out of range limits (rate limit, lock) rather than panics.
pub(super) fn after(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `now` less `d`, the earliest time there is when that underflows (so a
/// clock or a row far out of range never panics a sweep).
fn before(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).map_or(DateTime::<Utc>::MIN_UTC, |d| before_by(now, d))
}

fn before_by(now: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    now.checked_sub_signed(d)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl PortalStore {
    /// Opens the store in `database_url` (the audit database), creating
    /// its tables when missing. `masters` are the master keys, the
    /// current one first; with `link_bound`, new messages' keys are
    /// wrapped under the pickup token too.
    pub async fn open(
        database_url: &str,
        masters: Vec<[u8; 32]>,
        link_bound: bool,
    ) -> Result<PortalStore, StoreError> {
        if masters.is_empty() {
            return Err(StoreError::MasterKey("holds no key".into()));
        }
        Self::open_with(database_url, masters, link_bound).await
    }

    /// The store without master keys: expiry and revocation only (they
    /// destroy keys, which needs none), so that a missing or broken key
    /// file never keeps an expired message alive.
    pub async fn open_keyless(database_url: &str) -> Result<PortalStore, StoreError> {
        Self::open_with(database_url, Vec::new(), false).await
    }

    async fn open_with(
        database_url: &str,
        masters: Vec<[u8; 32]>,
        link_bound: bool,
    ) -> Result<PortalStore, StoreError> {
        sqlx::any::install_default_drivers();
        let url = crate::audit::redact_url(database_url);
        let postgres = database_url.starts_with("postgres");
        let connect = if database_url.starts_with("sqlite") && !database_url.contains("mode=") {
            let sep = if database_url.contains('?') { '&' } else { '?' };
            format!("{database_url}{sep}mode=rwc")
        } else {
            database_url.to_string()
        };
        let err = |action, e: sqlx::Error| StoreError::Database {
            url: url.clone(),
            action,
            reason: e.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // What is deleted is overwritten, not left in free
                        // pages for a copy of the file to show.
                        sqlx::query("PRAGMA secure_delete = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect)
            .await
            .map_err(|e| err("connecting", e))?;
        create_tables(&pool, postgres)
            .await
            .map_err(|e| err("creating the tables", e))?;
        Ok(PortalStore {
            pool,
            url: url.clone(),
            masters,
            link_bound,
            postgres,
            scrub_pending: AtomicBool::new(false),
            last_vacuum: std::sync::Mutex::new(None),
        })
    }

    fn db(&self, action: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |e| StoreError::Database {
            url: self.url.clone(),
            action,
            reason: e.to_string(),
        }
    }

    /// The codes and sessions of the stored messages (keyed by the current
    /// master key: a rotation ends outstanding codes and sessions).
    pub fn access(&self) -> Result<super::access::Access, StoreError> {
        Ok(super::access::Access::new(
            self.pool.clone(),
            self.url.clone(),
            self.current_master()?,
        ))
    }

    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> AnyPool {
        self.pool.clone()
    }

    fn current_master(&self) -> Result<&[u8; 32], StoreError> {
        self.masters.first().ok_or_else(|| {
            StoreError::MasterKey("not loaded (the store was opened for expiry only)".into())
        })
    }

    /// Stores the content `reader` yields for one recipient, chunk by
    /// chunk; returns the message's id and its link.
    pub async fn store(
        &self,
        deposit: &Deposit,
        mut reader: ContentReader,
    ) -> Result<Stored, StoreError> {
        if deposit.expires_at <= Utc::now() {
            return Err(StoreError::Expiry(deposit.expires_at));
        }
        let id = hex::encode(crate::util::random_bytes::<16>());
        let token = seal::new_token();
        let key = DataKey::generate();
        let master = self.current_master()?;
        let token_hash = seal::token_hash(&token);
        sqlx::query(
            "INSERT INTO portal_messages (id, queue_id, sender, recipient, created_at, expires_at, state, token_hash, link_bound, master_key_id, size, chunks) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0)",
        )
        .bind(&id)
        .bind(&deposit.queue_id)
        .bind(&deposit.sender)
        .bind(&deposit.recipient)
        .bind(unix(Utc::now()))
        .bind(unix(deposit.expires_at))
        .bind(STORING)
        .bind(&token_hash)
        .bind(i64::from(self.link_bound))
        .bind(seal::master_key_id(master))
        .execute(&self.pool)
        .await
        .map_err(self.db("storing a message"))?;

        let mut buf: Vec<u8> = Vec::with_capacity(2 * CHUNK);
        let mut seq: u64 = 0;
        let mut size: u64 = 0;
        loop {
            let next = reader
                .next_chunk()
                .await
                .map_err(|e| StoreError::Spool(e.to_string()))?;
            let Some(bytes) = next else { break };
            size = size.saturating_add(bytes.len() as u64);
            buf.extend_from_slice(&bytes);
            // A full chunk is sealed only once more follows: the last one
            // carries the last flag, whatever its length.
            while buf.len() > CHUNK {
                let rest = buf.split_off(CHUNK);
                self.put_chunk(&key, &id, seq, false, &buf).await?;
                buf = rest;
                seq += 1;
            }
        }
        self.put_chunk(&key, &id, seq, true, &buf).await?;
        let token_for_wrap = self.link_bound.then_some(token.as_str());
        let chunks = seq + 1;
        let (size_db, chunks_db) = match (i64::try_from(size), i64::try_from(chunks)) {
            (Ok(s), Ok(c)) => (s, c),
            _ => {
                return Err(StoreError::Damaged {
                    id,
                    reason: "too large to store".into(),
                });
            }
        };
        let binding = seal::Binding {
            id: &id,
            token_hash: &token_hash,
            sender: &deposit.sender,
            recipient: &deposit.recipient,
            expires_at: unix(deposit.expires_at),
            size,
            chunks,
        };
        let wrapped = seal::wrap(master, token_for_wrap, &binding, &key);
        let done = sqlx::query(
            "UPDATE portal_messages SET state = $1, wrapped_key = $2, size = $3, chunks = $4 WHERE id = $5 AND state = $6",
        )
        .bind(ACTIVE)
        .bind(hex::encode(wrapped))
        .bind(size_db)
        .bind(chunks_db)
        .bind(&id)
        .bind(STORING)
        .execute(&self.pool)
        .await
        .map_err(self.db("storing a message"))?
        .rows_affected();
        if done != 1 {
            // Revoked or swept meanwhile: no link may be given out.
            self.purge(&id).await?;
            return Err(StoreError::Gone(id));
        }
        Ok(Stored {
            id,
            token,
            expires_at: deposit.expires_at,
            size,
        })
    }

    async fn put_chunk(
        &self,
        key: &DataKey,
        id: &str,
        seq: u64,
        last: bool,
        plain: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = seal::seal_chunk(key, id, seq, last, plain);
        sqlx::query("INSERT INTO portal_chunks (message_id, seq, data) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(sealed)
            .execute(&self.pool)
            .await
            .map_err(self.db("storing a message"))?;
        Ok(())
    }

    /// The message `token` leads to. An expired message whose key the
    /// sweep has not destroyed yet counts as expired already.
    pub async fn pickup(&self, token: &str) -> Result<Pickup, StoreError> {
        let token_hash = seal::token_hash(token);
        let row = sqlx::query(
            "SELECT id, queue_id, sender, recipient, created_at, expires_at, state, link_bound, master_key_id, wrapped_key, size, chunks FROM portal_messages WHERE token_hash = $1",
        )
        .bind(&token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("looking up a link"))?;
        let Some(row) = row else {
            return Ok(Pickup::Unknown);
        };
        let get = self.db("reading a message");
        let id: String = row.try_get(0).map_err(&get)?;
        let damaged = |reason: &str| StoreError::Damaged {
            id: id.clone(),
            reason: reason.to_string(),
        };
        let state: String = row.try_get(6).map_err(&get)?;
        let expires_raw: i64 = row.try_get(5).map_err(&get)?;
        let expires_at =
            from_unix(expires_raw).ok_or_else(|| damaged("its expiry is out of range"))?;
        match state.as_str() {
            REVOKED => return Ok(Pickup::Revoked),
            EXPIRED => return Ok(Pickup::Expired),
            ACTIVE if expires_at <= Utc::now() => return Ok(Pickup::Expired),
            ACTIVE => {}
            // Half stored: no link has been given out for it yet.
            _ => return Ok(Pickup::Unknown),
        }
        let bound: i64 = row.try_get(7).map_err(&get)?;
        let master_id: String = row.try_get(8).map_err(&get)?;
        let wrapped: Option<String> = row.try_get(9).map_err(&get)?;
        let wrapped = wrapped.ok_or_else(|| damaged("its key is missing"))?;
        let wrapped = hex::decode(wrapped).map_err(|_| damaged("its key is unreadable"))?;
        let size = u64::try_from(row.try_get::<i64, _>(10).map_err(&get)?)
            .map_err(|_| damaged("its size is negative"))?;
        let chunks = u64::try_from(row.try_get::<i64, _>(11).map_err(&get)?)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| damaged("it has no content"))?;
        let sender: String = row.try_get(2).map_err(&get)?;
        let recipient: String = row.try_get(3).map_err(&get)?;
        let master = self
            .masters
            .iter()
            .find(|m| seal::master_key_id(m) == master_id)
            .ok_or_else(|| StoreError::UnknownMasterKey(id.clone()))?;
        let binding = seal::Binding {
            id: &id,
            token_hash: &token_hash,
            sender: &sender,
            recipient: &recipient,
            expires_at: expires_raw,
            size,
            chunks,
        };
        let key = seal::unwrap(master, (bound != 0).then_some(token), &binding, &wrapped)
            .map_err(|e| StoreError::Sealed(id.clone(), e))?;
        let created_at = from_unix(row.try_get(4).map_err(&get)?)
            .ok_or_else(|| damaged("its creation time is out of range"))?;
        Ok(Pickup::Open(Opened {
            queue_id: row.try_get(1).map_err(&get)?,
            sender,
            recipient,
            created_at,
            expires_at,
            size,
            chunks,
            key,
            id,
        }))
    }

    /// Chunk `seq` of an opened message, decrypted; `None` past the end.
    /// A message revoked or expired since it was opened reads no further;
    /// a missing or altered chunk is an error, never short content.
    pub async fn chunk(&self, msg: &Opened, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if seq >= msg.chunks {
            return Ok(None);
        }
        let gone = || StoreError::Damaged {
            id: msg.id.clone(),
            reason: format!("chunk {seq} is not readable (revoked, expired or deleted)"),
        };
        let now = Utc::now();
        if msg.expires_at <= now {
            return Err(gone());
        }
        let seq_db = i64::try_from(seq).map_err(|_| gone())?;
        let row = sqlx::query(
            "SELECT c.data FROM portal_chunks c JOIN portal_messages m ON m.id = c.message_id WHERE c.message_id = $1 AND c.seq = $2 AND m.state = $3 AND m.expires_at > $4",
        )
        .bind(&msg.id)
        .bind(seq_db)
        .bind(ACTIVE)
        .bind(unix(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("reading a message"))?;
        let Some(row) = row else {
            return Err(gone());
        };
        let sealed: Vec<u8> = row.try_get(0).map_err(self.db("reading a message"))?;
        let last = seq + 1 == msg.chunks;
        seal::open_chunk(&msg.key, &msg.id, seq, last, sealed)
            .map(Some)
            .map_err(|e| StoreError::Sealed(msg.id.clone(), e))
    }

    /// Revokes message `id`: its key is destroyed at once, its sessions
    /// end, its content is deleted after. Returns whether it was readable
    /// until now (a message still being stored is destroyed too, but was
    /// not readable).
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let readable = self.destroy_key(id, ACTIVE).await?;
        if !readable {
            self.destroy_key(id, STORING).await?;
        }
        self.end_sessions(id).await?;
        self.purge(id).await?;
        self.scrub().await;
        Ok(readable)
    }

    /// Destroys the key of `id` if it is in `from`; whether it did.
    async fn destroy_key(&self, id: &str, from: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE portal_messages SET wrapped_key = NULL, state = $1, destroyed_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(REVOKED)
        .bind(unix(Utc::now()))
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await
        .map_err(self.db("destroying a message key"))?;
        Ok(r.rows_affected() > 0)
    }

    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM portal_chunks WHERE message_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(self.db("deleting a message's content"))?;
        Ok(())
    }

    /// Ends every session of a message.
    pub async fn end_sessions(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM portal_sessions WHERE message_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(self.db("ending sessions"))?;
        Ok(())
    }

    /// After deletions: SQLite's write-ahead log truncated (what it held of
    /// deleted pages goes), PostgreSQL's tables vacuumed (dead row versions
    /// with destroyed keys go). Best effort: a failure is logged.
    async fn scrub(&self) {
        if self.postgres {
            self.vacuum().await;
        } else {
            self.truncate_wal().await;
        }
    }

    /// SQLite: moves the write-ahead log into the file (where
    /// `secure_delete` has zeroed what was deleted) and truncates it. A
    /// checkpoint kept from finishing by a reader is retried next sweep.
    async fn truncate_wal(&self) {
        match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_optional(&self.pool)
            .await
        {
            Ok(row) => {
                // Unreadable counts as busy: retried, never taken as done.
                let busy = row.and_then(|r| r.try_get::<i64, _>(0).ok()).unwrap_or(1);
                if busy != 0 {
                    self.scrub_pending.store(true, Ordering::Relaxed);
                    tracing::debug!(url = %self.url, "portal store: write-ahead log busy, truncated next sweep");
                }
            }
            Err(e) => {
                self.scrub_pending.store(true, Ordering::Relaxed);
                tracing::warn!(url = %self.url, error = %e, "portal store: could not truncate the write-ahead log");
            }
        }
    }

    /// PostgreSQL: VACUUM, at most once per [`VACUUM_INTERVAL`] (the rest
    /// waits for a later sweep). It makes the dead rows' space reusable;
    /// their bytes stay on disk until PostgreSQL reuses the page.
    async fn vacuum(&self) {
        let due = {
            let mut last = self.last_vacuum.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= VACUUM_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if !due {
            self.scrub_pending.store(true, Ordering::Relaxed);
            return;
        }
        for stmt in ["VACUUM portal_messages", "VACUUM portal_chunks"] {
            if let Err(e) = sqlx::query(stmt).execute(&self.pool).await {
                self.scrub_pending.store(true, Ordering::Relaxed);
                tracing::warn!(url = %self.url, error = %e, "portal store: could not vacuum deleted data");
            }
        }
    }

    /// Expiry: destroys the keys of every message past its expiry (one
    /// statement), deletes the content of messages whose key is gone (a
    /// bounded batch per sweep) and any content without a message, removes
    /// messages left half-stored by a crash and rows destroyed more than
    /// [`ROW_RETENTION`] ago, and ends sessions past their lifetime.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<Swept, StoreError> {
        let expired = sqlx::query(
            "UPDATE portal_messages SET wrapped_key = NULL, state = $1, destroyed_at = $2 WHERE state = $3 AND expires_at <= $4",
        )
        .bind(EXPIRED)
        .bind(unix(now))
        .bind(ACTIVE)
        .bind(unix(now))
        .execute(&self.pool)
        .await
        .map_err(self.db("expiring messages"))?
        .rows_affected();
        let stale = before(now, STORING_GRACE);
        let abandoned: Vec<String> =
            sqlx::query("SELECT id FROM portal_messages WHERE state = $1 AND created_at <= $2")
                .bind(STORING)
                .bind(unix(stale))
                .fetch_all(&self.pool)
                .await
                .map_err(self.db("expiring messages"))?
                .iter()
                .filter_map(|r| r.try_get(0).ok())
                .collect();
        let mut removed = 0u64;
        for id in &abandoned {
            // Only what is still half-stored: a store that finished since
            // the select keeps its content.
            let hit = sqlx::query("DELETE FROM portal_messages WHERE id = $1 AND state = $2")
                .bind(id)
                .bind(STORING)
                .execute(&self.pool)
                .await
                .map_err(self.db("expiring messages"))?
                .rows_affected();
            if hit > 0 {
                self.purge(id).await?;
                removed += 1;
            }
        }
        let destroyed: Vec<String> = sqlx::query(
            "SELECT DISTINCT m.id FROM portal_messages m JOIN portal_chunks c ON c.message_id = m.id WHERE m.wrapped_key IS NULL AND m.state IN ($1, $2) LIMIT $3",
        )
        .bind(EXPIRED)
        .bind(REVOKED)
        .bind(PURGE_BATCH)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db("expiring messages"))?
        .iter()
        .filter_map(|r| r.try_get(0).ok())
        .collect();
        for id in &destroyed {
            self.purge(id).await?;
        }
        let rows = [
            // Content whose message row is gone (a store that lost a race).
            "DELETE FROM portal_chunks WHERE NOT EXISTS (SELECT 1 FROM portal_messages m WHERE m.id = portal_chunks.message_id)",
            "DELETE FROM portal_access WHERE NOT EXISTS (SELECT 1 FROM portal_messages m WHERE m.id = portal_access.message_id AND m.state = 'active')",
        ];
        for stmt in rows {
            sqlx::query(stmt)
                .execute(&self.pool)
                .await
                .map_err(self.db("expiring messages"))?;
        }
        let forgotten = sqlx::query(
            "DELETE FROM portal_messages WHERE state IN ($1, $2) AND destroyed_at <= $3 AND NOT EXISTS (SELECT 1 FROM portal_chunks c WHERE c.message_id = portal_messages.id)",
        )
        .bind(EXPIRED)
        .bind(REVOKED)
        .bind(unix(before(now, ROW_RETENTION)))
        .execute(&self.pool)
        .await
        .map_err(self.db("expiring messages"))?
        .rows_affected();
        sqlx::query("DELETE FROM portal_sessions WHERE created_at <= $1 OR last_seen <= $2")
            .bind(unix(before_by(now, super::access::SESSION_MAX)))
            .bind(unix(before_by(now, super::access::SESSION_IDLE)))
            .execute(&self.pool)
            .await
            .map_err(self.db("removing old sessions"))?;
        let swept = Swept {
            expired,
            purged: destroyed.len() as u64,
            abandoned: removed,
            forgotten,
        };
        // SQLite checkpoints every sweep (cheap when the log is empty): a
        // revocation by another process (`sealgate portal revoke`) whose
        // checkpoint was busy is truncated here.
        let pending = self.scrub_pending.swap(false, Ordering::Relaxed);
        if swept != Swept::default() || pending || !self.postgres {
            self.scrub().await;
        }
        Ok(swept)
    }
}

#[cfg(test)]
pub(super) mod tests;
