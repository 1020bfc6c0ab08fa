//! The database side: connecting through `sqlx::Any`, the schema, appending
//! to the chain and reading rows back. One code path for SQLite and
//! PostgreSQL; the few differences are named by [`Backend`].

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Row};

use super::AuditEvent;
use super::chain::{GENESIS_HASH, StoredRow};
use super::error::{AuditError, redact_url};

/// Key of the PostgreSQL advisory lock that serialises appends across every
/// sealgate node sharing one database ("sealgate" in ASCII).
const CHAIN_LOCK_KEY: i64 = 0x7365_616c_6761_7465;

/// Column list for SELECTs, in [`super::chain::COLUMNS`] order.
const SELECT_COLUMNS: &str = "seq, event_id, ts, queue_id, message_id, sender, recipient, \
     outcome, method, tls_requirement, policy_rule, policy_version, remote_host, remote_ip, \
     tls_version, tls_cipher, smtp_reply, body_sha256, evidence, prev_hash, row_hash";

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(url: &str) -> Result<Backend, AuditError> {
        let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(AuditError::UnsupportedUrl {
                url: redact_url(url),
            }),
        }
    }
}

/// A pool on the audit database plus what we need to talk about it.
pub(crate) struct Db {
    pool: AnyPool,
    /// What the pool connects with (has the password; never printed).
    connect_url: String,
    backend: Backend,
    /// The URL with its password removed, for messages.
    url: String,
}

impl Db {
    /// A pool that connects on first use, for the writer: the database may
    /// be down at start-up. SQLite files are created when missing.
    pub(crate) fn lazy(url: &str, acquire_timeout: Duration) -> Result<Db, AuditError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let connect_url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            // One writer task: a second connection would only contend.
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .connect_lazy(&connect_url)
            .map_err(|source| AuditError::Unreachable {
                url: redact_url(url),
                source,
            })?;
        Ok(Db {
            pool,
            connect_url,
            backend,
            url: redact_url(url),
        })
    }

    /// Connects now, for the read-only tools (`verify`, `export`). Never
    /// creates a SQLite file: a wrong path must fail, not verify empty.
    pub(crate) async fn open(url: &str) -> Result<Db, AuditError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        // One plain attempt first: the pool would keep retrying a refused
        // connection until its time-out, and an administrator running
        // `verify` wants the answer now.
        let probe =
            sqlx::AnyConnection::connect(url)
                .await
                .map_err(|source| AuditError::Unreachable {
                    url: redact_url(url),
                    source,
                })?;
        // Closing can only fail if the connection already broke; the pool
        // below reports that.
        let _ = probe.close().await;
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| AuditError::Unreachable {
                url: redact_url(url),
                source,
            })?;
        Ok(Db {
            pool,
            connect_url: url.to_string(),
            backend,
            url: redact_url(url),
        })
    }

    /// The URL without password.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool's connections.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Replaces the pool's "timed out" by the reason it could not connect
    /// (refused, unknown host, ...), which is what an administrator needs.
    pub(crate) async fn explain(&self, error: AuditError, timeout: Duration) -> AuditError {
        let AuditError::Unreachable {
            source: sqlx::Error::PoolTimedOut,
            ..
        } = error
        else {
            return error;
        };
        match tokio::time::timeout(timeout, sqlx::AnyConnection::connect(&self.connect_url)).await {
            Ok(Err(source)) => AuditError::Unreachable {
                url: self.url.clone(),
                source,
            },
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                error
            }
            Err(_) => error,
        }
    }

    /// Maps a driver error to unreachable (nothing answered) or a failed
    /// statement.
    fn error(&self, action: &'static str, source: sqlx::Error) -> AuditError {
        match source {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Configuration(_) => AuditError::Unreachable {
                url: self.url.clone(),
                source,
            },
            source => AuditError::Database {
                url: self.url.clone(),
                action,
                source,
            },
        }
    }

    /// Creates or upgrades the schema (idempotent; PostgreSQL migrations
    /// take their own lock, so several nodes may start at once).
    pub(crate) async fn migrate(&self) -> Result<(), AuditError> {
        if self.backend == Backend::Sqlite {
            // WAL lets `verify` and `export` read while the daemon writes;
            // the setting is stored in the file, so once is enough.
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error("enabling WAL", e))?;
        }
        sqlx::migrate!("src/audit/migrations")
            .run(&self.pool)
            .await
            .map_err(|source| match source {
                sqlx::migrate::MigrateError::Execute(e) => self.error("schema migration", e),
                source => AuditError::Migrate {
                    url: self.url.clone(),
                    source,
                },
            })
    }

    /// Appends `events` to the chain in one transaction, in order, skipping
    /// any whose `event_id` is already stored. Returns how many rows were
    /// inserted.
    pub(crate) async fn append(&self, events: &[AuditEvent]) -> Result<u64, AuditError> {
        let mut tx = match self.backend {
            // Take the write lock before reading the head, so two writers
            // cannot both build on the same head.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(|e| self.error("starting a transaction", e))?;

        if self.backend == Backend::Postgres {
            // Released at commit or rollback. Cast because Any cannot
            // decode PostgreSQL's `void`.
            sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
                .bind(CHAIN_LOCK_KEY)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error("locking the audit chain", e))?;
        }

        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, row_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error("reading the chain head", e))?;
        let (mut seq, mut prev_hash) = head.unwrap_or((0, GENESIS_HASH.to_string()));

        let mut inserted = 0;
        for event in events {
            let row = StoredRow::from_event(seq + 1, &prev_hash, event);
            let existing = sqlx::query("SELECT seq FROM audit_log WHERE event_id = $1")
                .bind(&row.event_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error("looking up an event id", e))?;
            if existing.is_some() {
                continue;
            }
            sqlx::query(
                "INSERT INTO audit_log (seq, event_id, ts, queue_id, message_id, sender, \
                 recipient, outcome, method, tls_requirement, policy_rule, policy_version, \
                 remote_host, remote_ip, tls_version, tls_cipher, smtp_reply, body_sha256, \
                 evidence, prev_hash, row_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            )
            .bind(row.seq)
            .bind(&row.event_id)
            .bind(&row.ts)
            .bind(&row.queue_id)
            .bind(&row.message_id)
            .bind(&row.sender)
            .bind(&row.recipient)
            .bind(&row.outcome)
            .bind(&row.method)
            .bind(&row.tls_requirement)
            .bind(&row.policy_rule)
            .bind(&row.policy_version)
            .bind(&row.remote_host)
            .bind(&row.remote_ip)
            .bind(&row.tls_version)
            .bind(&row.tls_cipher)
            .bind(&row.smtp_reply)
            .bind(&row.body_sha256)
            .bind(&row.evidence)
            .bind(&row.prev_hash)
            .bind(&row.row_hash)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("inserting an audit row", e))?;
            seq = row.seq;
            prev_hash = row.row_hash;
            inserted += 1;
        }
        tx.commit()
            .await
            .map_err(|e| self.error("committing audit rows", e))?;
        Ok(inserted)
    }

    /// Up to `limit` rows with `seq > after`, in `seq` order.
    pub(crate) async fn page(&self, after: i64, limit: i64) -> Result<Vec<StoredRow>, AuditError> {
        let sql =
            format!("SELECT {SELECT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("reading audit_log", e))?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    /// The lowest `seq` whose `ts` is at or after `ts`, if any.
    pub(crate) async fn first_seq_since(&self, ts: &str) -> Result<Option<i64>, AuditError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM audit_log WHERE ts >= $1 ORDER BY seq LIMIT 1")
                .bind(ts)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error("reading audit_log", e))?;
        Ok(row.map(|(seq,)| seq))
    }

    /// Every row for one spool id, in `seq` order.
    pub(crate) async fn rows_for_queue_id(
        &self,
        queue_id: &str,
    ) -> Result<Vec<StoredRow>, AuditError> {
        let sql =
            format!("SELECT {SELECT_COLUMNS} FROM audit_log WHERE queue_id = $1 ORDER BY seq");
        let rows = sqlx::query(&sql)
            .bind(queue_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("reading audit_log", e))?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    fn decode(&self, row: &AnyRow) -> Result<StoredRow, AuditError> {
        let seq: i64 = row.try_get(0).map_err(|e| AuditError::CorruptRow {
            url: self.url.clone(),
            seq: -1,
            detail: e.to_string(),
        })?;
        let corrupt = |e: sqlx::Error| AuditError::CorruptRow {
            url: self.url.clone(),
            seq,
            detail: e.to_string(),
        };
        Ok(StoredRow {
            seq,
            event_id: row.try_get(1).map_err(corrupt)?,
            ts: row.try_get(2).map_err(corrupt)?,
            queue_id: row.try_get(3).map_err(corrupt)?,
            message_id: row.try_get(4).map_err(corrupt)?,
            sender: row.try_get(5).map_err(corrupt)?,
            recipient: row.try_get(6).map_err(corrupt)?,
            outcome: row.try_get(7).map_err(corrupt)?,
            method: row.try_get(8).map_err(corrupt)?,
            tls_requirement: row.try_get(9).map_err(corrupt)?,
            policy_rule: row.try_get(10).map_err(corrupt)?,
            policy_version: row.try_get(11).map_err(corrupt)?,
            remote_host: row.try_get(12).map_err(corrupt)?,
            remote_ip: row.try_get(13).map_err(corrupt)?,
            tls_version: row.try_get(14).map_err(corrupt)?,
            tls_cipher: row.try_get(15).map_err(corrupt)?,
            smtp_reply: row.try_get(16).map_err(corrupt)?,
            body_sha256: row.try_get(17).map_err(corrupt)?,
            evidence: row.try_get(18).map_err(corrupt)?,
            prev_hash: row.try_get(19).map_err(corrupt)?,
            row_hash: row.try_get(20).map_err(corrupt)?,
        })
    }

    /// Runs a statement; for tests that tamper with the table.
    #[cfg(test)]
    pub(crate) async fn execute(&self, sql: &str) -> Result<u64, AuditError> {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.error("test statement", e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::chain::tests::sample_event;
    use crate::audit::verify::tests::tamper;
    use crate::audit::writer::tests::settings;
    use crate::audit::{Auditor, ChainBreak, rows_for_queue_id, verify};

    /// `url` with its database name replaced by `name`.
    fn with_database(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[authority_start..]
            .find('/')
            .map_or(base.len(), |i| authority_start + i);
        let mut out = format!("{}/{name}", &base[..path_start]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }

    /// Append and verify against a real PostgreSQL, with two auditors (two
    /// "nodes") writing to one chain at once. Fails when PostgreSQL is not
    /// reachable: CI must provide it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_chain() {
        sqlx::any::install_default_drivers();
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let mut admin = sqlx::AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is required for this test: {e}",
                    redact_url(&admin_url)
                )
            });
        let name = format!(
            "sealgate_audit_{}",
            &crate::audit::AuditEvent::new_id()[..16]
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = with_database(&admin_url, &name);

        let outcome = tokio::spawn(postgres_chain_body(url)).await;

        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    async fn postgres_chain_body(url: String) {
        let dir = tempfile::tempdir().unwrap();
        let a = Auditor::start(settings(&url, &dir.path().join("a")))
            .await
            .unwrap();
        let b = Auditor::start(settings(&url, &dir.path().join("b")))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for n in 0..40 {
            let auditor = if n % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                auditor.record(sample_event(n)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert!(a.flush(Duration::from_secs(20)).await);
        assert!(b.flush(Duration::from_secs(20)).await);
        drop((a, b));

        let report = verify(&url).await.unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.rows_checked, 40);
        assert_eq!(report.last_seq, Some(40));
        let rows = rows_for_queue_id(&url, "Q7").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].message_id.as_deref(), Some("<m7@example.org>"));
        assert_eq!(rows[0].body_sha256, None);

        tamper(
            &url,
            "UPDATE audit_log SET recipient = 'someone@else.example' WHERE seq = 12",
        )
        .await;
        let report = verify(&url).await.unwrap();
        assert!(
            matches!(
                report.first_break,
                Some(ChainBreak::RowHashMismatch { seq: 12, .. })
            ),
            "{report}"
        );
    }
}
