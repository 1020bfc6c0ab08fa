//! The attempt log: a line written and fsynced before a delivery attempt
//! sends anything, naming the message, the recipients and how many
//! attempts each had.
//!
//! Between a remote `250` and the audit journal there is a window in which
//! a crash would lose the fact of the delivery. The line closes it: after a
//! restart, a recipient that the log says was being tried but whose
//! envelope still shows the same attempt count had its outcome lost. The
//! server then records "delivered or not known" in the audit trail and the
//! recipient is delivered again (at least once, never silently).
//!
//! Lines never need to be removed one by one: once an attempt's outcome is
//! in the envelope its attempt count has moved on, so an old line matches
//! nothing. Segments are deleted when every attempt in them has finished.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spool::SpoolError;
use super::{QueueId, QueuedMessage};

/// A segment is closed once it holds this much.
const SEGMENT_LIMIT: u64 = 4 * 1024 * 1024;

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptLine {
    /// The message.
    pub id: QueueId,
    /// Recipient index and its attempt count before this attempt.
    pub rcpts: Vec<(usize, u32)>,
    /// When the attempt started.
    pub at: DateTime<Utc>,
}

/// A recipient whose last attempt may or may not have been delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Unresolved {
    pub id: QueueId,
    pub index: usize,
    /// When the attempt whose outcome was lost started.
    pub at: DateTime<Utc>,
}

struct LogState {
    file: Arc<File>,
    segment: u64,
    size: u64,
    written: u64,
    /// Attempts not finished yet, per segment.
    open: BTreeMap<u64, usize>,
}

/// The attempt log handle, cheap to clone.
#[derive(Clone)]
pub struct AttemptLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<LogState>,
    sync_lock: Mutex<()>,
    synced: AtomicU64,
}

/// An attempt in progress; hand it back to [`AttemptLog::finish`].
#[derive(Debug)]
pub struct AttemptTicket {
    segment: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.log"))
}

fn segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut found: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn create_segment(dir: &Path, n: u64) -> Result<File, SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = segment_path(dir, n);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(file)
}

impl AttemptLog {
    /// Opens the log in `dir` (created mode 0700), returning the attempts
    /// logged before this start. The old segments stay until
    /// [`AttemptLog::forget_before_start`] is called, once the caller has
    /// recorded what they mean.
    pub fn open(dir: &Path) -> Result<(AttemptLog, Vec<AttemptLine>), SpoolError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, e))?;
        let old = segments(dir)?;
        let mut lines = Vec::new();
        for n in &old {
            read_segment(&segment_path(dir, *n), &mut lines)?;
        }
        let segment = old.last().map_or(0, |n| n + 1);
        let file = create_segment(dir, segment)?;
        let log = AttemptLog {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: Mutex::new(LogState {
                    file: Arc::new(file),
                    segment,
                    size: 0,
                    written: 0,
                    open: BTreeMap::new(),
                }),
                sync_lock: Mutex::new(()),
                synced: AtomicU64::new(0),
            }),
        };
        Ok((log, lines))
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the segments written before this start.
    pub fn forget_before_start(&self) -> Result<(), SpoolError> {
        let current = self.state().segment;
        for n in segments(&self.inner.dir)? {
            if n < current {
                let path = segment_path(&self.inner.dir, n);
                std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            }
        }
        Ok(())
    }

    /// Logs (durably) that recipients `indices` of `msg` are about to be
    /// tried. Nothing may be sent unless this succeeded.
    pub async fn begin(
        &self,
        msg: &QueuedMessage,
        indices: &[usize],
    ) -> Result<AttemptTicket, SpoolError> {
        let line = AttemptLine {
            id: msg.id.clone(),
            rcpts: indices
                .iter()
                .filter_map(|&i| msg.recipients.get(i).map(|r| (i, r.attempts)))
                .collect(),
            at: Utc::now(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| SpoolError::Corrupt {
            path: self.inner.dir.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append_synced(&bytes))
            .await
            .unwrap_or_else(|e| {
                Err(io_err(
                    Path::new("attempt log"),
                    std::io::Error::other(e.to_string()),
                ))
            })
    }

    fn append_synced(&self, bytes: &[u8]) -> Result<AttemptTicket, SpoolError> {
        let (n, segment) = self.append(bytes)?;
        if let Err(e) = self.sync(n) {
            self.finish(AttemptTicket { segment });
            return Err(e);
        }
        Ok(AttemptTicket { segment })
    }

    fn append(&self, bytes: &[u8]) -> Result<(u64, u64), SpoolError> {
        let mut st = self.state();
        if st.size > SEGMENT_LIMIT {
            self.rotate(&mut st)?;
        }
        let path = segment_path(&self.inner.dir, st.segment);
        if let Err(e) = (&*st.file).write_all(bytes) {
            // Cut a partial line off so the next one starts clean.
            let _ = st.file.set_len(st.size);
            return Err(io_err(&path, e));
        }
        st.size += bytes.len() as u64;
        st.written += 1;
        let segment = st.segment;
        *st.open.entry(segment).or_default() += 1;
        Ok((st.written, st.segment))
    }

    /// Makes line `n` durable; concurrent callers share one fsync. Lines
    /// in earlier segments were synced when those were closed, so syncing
    /// the current file covers every line written so far.
    fn sync(&self, n: u64) -> Result<(), SpoolError> {
        if self.inner.synced.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let _guard = self
            .inner
            .sync_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.inner.synced.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let (target, file, segment) = {
            let st = self.state();
            (st.written, st.file.clone(), st.segment)
        };
        file.sync_data()
            .map_err(|e| io_err(&segment_path(&self.inner.dir, segment), e))?;
        self.inner.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Starts a new segment; the old one is synced first, so every line
    /// counted as written is durable whichever file it is in.
    fn rotate(&self, st: &mut LogState) -> Result<(), SpoolError> {
        let old = segment_path(&self.inner.dir, st.segment);
        st.file.sync_data().map_err(|e| io_err(&old, e))?;
        self.inner.synced.fetch_max(st.written, Ordering::AcqRel);
        let next = st.segment + 1;
        st.file = Arc::new(create_segment(&self.inner.dir, next)?);
        if st.open.get(&st.segment).copied().unwrap_or(0) == 0 {
            st.open.remove(&st.segment);
            let _ = std::fs::remove_file(&old);
        }
        st.segment = next;
        st.size = 0;
        Ok(())
    }

    /// The attempt's outcome is in the spool (or it was given up): its
    /// segment may go once nothing else in it is open.
    pub fn finish(&self, ticket: AttemptTicket) {
        let mut st = self.state();
        let left = match st.open.get_mut(&ticket.segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left == 0 && ticket.segment != st.segment {
            st.open.remove(&ticket.segment);
            let _ = std::fs::remove_file(segment_path(&self.inner.dir, ticket.segment));
        }
    }
}

/// Reads the lines of one segment; a torn last line (a crash while it was
/// written, before its fsync returned, so nothing was sent for it) and
/// unreadable lines are skipped.
fn read_segment(path: &Path, out: &mut Vec<AttemptLine>) -> Result<(), SpoolError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io_err(path, e))?;
        match serde_json::from_slice::<AttemptLine>(&line) {
            Ok(l) => out.push(l),
            Err(_) if line.is_empty() => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "attempt log line unreadable; skipped (a torn write before anything was sent)")
            }
        }
    }
    Ok(())
}

/// The recipients whose logged attempt has no outcome in their envelope:
/// the message is still queued, the recipient still open, and its attempt
/// count is the one logged before the attempt. `lookup` finds a message
/// in memory or reads it from disk (messages outside the scheduler's
/// window), so it hands back a borrowed or an owned copy.
pub fn unresolved<'a>(
    lines: &[AttemptLine],
    mut lookup: impl FnMut(&QueueId) -> Option<Cow<'a, QueuedMessage>>,
) -> Vec<Unresolved> {
    let mut found = BTreeMap::new();
    for line in lines {
        let Some(msg) = lookup(&line.id) else {
            continue;
        };
        for &(index, before) in &line.rcpts {
            let Some(r) = msg.recipients.get(index) else {
                continue;
            };
            if !r.status.is_final() && r.attempts == before {
                found.insert((line.id.clone(), index), line.at);
            }
        }
    }
    found
        .into_iter()
        .map(|((id, index), at)| Unresolved { id, index, at })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_logged_attempt_without_outcome_is_unresolved_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts");
        let mut msg = QueuedMessage::for_test("a@x.test", &["b@y.test", "c@y.test", "d@y.test"]);
        msg.recipients[2].attempts = 4;
        {
            let (log, old) = AttemptLog::open(&path).unwrap();
            assert!(old.is_empty());
            let _lost = log.begin(&msg, &[0, 1, 2]).await.unwrap();
        }
        // The outcome of recipient 1 reached the envelope; 0 and 2 did not.
        msg.recipients[1].attempts = 1;
        msg.recipients[1].status = crate::queue::RecipientStatus::Deferred;
        let (log, old) = AttemptLog::open(&path).unwrap();
        let got = unresolved(&old, |id| (id == &msg.id).then_some(Cow::Borrowed(&msg)));
        let idx: Vec<usize> = got.iter().map(|u| u.index).collect();
        assert_eq!(idx, vec![0, 2]);
        // A message no longer queued matches nothing.
        assert!(unresolved(&old, |_| None).is_empty());
        log.forget_before_start().unwrap();
        let (_, again) = AttemptLog::open(&path).unwrap();
        assert!(again.is_empty(), "old segments are gone");
    }

    #[tokio::test]
    async fn finished_segments_are_deleted_and_torn_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts");
        let msg = QueuedMessage::for_test("a@x.test", &["b@y.test"]);
        let (log, _) = AttemptLog::open(&path).unwrap();
        let t = log.begin(&msg, &[0]).await.unwrap();
        {
            let mut st = log.state();
            st.size = SEGMENT_LIMIT + 1;
        }
        let t2 = log.begin(&msg, &[0]).await.unwrap();
        assert_eq!(segments(&path).unwrap().len(), 2);
        log.finish(t);
        assert_eq!(
            segments(&path).unwrap().len(),
            1,
            "finished old segment deleted"
        );
        log.finish(t2);
        drop(log);
        let seg = segments(&path).unwrap()[0];
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segment_path(&path, seg))
            .unwrap();
        f.write_all(b"{\"id\":\"00").unwrap();
        let (_, old) = AttemptLog::open(&path).unwrap();
        assert_eq!(old.len(), 1, "the good line is read, the torn one skipped");
    }
}
