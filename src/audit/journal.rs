//! The local journal: events as JSON lines in numbered segment files, written
//! and fsynced before `record()` returns, read back in order by the writer.
//!
//! Layout: `journal_dir/000000000001.jsonl`, `000000000002.jsonl`, ... and a
//! `lock` file that keeps a second process out. This process appends only to
//! the *current* segment, which is always newer than every segment left by
//! an earlier run; a segment older than the current one is finished and is
//! deleted once every event in it is committed to the database.
//!
//! A line is acknowledged (`record()` returns `Ok`) only after all of it
//! was written and fsynced, and a failed write is cut off or ends its
//! segment. So an incomplete last line (no newline) can only be a write
//! that was never acknowledged: a crash during `write`, or a failed write
//! whose caller got the error. Replay drops it with a warning naming the
//! segment and line; nothing that anyone was told is durable is lost.
//! A *complete* line that does not parse is different (the disk or a person
//! changed it after it was acknowledged): it is copied into the quarantine
//! file (see `quarantine`) before the writer moves past it, never deleted.
//!
//! All functions here block (file I/O and fsync); callers run them on
//! tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::AuditEvent;
use super::error::AuditError;
use super::quarantine;

/// A segment is closed once it reaches this size; the next event starts a
/// new one, so a drained segment can be deleted.
pub(crate) const SEGMENT_LIMIT: u64 = 4 * 1024 * 1024;

const SEGMENT_SUFFIX: &str = ".jsonl";

/// The append side of the journal, shared by every `record()` call.
pub(crate) struct Journal {
    dir: PathBuf,
    state: Mutex<WriteState>,
    /// Serialises fsyncs: callers that arrive while one runs wait, then
    /// usually find their line already covered (group commit).
    sync_lock: Mutex<()>,
    /// Every line numbered up to this is on disk.
    synced: AtomicU64,
    /// Number of the segment being appended to (the file may not exist
    /// yet). Every lower-numbered segment is finished.
    current: AtomicU64,
    /// Holds the advisory lock on `journal_dir/lock` while we live.
    _lock: File,
}

struct WriteState {
    /// Open current segment, created on the first write after start or
    /// after rotation.
    file: Option<Arc<File>>,
    /// Bytes in the current segment.
    size: u64,
    /// Lines written since start; the number handed to `sync`.
    written: u64,
    /// Start a new segment before the next write (after a failed write
    /// whose partial line could not be cut off).
    rotate: bool,
}

/// What [`Journal::open`] found on disk.
pub(crate) struct Existing {
    /// Lowest segment number present, if any.
    pub(crate) first_segment: Option<u64>,
    /// Complete event lines in the existing segments (some may already be
    /// in the database; replay skips those).
    pub(crate) lines: u64,
}

fn journal_err(path: &Path, action: &'static str, source: std::io::Error) -> AuditError {
    AuditError::Journal {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Path of segment `n` in `dir`.
pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}{SEGMENT_SUFFIX}"))
}

/// Segment numbers present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, AuditError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| journal_err(dir, "listing", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| journal_err(dir, "listing", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A newline-terminated line with something on it: one event.
fn is_record(line: &[u8]) -> bool {
    line.last() == Some(&b'\n') && line.iter().any(|b| !b.is_ascii_whitespace())
}

fn count_records(path: &Path) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(|e| journal_err(path, "reading", e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| journal_err(path, "reading", e))?;
        if read == 0 {
            return Ok(n);
        }
        if is_record(&line) {
            n += 1;
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| journal_err(dir, "fsync of the directory", e))
}

impl Journal {
    /// Opens (creating) `dir`, takes its lock and counts what an earlier
    /// run left. New events go to a fresh segment after the existing ones.
    pub(crate) fn open(dir: &Path) -> Result<(Journal, Existing), AuditError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| journal_err(dir, "creating the directory", e))?;
            // Make the new directory itself survive a crash.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| journal_err(&lock_path, "opening", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(AuditError::JournalLocked {
                    path: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(journal_err(&lock_path, "locking", e)),
        }
        let segments = list_segments(dir)?;
        let mut lines = 0;
        for n in &segments {
            lines += count_records(&segment_path(dir, *n))?;
        }
        let current = segments.last().map_or(1, |n| n + 1);
        let journal = Journal {
            dir: dir.to_path_buf(),
            state: Mutex::new(WriteState {
                file: None,
                size: 0,
                written: 0,
                rotate: false,
            }),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(0),
            current: AtomicU64::new(current),
            _lock: lock,
        };
        let existing = Existing {
            first_segment: segments.first().copied(),
            lines,
        };
        Ok((journal, existing))
    }

    /// The journal directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of the segment being appended to.
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    fn state(&self) -> MutexGuard<'_, WriteState> {
        // A panic elsewhere cannot leave WriteState inconsistent in a way
        // that matters more than losing the journal, so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line (ending in `\n`) and returns its number for
    /// [`Journal::sync`]. On error the line is not in the journal.
    pub(crate) fn append(&self, line: &[u8]) -> Result<u64, AuditError> {
        let mut st = self.state();
        let len = line.len() as u64;
        let needs_rotation = st.rotate || (st.size > 0 && st.size + len > SEGMENT_LIMIT);
        if needs_rotation && st.file.is_some() {
            self.rotate(&mut st)?;
        }
        let file = match &st.file {
            Some(f) => f.clone(),
            None => {
                let f = self.create_segment(self.current())?;
                st.file = Some(f.clone());
                st.size = 0;
                st.rotate = false;
                f
            }
        };
        let path = segment_path(&self.dir, self.current());
        if let Err(e) = (&*file).write_all(line) {
            // Cut the partial line off so the next event starts on a
            // clean line; if even that fails, leave it as a torn tail in a
            // segment we stop writing to.
            if file.set_len(st.size).is_err() {
                st.rotate = true;
            }
            return Err(journal_err(&path, "writing", e));
        }
        st.size += len;
        st.written += 1;
        Ok(st.written)
    }

    /// Makes line `n` durable. Concurrent callers share one fsync.
    pub(crate) fn sync(&self, n: u64) -> Result<(), AuditError> {
        if self.synced.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let _guard = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.synced.load(Ordering::Acquire) >= n {
            return Ok(());
        }
        let (target, file) = {
            let st = self.state();
            (st.written, st.file.clone())
        };
        // Lines in earlier segments were synced when those were rotated
        // out, so syncing the current file covers everything up to target.
        if let Some(file) = file {
            file.sync_data()
                .map_err(|e| journal_err(&segment_path(&self.dir, self.current()), "fsync", e))?;
        }
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Closes the current segment (synced) and moves on to the next
    /// number. If the sync fails the segment stays current, so no caller
    /// is told its line is durable when it may not be.
    fn rotate(&self, st: &mut WriteState) -> Result<(), AuditError> {
        let n = self.current();
        if let Some(file) = &st.file {
            file.sync_data()
                .map_err(|e| journal_err(&segment_path(&self.dir, n), "fsync", e))?;
            self.synced.fetch_max(st.written, Ordering::AcqRel);
        }
        st.file = None;
        st.size = 0;
        st.rotate = false;
        self.current.store(n + 1, Ordering::Release);
        Ok(())
    }

    fn create_segment(&self, n: u64) -> Result<Arc<File>, AuditError> {
        let path = segment_path(&self.dir, n);
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Recipient addresses are personal data: owner only.
            options.mode(0o600);
        }
        let file = options
            .open(&path)
            .map_err(|e| journal_err(&path, "creating", e))?;
        sync_dir(&self.dir)?;
        Ok(Arc::new(file))
    }
}

/// Where the writer is in the journal: everything before it is in the
/// database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    /// Lines before `offset` (so the next line is number `line + 1`).
    pub(crate) line: u64,
}

impl Cursor {
    /// The start of segment `segment`.
    pub(crate) fn start_of(segment: u64) -> Cursor {
        Cursor {
            segment,
            offset: 0,
            line: 0,
        }
    }
}

/// Events read from one segment, not yet committed.
pub(crate) struct Chunk {
    /// Parsed events, in journal order.
    pub(crate) events: Vec<AuditEvent>,
    /// Event lines consumed (parsed or unreadable), for the pending count.
    pub(crate) lines: u64,
    /// Position after the consumed lines.
    pub(crate) end: Cursor,
    /// No complete line is left after `end` in this segment.
    pub(crate) at_end: bool,
}

/// Reads up to `max` event lines of segment `at.segment` from `at.offset`.
///
/// `finished` says the segment will get no more writes: an incomplete last
/// line there is a torn, never acknowledged write and is reported once
/// (via `torn_warned`) and ignored; in the current segment it is simply not
/// complete yet. A missing file reads as empty. A complete line that does
/// not parse is copied into the quarantine file (durably, before the
/// cursor passes it) and logged with its segment and line number; if that
/// copy fails, so does the read, and the line is tried again later.
pub(crate) fn read_chunk(
    dir: &Path,
    at: Cursor,
    max: usize,
    finished: bool,
    torn_warned: &mut bool,
) -> Result<Chunk, AuditError> {
    let path = segment_path(dir, at.segment);
    let mut chunk = Chunk {
        events: Vec::new(),
        lines: 0,
        end: at,
        at_end: true,
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chunk),
        Err(e) => return Err(journal_err(&path, "reading", e)),
    };
    file.seek(SeekFrom::Start(at.offset))
        .map_err(|e| journal_err(&path, "reading", e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    while chunk.events.len() < max {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| journal_err(&path, "reading", e))?;
        if read == 0 {
            return Ok(chunk);
        }
        if line.last() != Some(&b'\n') {
            if finished && !*torn_warned {
                *torn_warned = true;
                tracing::warn!(
                    segment = %path.display(),
                    line = chunk.end.line + 1,
                    offset = chunk.end.offset,
                    bytes = read,
                    "audit journal ends in an incomplete line (a write that was never acknowledged, cut short by a crash); ignoring it"
                );
            }
            return Ok(chunk);
        }
        let at = chunk.end;
        chunk.end.offset += read as u64;
        chunk.end.line += 1;
        if !is_record(&line) {
            continue;
        }
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(event) => chunk.events.push(event),
            Err(e) => set_aside(dir, &path, at, &line, &e)?,
        }
        chunk.lines += 1;
    }
    // Stopped at `max`: there may be more.
    let mut rest = [0u8; 1];
    chunk.at_end = matches!(std::io::Read::read(&mut reader, &mut rest), Ok(0));
    Ok(chunk)
}

/// Copies an unreadable line (which starts at `at`) into the quarantine.
fn set_aside(
    dir: &Path,
    segment: &Path,
    at: Cursor,
    line: &[u8],
    error: &serde_json::Error,
) -> Result<(), AuditError> {
    let origin = quarantine::Origin {
        segment,
        line: at.line + 1,
        offset: at.offset,
    };
    let reason = quarantine::reason(error);
    if quarantine::keep(dir, &origin, line, &reason)? {
        // No content here, not even the parser's message (it can quote
        // the line): the quarantine file holds the line itself.
        tracing::error!(
            segment = %segment.display(),
            line = origin.line,
            quarantine = %dir.join(quarantine::FILE_NAME).display(),
            reason = %reason,
            "unreadable audit journal line moved to quarantine; see `sealgate audit check`"
        );
    }
    Ok(())
}

/// Deletes a drained, finished segment.
pub(crate) fn remove_segment(dir: &Path, n: u64) -> Result<(), AuditError> {
    let path = segment_path(dir, n);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(journal_err(&path, "deleting", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::tests::sample_event;

    fn line(n: u32) -> Vec<u8> {
        let mut l = serde_json::to_vec(&sample_event(n)).unwrap_or_default();
        l.push(b'\n');
        l
    }

    #[test]
    fn append_read_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (j, existing) = Journal::open(dir.path()).unwrap();
        assert_eq!(existing.lines, 0);
        assert_eq!(j.current(), 1);
        for n in 0..3 {
            let no = j.append(&line(n)).unwrap();
            j.sync(no).unwrap();
        }
        // Simulate a crash in the middle of the fourth write.
        let partial = line(3);
        (&*j.state().file.clone().unwrap())
            .write_all(&partial[..partial.len() / 2])
            .unwrap();
        drop(j);

        let (j2, existing) = Journal::open(dir.path()).unwrap();
        assert_eq!(existing.lines, 3);
        assert_eq!(existing.first_segment, Some(1));
        assert_eq!(j2.current(), 2);
        let mut warned = false;
        let at = Cursor::start_of(1);
        let c = read_chunk(dir.path(), at, 2, true, &mut warned).unwrap();
        assert_eq!(c.events.len(), 2);
        assert!(!c.at_end);
        let c = read_chunk(dir.path(), c.end, 10, true, &mut warned).unwrap();
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0], sample_event(2));
        assert!(c.at_end);
        assert!(warned, "the torn line is reported");
    }

    #[test]
    fn second_process_is_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let (_j, _) = Journal::open(dir.path()).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(AuditError::JournalLocked { .. })
        ));
    }

    #[test]
    fn rotates_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let mut big_line = vec![b'x'; (SEGMENT_LIMIT / 3) as usize];
        big_line.push(b'\n');
        for _ in 0..3 {
            let n = j.append(&big_line).unwrap();
            j.sync(n).unwrap();
        }
        assert_eq!(list_segments(dir.path()).unwrap(), vec![1, 2]);
        assert_eq!(j.current(), 2);
    }
}
