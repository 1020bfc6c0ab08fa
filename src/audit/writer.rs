//! [`Auditor`]: the handle the delivery path records events through, and the
//! single writer task that moves journaled events into the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};

use super::AuditEvent;
use super::db::Db;
use super::error::AuditError;
use super::journal::{self, Cursor, Journal};

/// Events inserted per database transaction.
const BATCH: usize = 256;

/// First retry delay after a database failure; doubles up to `retry_max`.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// How long `start` waits for a previous instance to release the journal
/// (a restart, or a dropped `Auditor` whose writer is still stopping).
const JOURNAL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Runtime settings for the audit trail.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Directory for the local journal; one per sealgate instance, on a
    /// disk that survives a restart.
    pub journal_dir: PathBuf,
    /// Longest wait between retries while the database is unavailable.
    pub retry_max: Duration,
    /// How long one attempt to reach the database may take.
    pub connect_timeout: Duration,
}

impl AuditSettings {
    /// Settings with the default timings (retry at most every 5 s, give up
    /// one connection attempt after 5 s).
    pub fn new(database_url: impl Into<String>, journal_dir: impl Into<PathBuf>) -> AuditSettings {
        AuditSettings {
            database_url: database_url.into(),
            journal_dir: journal_dir.into(),
            retry_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// State shared by the handles and the writer task.
struct Shared {
    journal: Journal,
    /// Tells the writer that new lines are in the journal.
    wake: Notify,
    /// Cuts a retry wait short (used by `flush`).
    kick: Notify,
    /// Events journaled but not yet committed to the database.
    pending: watch::Sender<u64>,
}

/// Handle for recording audit events; cheap to clone.
///
/// The writer task stops when the last clone is dropped; call
/// [`Auditor::flush`] first to drain the journal on a clean shutdown.
#[derive(Clone)]
pub struct Auditor {
    shared: Arc<Shared>,
    /// Dropped with the last clone, which tells the writer to stop.
    _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("journal", &self.shared.journal.dir())
            .field("pending", &self.pending())
            .finish()
    }
}

impl Auditor {
    /// Opens the journal, replays what an earlier run left in it, and
    /// starts the writer task.
    ///
    /// Tries the database once (creating or upgrading the schema); if it is
    /// unreachable this logs a warning and still starts: events are
    /// journaled and written when the database comes back. Fails only for
    /// an unsupported URL or an unusable journal directory.
    pub async fn start(settings: AuditSettings) -> Result<Auditor, AuditError> {
        let db = Db::lazy(&settings.database_url, settings.connect_timeout)?;
        let (journal, existing) = open_journal(settings.journal_dir.clone()).await?;
        if existing.lines > 0 {
            tracing::info!(
                journal = %settings.journal_dir.display(),
                events = existing.lines,
                "replaying audit journal"
            );
        }
        let migrated = match db.migrate().await {
            Ok(()) => {
                tracing::info!(database = db.url(), "audit database ready");
                true
            }
            Err(e) => {
                let e = db.explain(e, settings.connect_timeout).await;
                tracing::warn!(
                    error = %e,
                    "audit database not available at start; journaling events until it is"
                );
                false
            }
        };
        let cursor = Cursor::start_of(existing.first_segment.unwrap_or(journal.current()));
        let (pending, _) = watch::channel(existing.lines);
        let shared = Arc::new(Shared {
            journal,
            wake: Notify::new(),
            kick: Notify::new(),
            pending,
        });
        let (alive, stop) = oneshot::channel();
        let writer = Writer {
            shared: shared.clone(),
            db,
            cursor,
            migrated,
            torn_warned: false,
            outage: None,
            retry: RETRY_MIN.min(settings.retry_max),
            retry_max: settings.retry_max,
            connect_timeout: settings.connect_timeout,
        };
        tokio::spawn(writer.run(stop));
        Ok(Auditor {
            shared,
            _alive: Arc::new(alive),
        })
    }

    /// Journals `event` durably (written and fsynced), then hands it to the
    /// writer. Once this returns `Ok` the event will reach the database,
    /// even across a crash or a database outage.
    ///
    /// Fails if the event has no id or the journal cannot be written; the
    /// caller should treat that like a failed disk.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        if event.event_id.is_empty() {
            return Err(AuditError::InvalidEvent {
                reason: format!("empty event_id (queue id {})", event.queue_id),
            });
        }
        let mut line = serde_json::to_vec(&event).map_err(|e| AuditError::InvalidEvent {
            reason: format!("event {} cannot be encoded: {e}", event.event_id),
        })?;
        line.push(b'\n');

        // Count before writing: the writer may commit the line before this
        // task gets to run again.
        self.shared.pending.send_modify(|p| *p += 1);
        let shared = self.shared.clone();
        let outcome = tokio::task::spawn_blocking(move || match shared.journal.append(&line) {
            Err(e) => Err((false, e)),
            // Once appended the line stays in the journal even if the
            // sync fails, and the writer will count it off.
            Ok(n) => shared.journal.sync(n).map_err(|e| (true, e)),
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                self.shared.wake.notify_one();
                Ok(())
            }
            Ok(Err((in_journal, e))) => {
                if in_journal {
                    self.shared.wake.notify_one();
                } else {
                    self.shared
                        .pending
                        .send_modify(|p| *p = p.saturating_sub(1));
                }
                Err(e)
            }
            Err(join) => Err(AuditError::Journal {
                path: self.shared.journal.dir().to_path_buf(),
                action: "writing",
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Waits until every journaled event is in the database, at most
    /// `timeout`. Returns whether the journal is drained.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.pending.subscribe();
        self.shared.kick.notify_one();
        self.shared.wake.notify_one();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|p| *p == 0)).await,
            Ok(Ok(_))
        )
    }

    /// Events journaled but not yet committed to the database. After a
    /// restart this includes replayed events until the writer has checked
    /// them against the database.
    pub fn pending(&self) -> u64 {
        *self.shared.pending.borrow()
    }
}

/// Opens the journal, waiting a little for a previous owner to let go.
async fn open_journal(dir: PathBuf) -> Result<(Journal, journal::Existing), AuditError> {
    let deadline = Instant::now() + JOURNAL_LOCK_WAIT;
    loop {
        let d = dir.clone();
        let opened = tokio::task::spawn_blocking(move || Journal::open(&d))
            .await
            .map_err(|e| AuditError::Journal {
                path: dir.clone(),
                action: "opening",
                source: std::io::Error::other(e.to_string()),
            })?;
        match opened {
            Err(AuditError::JournalLocked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The single task that writes journaled events to the database, in
/// journal order.
struct Writer {
    shared: Arc<Shared>,
    db: Db,
    /// Everything before this is committed.
    cursor: Cursor,
    /// The schema is known to be in place.
    migrated: bool,
    /// The torn tail of the cursor's segment was already reported.
    torn_warned: bool,
    /// When the current database outage began (one warning per outage).
    outage: Option<Instant>,
    /// Next retry delay.
    retry: Duration,
    retry_max: Duration,
    connect_timeout: Duration,
}

/// What one step of the writer did.
enum Step {
    /// Made progress; go again.
    Progress,
    /// Nothing to do until new events arrive.
    Idle,
    /// Failed; wait before trying again.
    Failed,
}

impl Writer {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut stop => break,
                step = self.step() => step,
            };
            match step {
                Step::Progress => {}
                Step::Idle => {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        _ = self.shared.wake.notified() => {}
                    }
                }
                Step::Failed => {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        _ = self.shared.kick.notified() => {}
                        _ = tokio::time::sleep(self.retry) => {}
                    }
                    self.retry = self.retry.saturating_mul(2).min(self.retry_max);
                }
            }
        }
        self.db.close().await;
    }

    async fn step(&mut self) -> Step {
        if !self.migrated {
            if let Err(e) = self.db.migrate().await {
                self.failed(e).await;
                return Step::Failed;
            }
            self.migrated = true;
        }

        // Read `current` before the file: if the segment was finished by
        // then, everything ever written to it is visible to the read.
        let finished = self.cursor.segment < self.shared.journal.current();
        let dir = self.shared.journal.dir().to_path_buf();
        let at = self.cursor;
        let mut torn_warned = self.torn_warned;
        let read = tokio::task::spawn_blocking(move || {
            let chunk = journal::read_chunk(&dir, at, BATCH, finished, &mut torn_warned);
            (chunk, torn_warned)
        })
        .await;
        let chunk = match read {
            Ok((Ok(chunk), warned)) => {
                self.torn_warned = warned;
                chunk
            }
            Ok((Err(e), _)) => {
                tracing::error!(error = %e, "cannot read the audit journal; retrying");
                return Step::Failed;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit journal reader failed; retrying");
                return Step::Failed;
            }
        };

        if chunk.lines == 0 {
            if finished && chunk.at_end {
                return self.next_segment().await;
            }
            return Step::Idle;
        }

        if !chunk.events.is_empty() {
            match self.db.append(&chunk.events).await {
                Ok(inserted) => {
                    tracing::debug!(
                        inserted,
                        skipped = chunk.events.len() as u64 - inserted,
                        "audit rows committed"
                    );
                }
                Err(e) => {
                    self.failed(e).await;
                    return Step::Failed;
                }
            }
        }
        if let Some(since) = self.outage.take() {
            tracing::info!(
                database = self.db.url(),
                outage_secs = since.elapsed().as_secs(),
                "audit database reachable again; writing journaled events"
            );
        }
        self.retry = RETRY_MIN.min(self.retry_max);
        self.cursor = chunk.end;
        self.shared
            .pending
            .send_modify(|p| *p = p.saturating_sub(chunk.lines));
        Step::Progress
    }

    /// The cursor's segment is finished and drained: delete it and move on.
    async fn next_segment(&mut self) -> Step {
        let dir = self.shared.journal.dir().to_path_buf();
        let done = self.cursor.segment;
        let next = tokio::task::spawn_blocking(move || {
            journal::remove_segment(&dir, done)?;
            journal::list_segments(&dir)
        })
        .await;
        let segments = match next {
            Ok(Ok(segments)) => segments,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot clean up the audit journal; retrying");
                return Step::Failed;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit journal clean-up failed; retrying");
                return Step::Failed;
            }
        };
        let current = self.shared.journal.current();
        let segment = segments
            .into_iter()
            .find(|n| *n > done)
            .unwrap_or(current)
            .min(current);
        self.cursor = Cursor::start_of(segment);
        self.torn_warned = false;
        Step::Progress
    }

    async fn failed(&mut self, error: AuditError) {
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            let error = self.db.explain(error, self.connect_timeout).await;
            tracing::warn!(
                error = %error,
                pending = *self.shared.pending.borrow(),
                "audit database unavailable; events are kept in the local journal and retried"
            );
        } else {
            tracing::debug!(error = %error, "audit database still unavailable");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::audit::chain::tests::sample_event;
    use crate::audit::{rows_for_queue_id, verify};

    /// Settings with quick retries, for tests.
    pub(crate) fn settings(url: &str, journal: &Path) -> AuditSettings {
        AuditSettings {
            database_url: url.to_string(),
            journal_dir: journal.to_path_buf(),
            retry_max: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
        }
    }

    pub(crate) fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    /// Number of rows per queue id `Q0..Qn`, via the public reader.
    async fn counts(url: &str, n: u32) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                rows_for_queue_id(url, &format!("Q{i}"))
                    .await
                    .unwrap()
                    .len(),
            );
        }
        out
    }

    #[tokio::test]
    async fn records_reach_the_database_as_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        let auditor = Auditor::start(settings(&url, &dir.path().join("journal")))
            .await
            .unwrap();
        for n in 0..5 {
            auditor.record(sample_event(n)).await.unwrap();
        }
        // Concurrent callers share fsyncs and still all land.
        let mut tasks = Vec::new();
        for n in 5..45 {
            let a = auditor.clone();
            tasks.push(tokio::spawn(async move { a.record(sample_event(n)).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert!(auditor.flush(Duration::from_secs(10)).await);
        assert_eq!(auditor.pending(), 0);

        let report = verify(&url).await.unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.rows_checked, 45);
        assert_eq!(report.last_seq, Some(45));
        let rows = rows_for_queue_id(&url, "Q3").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].recipient, "patient3@example.net");
        assert_eq!(rows[0].seq, 4);
        assert_eq!(rows[0].ts, "2025-03-01T12:00:00.003Z");

        // Recording the same event again is harmless.
        auditor.record(sample_event(3)).await.unwrap();
        assert!(auditor.flush(Duration::from_secs(10)).await);
        assert_eq!(verify(&url).await.unwrap().rows_checked, 45);
    }

    #[tokio::test]
    async fn empty_event_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        let auditor = Auditor::start(settings(&url, &dir.path().join("journal")))
            .await
            .unwrap();
        let mut event = sample_event(1);
        event.event_id.clear();
        assert!(matches!(
            auditor.record(event).await,
            Err(AuditError::InvalidEvent { .. })
        ));
        assert_eq!(auditor.pending(), 0);
    }

    /// The database is missing at start; one auditor "crashes" (is dropped)
    /// with events still in the journal; the next one replays them and,
    /// once the database appears, writes everything exactly once without
    /// a restart.
    #[tokio::test]
    async fn outage_then_crash_then_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("not-yet");
        let url = sqlite_url(&db_dir.join("audit.db"));
        let journal = dir.path().join("journal");

        let first = Auditor::start(settings(&url, &journal)).await.unwrap();
        for n in 0..3 {
            first.record(sample_event(n)).await.unwrap();
        }
        assert_eq!(first.pending(), 3);
        assert!(!first.flush(Duration::from_millis(200)).await);
        drop(first);

        let second = Auditor::start(settings(&url, &journal)).await.unwrap();
        assert_eq!(
            second.pending(),
            3,
            "journal from the first run is replayed"
        );
        for n in 3..5 {
            second.record(sample_event(n)).await.unwrap();
        }
        assert_eq!(second.pending(), 5);
        assert!(!second.flush(Duration::from_millis(200)).await);

        // The database comes back.
        std::fs::create_dir_all(&db_dir).unwrap();
        assert!(second.flush(Duration::from_secs(10)).await);
        assert_eq!(counts(&url, 5).await, vec![1; 5]);
        let report = verify(&url).await.unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.rows_checked, 5);
        // The first run's segment was drained and deleted; only the current
        // one may remain.
        let segments = journal::list_segments(&journal).unwrap();
        assert!(segments.iter().all(|s| *s >= 2), "{segments:?}");
    }

    /// A crash after the database commit but before the segment was
    /// deleted replays events that are already stored; a crash during a
    /// write leaves a torn last line. Neither produces a duplicate or an
    /// error.
    #[tokio::test]
    async fn replay_skips_stored_events_and_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        let journal = dir.path().join("journal");

        let first = Auditor::start(settings(&url, &journal)).await.unwrap();
        for n in 0..3 {
            first.record(sample_event(n)).await.unwrap();
        }
        assert!(first.flush(Duration::from_secs(10)).await);
        drop(first);

        let mut text = String::new();
        for n in 0..4 {
            text.push_str(&serde_json::to_string(&sample_event(n)).unwrap());
            text.push('\n');
        }
        let torn = serde_json::to_string(&sample_event(9)).unwrap();
        text.push_str(&torn[..torn.len() / 2]);
        let segment = journal::segment_path(&journal, 7);
        std::fs::write(&segment, text).unwrap();

        let second = Auditor::start(settings(&url, &journal)).await.unwrap();
        assert!(second.flush(Duration::from_secs(10)).await);
        assert_eq!(counts(&url, 4).await, vec![1; 4]);
        assert!(rows_for_queue_id(&url, "Q9").await.unwrap().is_empty());
        let report = verify(&url).await.unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.rows_checked, 4);

        // Once drained, the old segment is removed (the writer deletes it
        // right after its last commit; give it a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        while segment.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!segment.exists());
    }

    /// A garbled line in a segment left by an earlier run is copied into
    /// the quarantine, the events around it are written, and the
    /// quarantine outlives the drained segment. (Rereading the same line
    /// adds no second entry: see `quarantine::tests`.)
    #[tokio::test]
    async fn a_garbled_line_is_quarantined_before_its_segment_goes() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        let mut text = String::new();
        text.push_str(&serde_json::to_string(&sample_event(0)).unwrap());
        text.push_str("\n{\"event_id\": garbled\n\n");
        text.push_str(&serde_json::to_string(&sample_event(1)).unwrap());
        text.push('\n');
        let segment = journal::segment_path(&journal, 4);
        std::fs::write(&segment, text).unwrap();

        let auditor = Auditor::start(settings(&url, &journal)).await.unwrap();
        assert!(auditor.flush(Duration::from_secs(10)).await);
        assert_eq!(counts(&url, 2).await, vec![1, 1]);
        let q = crate::audit::read_quarantine(&journal).unwrap();
        assert_eq!(q.entries.len(), 1, "{:?}", q.entries);
        assert_eq!(q.entries[0].segment, "000000000004.jsonl");
        assert_eq!(q.entries[0].line, 2);
        assert_eq!(q.entries[0].raw.as_deref(), Some("{\"event_id\": garbled"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while segment.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!segment.exists());
        assert_eq!(
            crate::audit::read_quarantine(&journal)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn unreachable_postgres_at_start_still_records() {
        let dir = tempfile::tempdir().unwrap();
        // Port 1 on loopback: nothing listens, connections are refused.
        let url = "postgres://sealgate:secret@127.0.0.1:1/audit";
        let auditor = Auditor::start(settings(url, &dir.path().join("journal")))
            .await
            .unwrap();
        auditor.record(sample_event(1)).await.unwrap();
        auditor.record(sample_event(2)).await.unwrap();
        assert_eq!(auditor.pending(), 2);
        assert!(!auditor.flush(Duration::from_millis(300)).await);
        assert_eq!(auditor.pending(), 2);

        // The read-only tools fail with a clear, password-free message.
        let err = verify(url).await.unwrap_err().to_string();
        assert!(
            err.starts_with("audit database postgres://sealgate:***@127.0.0.1:1/audit unreachable"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        let db = Db::lazy(url, Duration::from_millis(200)).unwrap();
        let migrate_err = db.migrate().await.unwrap_err();
        let explained = db
            .explain(migrate_err, Duration::from_millis(500))
            .await
            .to_string();
        assert!(explained.contains("refused"), "{explained}");
    }

    #[tokio::test]
    async fn unsupported_url_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Auditor::start(settings("mysql://u:pw@h/db", dir.path()))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::UnsupportedUrl { .. }));
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
