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
//! When the attempt's audit events are journaled, a `done` line with the
//! attempt's id follows (not fsynced: losing it to a power cut only adds
//! an "unknown" row for an attempt that was audited). Each line starts
//! with a newline, so a torn line never swallows the next one. Segments
//! are preallocated (a full disk must not stop the deliveries that would
//! free it) and deleted when every attempt in them is done.

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

/// Unfinished attempts carried into each new segment at most (a few
/// hundred KiB, well below [`SEGMENT_LIMIT`]).
const MAX_CARRIED: usize = 256;

/// One recipient of an attempt, with the decision it was sent under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecipient {
    pub index: usize,
    pub address: String,
    /// Method, TLS requirement, rule and policy version of the decision.
    pub method: String,
    pub tls: String,
    pub rule: String,
    pub policy_version: String,
}

/// One attempt, as logged before it sends anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptLine {
    /// Random id; the `done` line names it.
    pub attempt: String,
    /// The message.
    pub id: QueueId,
    pub sender: String,
    pub message_id: Option<String>,
    pub rcpts: Vec<AttemptRecipient>,
    /// When the attempt started.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Begin(AttemptLine),
    Done { done: String },
}

/// An attempt whose audit events never reached the journal: each of its
/// recipients may or may not have received the message.
pub type Unresolved = AttemptLine;

struct LogState {
    file: Arc<File>,
    segment: u64,
    size: u64,
    written: u64,
    /// Attempts not finished yet, per segment.
    open: BTreeMap<u64, usize>,
    /// The oldest segment of this run still on disk. Segments go oldest
    /// first, so a `done` line (always in a segment no older than its
    /// attempt's) never goes before the attempt it closes.
    oldest: u64,
    /// Attempts whose ticket was dropped unfinished (the delivery task
    /// panicked): their outcome is unknown until the next start reports
    /// them. Their begin lines are copied into each new segment, so they do
    /// not keep every later segment on disk.
    carried: Vec<Vec<u8>>,
}

/// The attempt log handle, cheap to clone.
#[derive(Clone)]
pub struct AttemptLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The first segment of this run; older ones are from before the start.
    start_segment: u64,
    state: Mutex<LogState>,
    sync_lock: Mutex<()>,
    synced: AtomicU64,
}

/// An attempt in progress; hand it back to [`AttemptLog::finish`] once its
/// audit events are journaled. Dropped unfinished (a panic), the attempt
/// stays open until the next start, which reports it as "delivered or not
/// known".
pub struct AttemptTicket {
    segment: u64,
    attempt: String,
    /// The begin line, to carry into later segments if dropped unfinished.
    line: Vec<u8>,
    /// `None` once finished.
    log: Option<AttemptLog>,
}

impl std::fmt::Debug for AttemptTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptTicket")
            .field("segment", &self.segment)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Drop for AttemptTicket {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.abandon(self.segment, std::mem::take(&mut self.line));
        }
    }
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
    preallocate(&file);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(file)
}

/// Reserves the segment's blocks without changing its size, so appends
/// still work on a file system that has filled up since. Where the file
/// system cannot do it, appends simply allocate as they go.
fn preallocate(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a descriptor we own, with constant arguments.
    let _ = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            (SEGMENT_LIMIT + 64 * 1024) as libc::off_t,
        )
    };
}

impl AttemptLog {
    /// Opens the log in `dir` (created mode 0700), returning the attempts
    /// logged before this start. The old segments stay until
    /// [`AttemptLog::forget_before_start`] is called, once the caller has
    /// recorded what they mean.
    pub fn open(dir: &Path) -> Result<(AttemptLog, Vec<Unresolved>), SpoolError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, e))?;
        let old = segments(dir)?;
        let mut begun = Vec::new();
        let mut done = std::collections::HashSet::new();
        for n in &old {
            read_segment(&segment_path(dir, *n), &mut begun, &mut done)?;
        }
        // A carried attempt's line is in several segments: report it once.
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<Unresolved> = begun
            .into_iter()
            .filter(|l| !done.contains(&l.attempt) && seen.insert(l.attempt.clone()))
            .collect();
        let segment = old.last().map_or(0, |n| n + 1);
        let file = create_segment(dir, segment)?;
        let log = AttemptLog {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                start_segment: segment,
                state: Mutex::new(LogState {
                    file: Arc::new(file),
                    segment,
                    size: 0,
                    written: 0,
                    open: BTreeMap::new(),
                    oldest: segment,
                    carried: Vec::new(),
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
        for n in segments(&self.inner.dir)? {
            if n < self.inner.start_segment {
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
        rcpts: Vec<AttemptRecipient>,
    ) -> Result<AttemptTicket, SpoolError> {
        let line = AttemptLine {
            attempt: crate::util::random_hex_id(),
            id: msg.id.clone(),
            sender: msg.sender.clone(),
            message_id: msg.message_id.clone(),
            rcpts,
            at: Utc::now(),
        };
        let bytes = self.encode(&Entry::Begin(line.clone()))?;
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append_synced(bytes, line.attempt))
            .await
            .unwrap_or_else(|e| {
                Err(io_err(
                    Path::new("attempt log"),
                    std::io::Error::other(e.to_string()),
                ))
            })
    }

    fn encode(&self, entry: &Entry) -> Result<Vec<u8>, SpoolError> {
        let mut bytes = vec![b'\n'];
        serde_json::to_writer(&mut bytes, entry).map_err(|e| SpoolError::Corrupt {
            path: self.inner.dir.clone(),
            reason: e.to_string(),
        })?;
        Ok(bytes)
    }

    fn append_synced(&self, bytes: Vec<u8>, attempt: String) -> Result<AttemptTicket, SpoolError> {
        let (n, segment) = self.append(&bytes)?;
        let ticket = AttemptTicket {
            segment,
            attempt,
            line: bytes,
            log: Some(self.clone()),
        };
        if let Err(e) = self.sync(n) {
            // Not durable, so nothing will be sent: close it at once.
            self.finish(ticket);
            return Err(e);
        }
        Ok(ticket)
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
        let file = create_segment(&self.inner.dir, next)?;
        let carried: Vec<u8> = st.carried.concat();
        if !carried.is_empty() {
            // Durable in the new segment before the old ones may go.
            let path = segment_path(&self.inner.dir, next);
            (&file)
                .write_all(&carried)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_err(&path, e))?;
            // Every carried attempt is counted in the segment it was last
            // copied to: the one being closed.
            let n = st.carried.len();
            if let Some(open) = st.open.get_mut(&st.segment) {
                *open = open.saturating_sub(n);
            }
            *st.open.entry(next).or_default() += n;
        }
        st.file = Arc::new(file);
        st.segment = next;
        st.size = carried.len() as u64;
        self.collect(st);
        Ok(())
    }

    /// A ticket was dropped unfinished: carry its attempt along so that
    /// its segment can go like the others, and keep it open for the next
    /// start to report. Best effort: if the copy cannot be written, the
    /// attempt keeps its segment (and the later ones) until the next start.
    fn abandon(&self, segment: u64, line: Vec<u8>) {
        let mut st = self.state();
        if st.carried.len() >= MAX_CARRIED {
            // Something panics again and again: stop carrying (each new
            // segment would start with all of it); the segment stays.
            tracing::warn!(
                carried = st.carried.len(),
                "too many unfinished delivery attempts to carry; attempt log segments stay until the next start"
            );
            return;
        }
        let current = st.segment;
        if segment != current {
            let path = segment_path(&self.inner.dir, current);
            let copied = (&*st.file)
                .write_all(&line)
                .and_then(|()| st.file.sync_data());
            if let Err(e) = copied {
                let _ = st.file.set_len(st.size);
                tracing::warn!(file = %path.display(), error = %e, "cannot carry an unfinished delivery attempt into the current attempt log segment; older segments stay until the next start");
                return;
            }
            st.size += line.len() as u64;
            if let Some(n) = st.open.get_mut(&segment) {
                *n = n.saturating_sub(1);
            }
            *st.open.entry(current).or_default() += 1;
        }
        st.carried.push(line);
        self.collect(&mut st);
    }

    /// Deletes finished segments, oldest first, up to the first one that
    /// still has an attempt open.
    fn collect(&self, st: &mut LogState) {
        while st.oldest < st.segment && st.open.get(&st.oldest).copied().unwrap_or(0) == 0 {
            st.open.remove(&st.oldest);
            let _ = std::fs::remove_file(segment_path(&self.inner.dir, st.oldest));
            st.oldest += 1;
        }
    }

    /// The attempt's outcome is in the spool (or it was given up): its
    /// segment may go once nothing else in it is open.
    pub fn finish(&self, mut ticket: AttemptTicket) {
        ticket.log = None;
        let done = self.encode(&Entry::Done {
            done: ticket.attempt.clone(),
        });
        let mut st = self.state();
        if let Ok(bytes) = done {
            // Best effort: a lost `done` line only adds an "unknown" row.
            if (&*st.file).write_all(&bytes).is_ok() {
                st.size += bytes.len() as u64;
            } else {
                let _ = st.file.set_len(st.size);
            }
        }
        if let Some(n) = st.open.get_mut(&ticket.segment) {
            *n = n.saturating_sub(1);
        }
        self.collect(&mut st);
    }
}

/// Reads the lines of one segment; a torn last line (a crash while it was
/// written, before its fsync returned, so nothing was sent for it) and
/// unreadable lines are skipped.
fn read_segment(
    path: &Path,
    begun: &mut Vec<AttemptLine>,
    done: &mut std::collections::HashSet<String>,
) -> Result<(), SpoolError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io_err(path, e))?;
        match serde_json::from_slice::<Entry>(&line) {
            Ok(Entry::Begin(l)) => begun.push(l),
            Ok(Entry::Done { done: id }) => {
                done.insert(id);
            }
            Err(_) if line.is_empty() => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "attempt log line unreadable; skipped (a torn write before anything was sent)")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(msg: &QueuedMessage, idx: &[usize]) -> Vec<AttemptRecipient> {
        idx.iter()
            .map(|&i| AttemptRecipient {
                index: i,
                address: msg.recipients[i].address.clone(),
                method: "tls".into(),
                tls: "verified".into(),
                rule: "default".into(),
                policy_version: "v1".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn an_attempt_not_done_is_unresolved_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts");
        let msg = QueuedMessage::for_test("a@x.test", &["b@y.test", "c@y.test", "d@y.test"]);
        {
            let (log, old) = AttemptLog::open(&path).unwrap();
            assert!(old.is_empty());
            let done = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
            let _lost = log.begin(&msg, rcpts(&msg, &[1, 2])).await.unwrap();
            log.finish(done);
        }
        let (log, old) = AttemptLog::open(&path).unwrap();
        assert_eq!(old.len(), 1, "only the attempt without a done line");
        let got: Vec<&str> = old[0].rcpts.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(got, vec!["c@y.test", "d@y.test"]);
        assert_eq!(old[0].rcpts[0].method, "tls");
        // Attempts of this run are not touched by forgetting the old ones.
        let open_now = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
        log.forget_before_start().unwrap();
        drop(open_now);
        let (_, again) = AttemptLog::open(&path).unwrap();
        assert_eq!(
            again.len(),
            1,
            "the old segments are gone, this run's attempt is kept"
        );
    }

    /// A ticket dropped unfinished (its delivery task panicked) does not
    /// keep its segment, and every later one, on disk for the rest of the
    /// run; the next start still reports it, once.
    #[tokio::test]
    async fn a_dropped_ticket_is_carried_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts");
        let msg = QueuedMessage::for_test("a@x.test", &["b@y.test", "c@y.test"]);
        let (log, _) = AttemptLog::open(&path).unwrap();
        let lost = log.begin(&msg, rcpts(&msg, &[1])).await.unwrap();
        let lost_id = lost.attempt.clone();
        let full = |log: &AttemptLog| log.state().size = SEGMENT_LIMIT + 1;
        full(&log);
        let t = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
        drop(lost);
        log.finish(t);
        assert_eq!(
            segments(&path).unwrap().len(),
            1,
            "first segment kept by the dropped ticket"
        );
        for _ in 0..3 {
            full(&log);
            let t = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
            log.finish(t);
            assert_eq!(segments(&path).unwrap().len(), 1, "segments pile up");
        }
        drop(log);
        let (_, old) = AttemptLog::open(&path).unwrap();
        assert_eq!(old.len(), 1, "{old:?}");
        assert_eq!(old[0].attempt, lost_id);
        assert_eq!(old[0].rcpts[0].address, "c@y.test");
    }

    #[tokio::test]
    async fn finished_segments_are_deleted_and_torn_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts");
        let msg = QueuedMessage::for_test("a@x.test", &["b@y.test"]);
        let (log, _) = AttemptLog::open(&path).unwrap();
        let t = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
        {
            let mut st = log.state();
            st.size = SEGMENT_LIMIT + 1;
        }
        let t2 = log.begin(&msg, rcpts(&msg, &[0])).await.unwrap();
        assert_eq!(segments(&path).unwrap().len(), 2);
        log.finish(t);
        assert_eq!(
            segments(&path).unwrap().len(),
            1,
            "finished old segment deleted"
        );
        drop(t2);
        drop(log);
        let seg = segments(&path).unwrap()[0];
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segment_path(&path, seg))
            .unwrap();
        // A torn line, then a good one: the newline before each line keeps
        // the good one readable.
        f.write_all(b"\n{\"attempt\":\"00").unwrap();
        drop(f);
        let (log, old) = AttemptLog::open(&path).unwrap();
        assert_eq!(old.len(), 1, "the good line is read, the torn one skipped");
        drop(log);
    }
}
