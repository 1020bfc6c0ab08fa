//! `sealgate audit verify`: walk the chain and find the first broken link.

use std::fmt;

use super::chain::GENESIS_HASH;
use super::db::Db;
use super::error::AuditError;

/// Rows read per query while walking the chain.
pub(crate) const PAGE: i64 = 1000;

/// The first place where the stored chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Row `expected` is missing: the next row present is `found`
    /// (rows were deleted).
    Gap {
        /// The sequence number that should have come next.
        expected: i64,
        /// The sequence number that came instead.
        found: i64,
    },
    /// Row `seq` does not point at the row before it (rows before it were
    /// deleted, replaced or re-hashed).
    PrevHashMismatch {
        /// The row whose `prev_hash` is wrong.
        seq: i64,
        /// `row_hash` of the row before (or the genesis hash).
        expected: String,
        /// The stored `prev_hash`.
        found: String,
    },
    /// Row `seq`'s contents do not match its `row_hash` (the row was
    /// edited).
    RowHashMismatch {
        /// The edited row.
        seq: i64,
        /// The stored `row_hash`.
        stored: String,
        /// The hash of the row as it is now.
        computed: String,
    },
}

impl ChainBreak {
    /// The sequence number where the chain breaks (for a gap, the first
    /// missing row).
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Gap { expected, .. } => *expected,
            ChainBreak::PrevHashMismatch { seq, .. } | ChainBreak::RowHashMismatch { seq, .. } => {
                *seq
            }
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Gap { expected, found } if found < expected => {
                write!(
                    f,
                    "row {found} is out of sequence (expected row {expected})"
                )
            }
            ChainBreak::Gap { expected, found } if *found == expected + 1 => {
                write!(f, "row {expected} is missing (deleted)")
            }
            ChainBreak::Gap { expected, found } => {
                write!(f, "rows {expected} to {} are missing (deleted)", found - 1)
            }
            ChainBreak::PrevHashMismatch {
                seq,
                expected,
                found,
            } => write!(
                f,
                "row {seq} does not link to the row before it (prev_hash {found}, expected {expected})"
            ),
            ChainBreak::RowHashMismatch {
                seq,
                stored,
                computed,
            } => write!(
                f,
                "row {seq} was modified after it was written (row_hash {stored}, contents hash to {computed})"
            ),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows read.
    pub rows_checked: u64,
    /// Sequence number of the last row.
    pub last_seq: Option<i64>,
    /// `row_hash` of the last row: the chain head. Keep it somewhere else
    /// (or compare it with an earlier export) to also detect deletion of
    /// the newest rows, which the chain alone cannot show.
    pub head: Option<String>,
    /// The first broken link, if any.
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    /// Whether every row checked out.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_break {
            None => write!(f, "audit chain intact: {} rows", self.rows_checked)?,
            Some(b) => write!(
                f,
                "audit chain BROKEN at row {}: {b} ({} rows checked)",
                b.seq(),
                self.rows_checked
            )?,
        }
        if let (Some(seq), Some(head)) = (self.last_seq, &self.head) {
            write!(f, "; head row {seq}, hash {head}")?;
        }
        Ok(())
    }
}

/// Walks every row in `seq` order and checks that sequence numbers have no
/// gaps, each `prev_hash` is the previous row's `row_hash` (genesis for the
/// first), and each `row_hash` matches the row's contents.
///
/// Reports the first break but keeps walking, so `rows_checked` and `head`
/// describe the whole table. Never creates or changes the database.
pub async fn verify(database_url: &str) -> Result<VerifyReport, AuditError> {
    let db = Db::open(database_url).await?;
    let result = walk(&db).await;
    db.close().await;
    result
}

async fn walk(db: &Db) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport {
        rows_checked: 0,
        last_seq: None,
        head: None,
        first_break: None,
    };
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut after = i64::MIN;
    loop {
        let rows = db.page(after, PAGE).await?;
        if rows.is_empty() {
            return Ok(report);
        }
        for row in rows {
            report.rows_checked += 1;
            if report.first_break.is_none() {
                report.first_break = if row.seq != expected_seq {
                    Some(ChainBreak::Gap {
                        expected: expected_seq,
                        found: row.seq,
                    })
                } else if row.prev_hash != prev_hash {
                    Some(ChainBreak::PrevHashMismatch {
                        seq: row.seq,
                        expected: prev_hash.clone(),
                        found: row.prev_hash.clone(),
                    })
                } else {
                    let computed = row.compute_hash();
                    (computed != row.row_hash).then(|| ChainBreak::RowHashMismatch {
                        seq: row.seq,
                        stored: row.row_hash.clone(),
                        computed,
                    })
                };
            }
            expected_seq = row.seq.saturating_add(1);
            after = row.seq;
            report.last_seq = Some(row.seq);
            prev_hash = row.row_hash;
        }
        report.head = Some(prev_hash.clone());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::Auditor;
    use crate::audit::chain::tests::sample_event;
    use crate::audit::writer::tests::{settings, sqlite_url};

    /// Writes events 0..n through an auditor and waits until they are in
    /// the database at `url`.
    pub(crate) async fn fill(url: &str, journal: &std::path::Path, n: u32) {
        let auditor = Auditor::start(settings(url, journal)).await.unwrap();
        for i in 0..n {
            auditor.record(sample_event(i)).await.unwrap();
        }
        assert!(auditor.flush(Duration::from_secs(20)).await);
    }

    /// Runs one statement against the database, as an intruder would.
    pub(crate) async fn tamper(url: &str, sql: &str) {
        let db = Db::open(url).await.unwrap();
        assert_eq!(db.execute(sql).await.unwrap(), 1, "{sql}");
        db.close().await;
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 3).await;
        let report = verify(&url).await.unwrap();
        assert!(report.is_intact());
        assert_eq!(report.rows_checked, 3);
        assert_eq!(report.head.as_ref().map(String::len), Some(64));
        assert!(
            report
                .to_string()
                .starts_with("audit chain intact: 3 rows; head row 3")
        );
    }

    #[tokio::test]
    async fn edited_row_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 5).await;
        tamper(
            &url,
            "UPDATE audit_log SET recipient = 'someone@else.example' WHERE seq = 3",
        )
        .await;
        let report = verify(&url).await.unwrap();
        assert_eq!(report.rows_checked, 5);
        let found = report.first_break.clone().unwrap();
        assert!(
            matches!(found, ChainBreak::RowHashMismatch { seq: 3, .. }),
            "{found:?}"
        );
        assert!(report.to_string().contains("BROKEN at row 3"), "{report}");
    }

    #[tokio::test]
    async fn rehashed_edit_is_reported_at_the_next_row() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 5).await;
        // An intruder who also fixes the edited row's own hash still breaks
        // the link from the row after it.
        let db = Db::open(&url).await.unwrap();
        let mut row = db.page(2, 1).await.unwrap().remove(0);
        row.recipient = "someone@else.example".into();
        let hash = row.compute_hash();
        db.execute(&format!(
            "UPDATE audit_log SET recipient = '{}', row_hash = '{hash}' WHERE seq = 3",
            row.recipient
        ))
        .await
        .unwrap();
        db.close().await;
        let report = verify(&url).await.unwrap();
        let found = report.first_break.unwrap();
        assert!(
            matches!(found, ChainBreak::PrevHashMismatch { seq: 4, .. }),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn deleted_row_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 5).await;
        tamper(&url, "DELETE FROM audit_log WHERE seq = 3").await;
        let report = verify(&url).await.unwrap();
        assert_eq!(report.rows_checked, 4);
        assert_eq!(report.last_seq, Some(5));
        let found = report.first_break.clone().unwrap();
        assert_eq!(
            found,
            ChainBreak::Gap {
                expected: 3,
                found: 4
            }
        );
        assert_eq!(found.seq(), 3);
        assert!(report.to_string().contains("row 3 is missing"), "{report}");
    }

    #[tokio::test]
    async fn missing_sqlite_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing-here.db");
        let err = verify(&sqlite_url(&path)).await.unwrap_err();
        assert!(matches!(err, AuditError::Unreachable { .. }), "{err}");
        assert!(!path.exists());
    }
}
