//! Journal lines that cannot be read are kept aside, never deleted.
//!
//! A line that is complete (ends in a newline) but does not parse as an
//! event (a disk error, a bug, an edit by hand) is copied, with where it
//! came from, into `quarantine.jsonl` in the journal folder and fsynced
//! before the writer moves past it; only then may its segment be deleted.
//! `sealgate audit check` lists what is there.
//!
//! Copying happens again if the writer rereads the same line (a retry after
//! a database error, a restart before the segment was deleted): entries
//! are matched on segment, line number and the line's SHA-256, so each
//! line is kept once.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::error::AuditError;

/// The quarantine file's name in the journal folder (not a segment name:
/// segments are numbered).
pub(crate) const FILE_NAME: &str = "quarantine.jsonl";

/// One quarantined journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedLine {
    /// When it was set aside (RFC 3339).
    pub quarantined_at: String,
    /// The segment file it came from (file name in the journal folder).
    pub segment: String,
    /// 1-based line number in that segment.
    pub line: u64,
    /// Byte offset of the line in the segment.
    pub offset: u64,
    /// Length of the line without its newline.
    pub bytes: u64,
    /// SHA-256 of the line without its newline, hex.
    pub sha256: String,
    /// Why it could not be read (the kind of error and where in the line;
    /// never the line's content).
    pub reason: String,
    /// The line itself, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The line as hex, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_hex: Option<String>,
}

/// What the quarantine file holds.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    /// The quarantine file.
    pub path: PathBuf,
    /// Its entries, in the order they were set aside.
    pub entries: Vec<QuarantinedLine>,
    /// Lines of the quarantine file itself that do not parse (a crash
    /// while one was written); left in place too.
    pub unreadable: u64,
}

fn err(path: &Path, action: &'static str, source: std::io::Error) -> AuditError {
    AuditError::Journal {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Reads the quarantine file of journal folder `dir` (empty if there is
/// none).
pub fn read(dir: &Path) -> Result<Quarantine, AuditError> {
    let path = dir.join(FILE_NAME);
    let mut q = Quarantine {
        path: path.clone(),
        ..Quarantine::default()
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(q),
        Err(e) => return Err(err(&path, "reading", e)),
    };
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| err(&path, "reading", e))?;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<QuarantinedLine>(&line) {
            Ok(entry) => q.entries.push(entry),
            Err(_) => q.unreadable += 1,
        }
    }
    Ok(q)
}

/// Where a bad line was found.
pub(crate) struct Origin<'a> {
    pub(crate) segment: &'a Path,
    pub(crate) line: u64,
    pub(crate) offset: u64,
}

/// Copies `raw` (one journal line, with or without its newline) into the
/// quarantine file of `dir`, durably. Returns `false` if it was already
/// there.
pub(crate) fn keep(
    dir: &Path,
    at: &Origin<'_>,
    raw: &[u8],
    reason: &str,
) -> Result<bool, AuditError> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let segment = at
        .segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sha256 = crate::util::sha256_hex(raw);
    let known = read(dir)?;
    if known
        .entries
        .iter()
        .any(|e| e.segment == segment && e.line == at.line && e.sha256 == sha256)
    {
        return Ok(false);
    }
    let (text, hex) = match std::str::from_utf8(raw) {
        Ok(t) => (Some(t.to_string()), None),
        Err(_) => (None, Some(hex::encode(raw))),
    };
    let entry = QuarantinedLine {
        quarantined_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        segment,
        line: at.line,
        offset: at.offset,
        bytes: raw.len() as u64,
        sha256,
        reason: reason.to_string(),
        raw: text,
        raw_hex: hex,
    };
    let mut line = serde_json::to_vec(&entry).map_err(|e| {
        err(
            &known.path,
            "encoding",
            std::io::Error::other(e.to_string()),
        )
    })?;
    line.push(b'\n');
    append_durably(&known.path, &line)?;
    Ok(true)
}

/// Appends `line` and fsyncs; a torn earlier write is closed off with a
/// newline first so that the new entry starts on a line of its own.
fn append_durably(path: &Path, line: &[u8]) -> Result<(), AuditError> {
    let created = !path.exists();
    let mut options = OpenOptions::new();
    options.create(true).read(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The same personal data as the journal: owner only.
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err(path, "creating", e))?;
    if ends_without_newline(&mut file).map_err(|e| err(path, "reading", e))? {
        file.write_all(b"\n").map_err(|e| err(path, "writing", e))?;
    }
    file.write_all(line).map_err(|e| err(path, "writing", e))?;
    file.sync_data().map_err(|e| err(path, "fsync", e))?;
    if created && let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(dir, "fsync of the directory", e))?;
    }
    Ok(())
}

fn ends_without_newline(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Why a line did not parse, without any of its content.
pub(crate) fn reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "JSON cut short",
        Category::Data => "JSON that is not an audit event",
        Category::Io => "unreadable",
    };
    format!("{kind} (at column {})", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(segment: &Path, line: u64) -> Origin<'_> {
        Origin {
            segment,
            line,
            offset: 10 * line,
        }
    }

    #[test]
    fn keeps_each_line_once_and_durably_readable() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("000000000003.jsonl");
        assert!(read(dir.path()).unwrap().entries.is_empty());
        assert!(
            keep(
                dir.path(),
                &origin(&seg, 2),
                b"{garbled\n",
                "not valid JSON"
            )
            .unwrap()
        );
        // The same line read again (a retry) is not added twice...
        assert!(!keep(dir.path(), &origin(&seg, 2), b"{garbled", "not valid JSON").unwrap());
        // ...but other bytes at the same place are (a reused segment number).
        assert!(keep(dir.path(), &origin(&seg, 2), b"\xff\xfe", "not valid JSON").unwrap());
        let q = read(dir.path()).unwrap();
        assert_eq!(q.entries.len(), 2);
        assert_eq!(q.unreadable, 0);
        let first = &q.entries[0];
        assert_eq!(first.segment, "000000000003.jsonl");
        assert_eq!((first.line, first.offset, first.bytes), (2, 20, 8));
        assert_eq!(first.raw.as_deref(), Some("{garbled"));
        assert_eq!(q.entries[1].raw_hex.as_deref(), Some("fffe"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&q.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_torn_quarantine_line_is_kept_and_closed_off() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("000000000001.jsonl");
        std::fs::write(dir.path().join(FILE_NAME), b"{\"quarantined_at\":\"20").unwrap();
        assert!(keep(dir.path(), &origin(&seg, 1), b"x", "not valid JSON").unwrap());
        let q = read(dir.path()).unwrap();
        assert_eq!(q.entries.len(), 1);
        assert_eq!(q.unreadable, 1);
    }

    #[test]
    fn reasons_carry_no_content() {
        let e = serde_json::from_str::<crate::audit::AuditEvent>("{\"event_id\": \"Jane Doe\"}")
            .unwrap_err();
        let r = reason(&e);
        assert!(!r.contains("Jane"), "{r}");
        assert!(r.starts_with("JSON that is not an audit event"), "{r}");
        let e = serde_json::from_str::<crate::audit::AuditEvent>("{nope").unwrap_err();
        assert!(reason(&e).starts_with("not valid JSON"));
    }
}
