//! Proof of address: one-time codes sent to the address a message was
//! stored for, attempts and lockout, and the sessions a proven recipient
//! comes back with. Kept in the audit database beside the messages, so
//! any node serving the portal sees the same codes, counts and sessions.
//!
//! - A code is 6 digits, valid for [`CODE_LIFETIME`]; only a keyed hash
//!   (HMAC-SHA256 under a key derived from the master key) is stored, so
//!   the database alone cannot be searched for it. A new code replaces the
//!   previous one.
//! - Codes are rate-limited per link: one per [`RESEND_INTERVAL`], at most
//!   [`CODES_PER_HOUR`] an hour.
//! - [`MAX_FAILURES`] wrong codes lock the link for [`LOCK_TIME`]; the
//!   count starts again after a success or a lock.
//! - A session is a 128-bit random token (only its hash stored), bound to
//!   the message and the client address it was proven from, ending after
//!   [`SESSION_IDLE`] without use or [`SESSION_MAX`] after it began. A
//!   session presented from another address is refused (the recipient
//!   asks for a new code): a stolen cookie is useless elsewhere, at the
//!   cost of a new code when a phone changes networks.
//!
//! Comparisons of secrets are constant-time; lookups go by hash.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ring::hmac;
use sqlx::{AnyPool, Row};

use super::store::{StoreError, after, from_unix, unix};

/// How long a code can be used.
pub const CODE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
/// The least time between two codes for one link.
pub const RESEND_INTERVAL: chrono::Duration = chrono::Duration::seconds(60);
/// Codes one link may be sent in an hour.
pub const CODES_PER_HOUR: i64 = 5;
/// Wrong codes that lock a link.
pub const MAX_FAILURES: i64 = 5;
/// How long a locked link stays locked.
pub const LOCK_TIME: chrono::Duration = chrono::Duration::minutes(30);
/// A session ends after this long unused...
pub const SESSION_IDLE: chrono::Duration = chrono::Duration::minutes(30);
/// ...and this long after it began, whatever its use.
pub const SESSION_MAX: chrono::Duration = chrono::Duration::hours(12);

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS portal_access (\
     message_id TEXT PRIMARY KEY, \
     code_hash TEXT, \
     code_expires BIGINT, \
     failures BIGINT NOT NULL, \
     locked_until BIGINT, \
     codes_window_start BIGINT NOT NULL, \
     codes_in_window BIGINT NOT NULL, \
     last_code_at BIGINT)",
    "CREATE TABLE IF NOT EXISTS portal_sessions (\
     token_hash TEXT PRIMARY KEY, \
     message_id TEXT NOT NULL, \
     client TEXT NOT NULL, \
     created_at BIGINT NOT NULL, \
     last_seen BIGINT NOT NULL)",
];

/// Why a code was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRefused {
    /// Too soon or too many: try again at this time.
    RateLimited(DateTime<Utc>),
    /// Too many wrong codes: locked until then.
    Locked(DateTime<Utc>),
}

/// What checking a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Right: a new session, whose token goes in the cookie.
    Session(String),
    /// Wrong; this many attempts are left before the link locks.
    Wrong { left: i64 },
    /// Wrong, and now locked until then (the event to audit).
    NowLocked(DateTime<Utc>),
    /// Locked already, until then: the code was not even compared.
    Locked(DateTime<Utc>),
    /// No code is valid (none sent, expired, or used).
    NoCode,
}

/// The codes and sessions of the store's messages.
pub struct Access {
    pool: AnyPool,
    url: String,
    /// HMAC key for codes and session tokens, derived from the master key.
    key: hmac::Key,
}

impl Access {
    pub(super) fn new(pool: AnyPool, url: String, master: &[u8; 32]) -> Access {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"sealgate portal access v1");
        // One HMAC-SHA256 key length never exceeds HKDF's output limit.
        let prk = salt.extract(master);
        let okm = prk
            .expand(&[b"codes and sessions"], hmac::HMAC_SHA256)
            .unwrap_or_else(|_| unreachable!());
        Access {
            pool,
            url,
            key: hmac::Key::from(okm),
        }
    }

    fn db(&self, action: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |e| StoreError::Database {
            url: self.url.clone(),
            action,
            reason: e.to_string(),
        }
    }

    /// What is hashed of a secret: bound to its message and purpose.
    fn mac_input(purpose: &str, message_id: &str, secret: &str) -> Vec<u8> {
        // Each part length-prefixed: no two triples give the same input.
        let mut input = Vec::new();
        for part in [purpose, message_id, secret] {
            let len = u64::try_from(part.len()).unwrap_or(u64::MAX);
            input.extend_from_slice(&len.to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        input
    }

    /// The keyed hash of a secret (hex), as stored.
    fn mac(&self, purpose: &str, message_id: &str, secret: &str) -> String {
        let tag = hmac::sign(&self.key, &Self::mac_input(purpose, message_id, secret));
        hex::encode(tag.as_ref())
    }

    /// Whether `secret` is the one `stored` is the hash of (constant-time,
    /// by ring's HMAC verification).
    fn mac_matches(&self, purpose: &str, message_id: &str, secret: &str, stored: &str) -> bool {
        hex::decode(stored).is_ok_and(|tag| {
            hmac::verify(
                &self.key,
                &Self::mac_input(purpose, message_id, secret),
                &tag,
            )
            .is_ok()
        })
    }

    async fn row(&self, message_id: &str) -> Result<AccessRow, StoreError> {
        let row = sqlx::query(
            "SELECT locked_until, codes_window_start, codes_in_window, last_code_at FROM portal_access WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("reading a link's codes"))?;
        let Some(r) = row else {
            return Ok(AccessRow::default());
        };
        let get = self.db("reading a link's codes");
        Ok(AccessRow {
            locked_until: r
                .try_get::<Option<i64>, _>(0)
                .map_err(&get)?
                .and_then(from_unix),
            window_start: from_unix(r.try_get(1).map_err(&get)?).unwrap_or_default(),
            in_window: r.try_get::<i64, _>(2).map_err(&get)?.max(0),
            last_code_at: r
                .try_get::<Option<i64>, _>(3)
                .map_err(&get)?
                .and_then(from_unix),
        })
    }

    /// The link's row, created empty when missing.
    async fn ensure_row(&self, message_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO portal_access (message_id, failures, codes_window_start, codes_in_window) VALUES ($1, 0, 0, 0) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(message_id)
        .execute(&self.pool)
        .await
        .map_err(self.db("recording a link's codes"))?;
        Ok(())
    }

    /// A new code for `message_id`, unless the link is locked or asked too
    /// often; the caller mails it to the message's recipient. Two requests
    /// at once cannot both pass the limits: the update is conditional on
    /// the state it was decided on.
    pub async fn issue_code(
        &self,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<String, CodeRefused>, StoreError> {
        self.ensure_row(message_id).await?;
        let a = self.row(message_id).await?;
        if let Some(until) = a.locked_until.filter(|u| *u > now) {
            return Ok(Err(CodeRefused::Locked(until)));
        }
        if let Some(last) = a.last_code_at.filter(|l| after(*l, RESEND_INTERVAL) > now) {
            return Ok(Err(CodeRefused::RateLimited(after(last, RESEND_INTERVAL))));
        }
        let (window_start, in_window) = if after(a.window_start, chrono::Duration::hours(1)) <= now
        {
            (now, 0)
        } else {
            (a.window_start, a.in_window)
        };
        if in_window >= CODES_PER_HOUR {
            return Ok(Err(CodeRefused::RateLimited(after(
                window_start,
                chrono::Duration::hours(1),
            ))));
        }
        let code = six_digits();
        let r = sqlx::query(
            "UPDATE portal_access SET code_hash = $1, code_expires = $2, last_code_at = $3, codes_window_start = $4, codes_in_window = $5 WHERE message_id = $6 AND codes_in_window = $7 AND codes_window_start = $8 AND (locked_until IS NULL OR locked_until <= $9)",
        )
        .bind(self.mac("code", message_id, &code))
        .bind(unix(now + CODE_LIFETIME))
        .bind(unix(now))
        .bind(unix(window_start))
        .bind(in_window + 1)
        .bind(message_id)
        .bind(a.in_window)
        .bind(unix(a.window_start))
        .bind(unix(now))
        .execute(&self.pool)
        .await
        .map_err(self.db("recording a link's codes"))?;
        if r.rows_affected() == 0 {
            // Another request sent one just now, or wrong codes locked
            // the link meanwhile.
            let again = self.row(message_id).await?;
            if let Some(until) = again.locked_until.filter(|u| *u > now) {
                return Ok(Err(CodeRefused::Locked(until)));
            }
            return Ok(Err(CodeRefused::RateLimited(now + RESEND_INTERVAL)));
        }
        Ok(Ok(code))
    }

    /// Checks `code` for `message_id`, proven from `client`. Every attempt
    /// is counted before the comparison, and compared only against the
    /// code the counting statement itself returned, so requests in
    /// parallel get at most [`MAX_FAILURES`] comparisons per lock, and the
    /// one that passes the limit always sets the lock.
    pub async fn verify_code(
        &self,
        message_id: &str,
        code: &str,
        client: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<Verified, StoreError> {
        self.ensure_row(message_id).await?;
        let Some(counted) = self.count_attempt(message_id, now).await? else {
            // Locked, or no live code: nothing to compare against, and
            // nothing counted (guessing then reveals nothing, and counting
            // it would let anyone with the link keep the recipient out).
            let a = self.row(message_id).await?;
            return Ok(match a.locked_until.filter(|u| *u > now) {
                Some(until) => Verified::Locked(until),
                None => Verified::NoCode,
            });
        };
        if counted.failures > MAX_FAILURES {
            // Others in parallel used up the attempts: no comparison. This
            // request may still be the one that sets the lock (before the
            // request that reached the limit): then it reports NowLocked,
            // so every lock is reported exactly once.
            return self.lock(message_id, now).await;
        }
        let live = counted
            .code_hash
            .filter(|_| counted.code_expires.is_some_and(|e| e > now));
        let typed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let right = live
            .as_ref()
            .is_some_and(|stored| self.mac_matches("code", message_id, &typed, stored));
        if right {
            return self.use_code(message_id, &typed, client, now).await;
        }
        if counted.failures >= MAX_FAILURES {
            return self.lock(message_id, now).await;
        }
        if live.is_none() {
            return Ok(Verified::NoCode);
        }
        Ok(Verified::Wrong {
            left: MAX_FAILURES - counted.failures,
        })
    }

    /// Counts one attempt unless the link is locked or has no live code,
    /// returning the count and the code as they are after it; `None`
    /// when locked or without a code.
    async fn count_attempt(
        &self,
        message_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Counted>, StoreError> {
        let row = sqlx::query(
            "UPDATE portal_access SET failures = failures + 1 WHERE message_id = $1 AND (locked_until IS NULL OR locked_until <= $2) AND code_hash IS NOT NULL AND code_expires > $2 RETURNING failures, code_hash, code_expires",
        )
        .bind(message_id)
        .bind(unix(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("checking a code"))?;
        let Some(r) = row else { return Ok(None) };
        let get = self.db("checking a code");
        Ok(Some(Counted {
            failures: r.try_get::<i64, _>(0).map_err(&get)?.max(0),
            code_hash: r.try_get(1).map_err(&get)?,
            code_expires: r
                .try_get::<Option<i64>, _>(2)
                .map_err(&get)?
                .and_then(from_unix),
        }))
    }

    /// Consumes the right code: only one of two requests with it wins.
    async fn use_code(
        &self,
        message_id: &str,
        typed: &str,
        client: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<Verified, StoreError> {
        let given = self.mac("code", message_id, typed);
        let used = sqlx::query(
            "UPDATE portal_access SET code_hash = NULL, code_expires = NULL, failures = 0 WHERE message_id = $1 AND code_hash = $2 AND (locked_until IS NULL OR locked_until <= $3)",
        )
        .bind(message_id)
        .bind(&given)
        .bind(unix(now))
        .execute(&self.pool)
        .await
        .map_err(self.db("checking a code"))?
        .rows_affected();
        if used == 0 {
            return Ok(Verified::NoCode);
        }
        Ok(Verified::Session(
            self.begin_session(message_id, client, now).await?,
        ))
    }

    /// Locks the link for [`LOCK_TIME`] unless a parallel request did;
    /// either way the lock in force is returned.
    async fn lock(&self, message_id: &str, now: DateTime<Utc>) -> Result<Verified, StoreError> {
        let until = now + LOCK_TIME;
        let set = sqlx::query(
            "UPDATE portal_access SET locked_until = $1, failures = 0, code_hash = NULL, code_expires = NULL WHERE message_id = $2 AND (locked_until IS NULL OR locked_until <= $3)",
        )
        .bind(unix(until))
        .bind(message_id)
        .bind(unix(now))
        .execute(&self.pool)
        .await
        .map_err(self.db("locking a link"))?
        .rows_affected();
        if set > 0 {
            return Ok(Verified::NowLocked(until));
        }
        let a = self.row(message_id).await?;
        Ok(Verified::Locked(
            a.locked_until.filter(|u| *u > now).unwrap_or(until),
        ))
    }

    async fn begin_session(
        &self,
        message_id: &str,
        client: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let token = super::seal::new_token();
        sqlx::query(
            "INSERT INTO portal_sessions (token_hash, message_id, client, created_at, last_seen) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.mac("session", message_id, &token))
        .bind(message_id)
        .bind(client.to_string())
        .bind(unix(now))
        .bind(unix(now))
        .execute(&self.pool)
        .await
        .map_err(self.db("starting a session"))?;
        Ok(token)
    }

    /// Whether `token` is a live session for `message_id` from `client`;
    /// a live one is kept alive.
    pub async fn session(
        &self,
        message_id: &str,
        token: &str,
        client: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let hash = self.mac("session", message_id, token);
        let row = sqlx::query(
            "SELECT client, created_at, last_seen FROM portal_sessions WHERE token_hash = $1 AND message_id = $2",
        )
        .bind(&hash)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db("reading a session"))?;
        let Some(r) = row else { return Ok(false) };
        let get = self.db("reading a session");
        let bound: String = r.try_get(0).map_err(&get)?;
        // A time out of range ends the session (fail closed).
        let (Some(created), Some(seen)) = (
            from_unix(r.try_get(1).map_err(&get)?),
            from_unix(r.try_get(2).map_err(&get)?),
        ) else {
            return Ok(false);
        };
        let same_client = bound.parse::<IpAddr>().is_ok_and(|b| b == client);
        // Times ahead of the clock (beyond one idle period of skew between
        // nodes) are not trusted: they would keep a session alive.
        let ahead = |t: DateTime<Utc>| t > after(now, SESSION_IDLE);
        let ended = after(created, SESSION_MAX) <= now || after(seen, SESSION_IDLE) <= now;
        if !same_client || ended || ahead(created) || ahead(seen) {
            return Ok(false);
        }
        sqlx::query("UPDATE portal_sessions SET last_seen = $1 WHERE token_hash = $2")
            .bind(unix(now))
            .bind(&hash)
            .execute(&self.pool)
            .await
            .map_err(self.db("keeping a session"))?;
        Ok(true)
    }
}

/// A link's attempt count and code, as counting an attempt left them.
struct Counted {
    failures: i64,
    code_hash: Option<String>,
    code_expires: Option<DateTime<Utc>>,
}

/// The state of one link's limits.
#[derive(Debug, Clone, Default)]
struct AccessRow {
    locked_until: Option<DateTime<Utc>>,
    window_start: DateTime<Utc>,
    in_window: i64,
    last_code_at: Option<DateTime<Utc>>,
}

/// Six random digits, uniform (rejection sampling on the OS CSPRNG).
fn six_digits() -> String {
    loop {
        let n = u32::from_le_bytes(crate::util::random_bytes::<4>());
        // The largest multiple of 10^6 below 2^32: no bias.
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

#[cfg(test)]
mod tests;
