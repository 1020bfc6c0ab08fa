//! The spool: the only place a message lives between `250 OK` and delivery.
//!
//! Each message is two files in `<spool_dir>/queue/`:
//! - `<id>.msg`, the content, written while DATA streams in, encrypted in
//!   64 KiB AES-256-GCM chunks (nonce = 4-byte chunk counter and a
//!   last-chunk flag; the queue id is the associated data), so memory does
//!   not grow with message size and truncation or reordering is detected;
//! - `<id>.env`, the envelope and per-recipient state, one AES-256-GCM
//!   sealed JSON document, replaced atomically (write, fsync, rename, fsync
//!   folder) on every state change.
//!
//! Every file (and every rewrite of an envelope) is encrypted under its own
//! key, derived with HKDF-SHA256 from the spool key and a random 128-bit
//! salt stored in the file header, so a nonce can never repeat under one
//! key whatever the volume. The header also names the spool key by a short
//! id, so the key file can hold the current key and older ones: new files
//! use the first, older files stay readable until the queue is drained
//! (`sealgate spool-key rotate` / `prune`).
//!
//! Writes go through `std::fs` on a blocking thread, or through tokio with
//! an explicit `flush` before `sync_all`, so that a failed write (a full
//! disk, an I/O error) is always seen: nothing half-written is renamed over
//! a good file, and no `250` is sent for it.
//!
//! The `.env` file is the commit point: it is written only after the `.msg`
//! file is complete and fsynced, so on recovery a `.msg` without `.env` is
//! a half-received message (the client never got `250`) and is discarded.
//!
//! The `.env` file's mtime is the message's next due time (as Postfix does
//! for its deferred queue), set before the fsync and rename of every
//! envelope write; a message with nothing due (held recipients only) gets
//! [`PARKED`]. So the folder itself is the index by due time of the
//! messages that are not in the scheduler's window: a directory walk that
//! stats each `.env` finds the due ones without decrypting anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{QueueId, QueuedMessage};

/// Format 1: one spool key, random nonce prefix; still read.
const MSG_MAGIC_V1: &[u8; 8] = b"SGMSG001";
const ENV_MAGIC_V1: &[u8; 8] = b"SGENV001";
/// Format 2: a key per file (HKDF), header `magic | key id | salt`.
const MSG_MAGIC: &[u8; 8] = b"SGMSG002";
const ENV_MAGIC: &[u8; 8] = b"SGENV002";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const KEY_ID: usize = 8;
const SALT: usize = 16;
const MSG_HEADER_V1: usize = 8 + 7;
const HEADER: usize = 8 + KEY_ID + SALT;
/// HKDF `info` for content and envelope keys (different keys per purpose).
const INFO_MSG: &[u8] = b"sealgate spool v2 content";
const INFO_ENV: &[u8] = b"sealgate spool v2 envelope";
/// Mode of every spool file and of the spool folders.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
/// File in `spool_dir` naming the key id the daemon encrypts with.
const KEY_IN_USE: &str = "key-in-use";

/// Seconds since the epoch of [`parked`]: 2038-01-19T03:14:07Z.
const PARKED_SECS: u64 = i32::MAX as u64;

/// The mtime of an envelope whose message has nothing due (held
/// recipients only, waiting for an operator): 2038-01-19T03:14:07Z, the
/// latest time every Linux file system can store, so it is never clamped
/// into something that looks due sooner.
pub fn parked() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(PARKED_SECS)
}

/// When message `msg` is next due, as the mtime of its envelope.
pub fn due_mtime(msg: &QueuedMessage) -> SystemTime {
    match msg.next_due() {
        None => parked(),
        Some(at) => SystemTime::from(at).clamp(UNIX_EPOCH, parked() - Duration::from_secs(1)),
    }
}

/// What the folder tells about one envelope without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeStat {
    /// When its message is next due (the file's mtime); [`parked`] when
    /// nothing is.
    pub due: SystemTime,
    /// When the envelope was last written (the file's ctime).
    pub changed: SystemTime,
}

impl EnvelopeStat {
    fn of(meta: &std::fs::Metadata) -> EnvelopeStat {
        use std::os::unix::fs::MetadataExt;
        let ctime = u64::try_from(meta.ctime())
            .ok()
            .and_then(|s| {
                let nanos = u32::try_from(meta.ctime_nsec())
                    .unwrap_or(0)
                    .min(999_999_999);
                UNIX_EPOCH.checked_add(Duration::new(s, nanos))
            })
            .unwrap_or(UNIX_EPOCH);
        EnvelopeStat {
            due: meta.modified().unwrap_or(UNIX_EPOCH),
            changed: ctime,
        }
    }

    /// Nothing of the message is due by time (held recipients only).
    pub fn parked(&self) -> bool {
        self.due >= parked()
    }
}

/// Errors of the spool, for a mail administrator.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("spool folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool file {path} cannot be decrypted (wrong spool key, or the file was damaged or tampered with)"
    )]
    Decrypt { path: PathBuf },
    #[error("spool file {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the spool {path} is in use by another sealgate process (it holds a lock on the folder): stop that one first, or give this one its own `[server] spool_dir`"
    )]
    InUse { path: PathBuf },
}

impl SpoolError {
    /// Whether the failure is a full disk or quota (the listener then
    /// answers `452 4.3.1`, the client should try again later).
    pub fn is_out_of_space(&self) -> bool {
        let source = match self {
            SpoolError::Io { source, .. } | SpoolError::Folder { source, .. } => source,
            _ => return false,
        };
        source.kind() == std::io::ErrorKind::StorageFull
            || source.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(source.raw_os_error(), Some(28) | Some(122))
    }
}

/// The spool keys, never logged (their Debug is redacted): the current
/// key, which encrypts new files, then older keys that only decrypt.
#[derive(Clone)]
pub struct SpoolKey {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpoolKey({} keys)", self.keys.len())
    }
}

/// The short id a file header names its key by: the first 8 bytes of
/// SHA-256 over a label and the key (reveals nothing of the key).
fn key_id(key: &[u8; 32]) -> [u8; KEY_ID] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sealgate spool key id\0");
    ctx.update(key);
    let mut id = [0u8; KEY_ID];
    id.copy_from_slice(&ctx.finish().as_ref()[..KEY_ID]);
    id
}

/// An exclusive lock (flock) on `<key file>.lock` while the key file is
/// rewritten, so two operators cannot lose each other's keys.
fn lock_key_file(path: &Path) -> Result<std::fs::File, SpoolError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let io = |source| SpoolError::Io {
        path: lock_path.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&lock_path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; released when `f` is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// The AES-256-GCM key of one file: HKDF-SHA256(spool key, salt, purpose).
fn file_key(key: &[u8; 32], salt: &[u8; SALT], purpose: &'static [u8]) -> LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(key);
    let info = [purpose];
    // Expanding to one AES-256 key length cannot exceed HKDF's output limit.
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .unwrap_or_else(|_| unreachable!());
    LessSafeKey::new(UnboundKey::from(okm))
}

/// Parses a key file: one key per line as 64 hex characters (blank lines
/// and `#` comments ignored), the first being the current one; or a file
/// of exactly 32 raw bytes.
fn parse_keys(bytes: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    // The first format: one key as 64 hex characters, white space anywhere
    // (`xxd -p` splits lines at 60).
    let joined: String = String::from_utf8_lossy(bytes).split_whitespace().collect();
    if joined.len() == 64 && joined.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut k = [0u8; 32];
        k.copy_from_slice(&hex::decode(&joined).map_err(|e| e.to_string())?);
        return Ok(vec![k]);
    }
    match parse_key_lines(bytes) {
        Err(_) if bytes.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            Ok(vec![k])
        }
        other => other,
    }
}

fn parse_key_lines(bytes: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "must hold keys written as 64 hex characters per line".to_string())?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let raw = hex::decode(line)
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| format!("line {}: a key is 64 hex characters", n + 1))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&raw);
        keys.push(k);
    }
    if keys.is_empty() {
        return Err("holds no key; create one with `sealgate keygen --out FILE`".into());
    }
    Ok(keys)
}

impl SpoolKey {
    /// Reads a key file (see [`parse_keys`]).
    pub fn load(path: &Path) -> Result<SpoolKey, SpoolError> {
        let err = |reason: String| SpoolError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| {
            err(format!(
                "cannot read it ({e}); create one with `sealgate keygen --out {}`",
                path.display()
            ))
        })?;
        let keys = parse_keys(&bytes).map_err(err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "spool key file is readable by group or others; chmod 600 it");
                }
            }
        }
        Ok(SpoolKey { keys })
    }

    /// The keys themselves, current first: for the portal, whose master key
    /// file has the same form and which wraps keys of its own with them.
    pub fn raw_keys(&self) -> &[[u8; 32]] {
        &self.keys
    }

    /// Creates a new random key file (mode 0600), refusing to overwrite one.
    pub fn generate(path: &Path) -> Result<(), SpoolError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        };
        let key = crate::util::random_bytes::<32>();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(err)?;
        writeln!(f, "{}", hex::encode(key)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(())
    }

    /// Puts a new random key first in the key file; the old keys stay for
    /// reading files written before. Returns the number of keys now held.
    pub fn rotate(path: &Path) -> Result<usize, SpoolError> {
        let _lock = lock_key_file(path)?;
        let old = SpoolKey::load(path)?;
        let mut keys = vec![crate::util::random_bytes::<32>()];
        keys.extend(old.keys);
        Self::store(path, &keys)?;
        Ok(keys.len())
    }

    /// Drops the older keys that no file in `spool` uses any more. Returns
    /// how many were dropped.
    pub fn prune(path: &Path, spool: &Spool) -> Result<usize, SpoolError> {
        let _lock = lock_key_file(path)?;
        let old = SpoolKey::load(path)?;
        let used = spool.key_ids_in_use()?;
        let keep: Vec<[u8; 32]> = old
            .keys
            .iter()
            .enumerate()
            .filter(|(i, k)| *i == 0 || used.contains(&key_id(k)))
            .map(|(_, k)| *k)
            .collect();
        let dropped = old.keys.len() - keep.len();
        if dropped > 0 {
            Self::store(path, &keep)?;
        }
        Ok(dropped)
    }

    fn store(path: &Path, keys: &[[u8; 32]]) -> Result<(), SpoolError> {
        let mut text = String::from("# sealgate spool keys: the first encrypts new files\n");
        for k in keys {
            text.push_str(&hex::encode(k));
            text.push('\n');
        }
        crate::util::atomic_write(path, text.as_bytes()).map_err(|source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn current(&self) -> &[u8; 32] {
        // `parse_keys` never returns an empty list.
        &self.keys[0]
    }

    /// The key a file header names.
    fn by_id(&self, id: &[u8]) -> Option<&[u8; 32]> {
        self.keys.iter().find(|k| key_id(k)[..] == *id)
    }

    /// A header and key for a new file: magic, key id, fresh salt.
    fn new_file(&self, magic: &[u8; 8], purpose: &'static [u8]) -> (Vec<u8>, LessSafeKey) {
        let salt = crate::util::random_bytes::<SALT>();
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(magic);
        header.extend_from_slice(&key_id(self.current()));
        header.extend_from_slice(&salt);
        (header, file_key(self.current(), &salt, purpose))
    }

    /// The key of an existing format-2 file from its header.
    fn for_header(&self, header: &[u8], purpose: &'static [u8]) -> Option<LessSafeKey> {
        let key = self.by_id(header.get(8..8 + KEY_ID)?)?;
        let mut salt = [0u8; SALT];
        salt.copy_from_slice(header.get(8 + KEY_ID..HEADER)?);
        Some(file_key(key, &salt, purpose))
    }

    /// Format-1 files were encrypted with a spool key directly.
    fn v1_keys(&self) -> impl Iterator<Item = LessSafeKey> + '_ {
        self.keys.iter().map(|k| {
            // 32 bytes is always a valid AES-256 key length.
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).unwrap_or_else(|_| unreachable!()))
        })
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(b: [u8; 32]) -> SpoolKey {
        SpoolKey { keys: vec![b] }
    }
}

/// The spool folder.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    key: SpoolKey,
    syncer: DirSyncer,
}

/// This process's hold on the spool; released when dropped (or when the
/// process dies: it is an `flock`, the kernel lets go).
#[derive(Debug)]
pub struct SpoolLock {
    _dir: std::fs::File,
}

/// Group commit of folder fsyncs: every caller waits for an fsync of the
/// spool folder that started after its rename, and callers that arrive
/// while one runs share the next. Under load this turns one folder fsync
/// per message into one per batch.
#[derive(Clone)]
struct DirSyncer {
    tx: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<std::io::Result<()>>>,
}

impl std::fmt::Debug for DirSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirSyncer")
    }
}

impl DirSyncer {
    fn start(dir: PathBuf) -> DirSyncer {
        let (tx, rx) =
            std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<std::io::Result<()>>>();
        let spawned = std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || {
                // Ends when every Spool (sender) is gone.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let result = std::fs::File::open(&dir).and_then(|d| d.sync_all());
                    for w in waiting {
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = w.send(r);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the spool fsync thread");
        }
        DirSyncer { tx }
    }
}

/// What recovery found in the spool folder.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Complete messages read into memory (the window due soonest), to be
    /// scheduled.
    pub messages: Vec<QueuedMessage>,
    /// Every complete message, in memory or on disk only.
    pub queued: usize,
    /// The earliest due time of the complete messages left on disk only
    /// (held-only ones aside), if any.
    pub on_disk_due: Option<SystemTime>,
    /// Messages whose envelope cannot be used; never loaded.
    pub damaged_ids: Vec<QueueId>,
    /// Half-written files removed (crash or disconnect during DATA).
    pub discarded: usize,
    /// Files that could not be read; left in place for an operator.
    pub damaged: Vec<String>,
    /// Recipients whose last attempt was logged but whose outcome never
    /// reached the envelope (a crash in between): delivered or not known.
    pub unresolved: Vec<super::attempts::Unresolved>,
}

impl Recovered {
    fn note_on_disk(&mut self, due: SystemTime) {
        if due < parked() {
            self.on_disk_due = Some(self.on_disk_due.map_or(due, |d| d.min(due)));
        }
    }
}

impl Spool {
    /// Opens (creating if needed) the spool folder.
    pub fn open(spool_dir: &Path, key: SpoolKey) -> Result<Spool, SpoolError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = spool_dir.join("queue");
        let folder = |path: &Path| {
            let err = |source| SpoolError::Folder {
                path: path.to_path_buf(),
                source,
            };
            std::fs::create_dir_all(path).map_err(err)?;
            // Mail waits here: nobody but the daemon's user lists it.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE)).map_err(err)
        };
        folder(spool_dir)?;
        folder(&dir)?;
        let syncer = DirSyncer::start(dir.clone());
        Ok(Spool { dir, key, syncer })
    }

    /// Takes the spool for this process alone, for as long as the returned
    /// lock lives: the daemon for its whole run, an offline `queue remove`
    /// for its edit (an `flock` on the spool folder). Without it a second daemon's start-up recovery would
    /// delete the first one's messages still streaming in (content without
    /// an envelope yet). Fails with [`SpoolError::InUse`] at once, never
    /// waits.
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        use std::os::fd::AsRawFd;
        // The folder itself, opened read-only: no lock file to create, so
        // an offline command run as root leaves nothing the daemon's own
        // user could not open later.
        let root = self.root();
        let dir = std::fs::File::open(root).map_err(|source| SpoolError::Folder {
            path: root.to_path_buf(),
            source,
        })?;
        // SAFETY: flock on a descriptor we own, with constant arguments.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::WouldBlock {
                return Err(SpoolError::InUse {
                    path: root.to_path_buf(),
                });
            }
            return Err(SpoolError::Folder {
                path: root.to_path_buf(),
                source,
            });
        }
        Ok(SpoolLock { _dir: dir })
    }

    /// Bytes free for the daemon on the spool's file system.
    pub fn free_space(&self) -> Result<u64, SpoolError> {
        crate::util::free_space(&self.dir).map_err(|source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        })
    }

    /// The ids of the spool keys that files in the spool use, plus the key
    /// the daemon last started with (it may be writing with it right now).
    /// Fails closed: a file that cannot be read, or whose header is not
    /// complete yet (a message streaming in), is an error, so `prune` never
    /// drops a key something may still need.
    pub fn key_ids_in_use(&self) -> Result<std::collections::BTreeSet<[u8; KEY_ID]>, SpoolError> {
        use std::io::Read;
        let folder_err = |source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        };
        let mut used = std::collections::BTreeSet::new();
        let marker = self.root().join(KEY_IN_USE);
        match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let id = hex::decode(text.trim()).ok().filter(|b| b.len() == KEY_ID);
                let id = id.ok_or_else(|| SpoolError::Corrupt {
                    path: marker.clone(),
                    reason: "not a key id".into(),
                })?;
                let mut k = [0u8; KEY_ID];
                k.copy_from_slice(&id);
                used.insert(k);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SpoolError::Io {
                    path: marker,
                    source,
                });
            }
        }
        for entry in std::fs::read_dir(&self.dir).map_err(folder_err)? {
            let path = entry.map_err(folder_err)?.path();
            let io = |source| SpoolError::Io {
                path: path.clone(),
                source,
            };
            let mut header = Vec::with_capacity(HEADER);
            std::fs::File::open(&path)
                .map_err(io)?
                .take(HEADER as u64)
                .read_to_end(&mut header)
                .map_err(io)?;
            let magic = header.get(..8);
            if magic == Some(MSG_MAGIC_V1) || magic == Some(ENV_MAGIC_V1) {
                used.extend(self.key.keys.iter().map(key_id));
            } else if header.len() == HEADER
                && (magic == Some(MSG_MAGIC) || magic == Some(ENV_MAGIC))
            {
                let mut id = [0u8; KEY_ID];
                id.copy_from_slice(&header[8..8 + KEY_ID]);
                used.insert(id);
            } else {
                return Err(SpoolError::Corrupt {
                    path,
                    reason: "no complete spool header (a message still being received, or a foreign file); try again when the spool is quiet".into(),
                });
            }
        }
        Ok(used)
    }

    /// Records which key this daemon encrypts with, for `spool-key prune`.
    pub fn record_key_in_use(&self) -> Result<(), SpoolError> {
        let path = self.root().join(KEY_IN_USE);
        let id = hex::encode(key_id(self.key.current()));
        crate::util::atomic_write(&path, id.as_bytes())
            .map_err(|source| SpoolError::Io { path, source })
    }

    /// The spool folder as configured (`spool_dir`), holding `queue/`.
    pub fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    fn msg_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{}.msg", id.0))
    }

    fn env_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{}.env", id.0))
    }

    /// Starts writing the content of message `id`.
    pub async fn create_content(&self, id: &QueueId) -> Result<ContentWriter, SpoolError> {
        let path = self.msg_path(id);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .await
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        let (header, key) = self.key.new_file(MSG_MAGIC, INFO_MSG);
        let mut w = ContentWriter {
            file: tokio::io::BufWriter::with_capacity(CHUNK + TAG, file),
            path,
            key,
            aad: id.0.clone(),
            counter: 0,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        };
        w.write_raw(&header).await?;
        Ok(w)
    }

    /// Writes (or replaces) the envelope and state of a message atomically.
    /// The message is durable once this returns.
    pub async fn write_envelope(&self, msg: &QueuedMessage) -> Result<(), SpoolError> {
        let path = self.env_path(&msg.id);
        // A name of its own per write: two writers never share a temporary file.
        let tmp = self.dir.join(format!(
            "{}.env.{}.tmp",
            msg.id.0,
            hex::encode(crate::util::random_bytes::<6>())
        ));
        let json = serde_json::to_vec(msg).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let sealed = seal(&self.key, &msg.id, &json)?;
        let due = due_mtime(msg);
        // std::fs on a blocking thread: every write and fsync error is seen
        // before the rename, so a short write never replaces a good envelope.
        let written = {
            let (tmp, path) = (tmp.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                crate::util::write_synced(&tmp, &sealed, FILE_MODE, Some(due)).map_err(
                    |source| SpoolError::Io {
                        path: tmp.clone(),
                        source,
                    },
                )?;
                std::fs::rename(&tmp, &path).map_err(|source| SpoolError::Io { path, source })
            })
        }
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        self.sync_dir().await
    }

    async fn sync_dir(&self) -> Result<(), SpoolError> {
        let err = |source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.syncer.tx.send(tx).map_err(|_| {
            err(std::io::Error::other(
                "the spool fsync thread is not running",
            ))
        })?;
        rx.await
            .map_err(|_| err(std::io::Error::other("the spool fsync thread stopped")))?
            .map_err(err)
    }

    /// Reads the envelope of message `id`.
    pub fn read_envelope(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        self.read_envelope_file(id).map(|(msg, _)| msg)
    }

    /// [`Spool::read_envelope`], also returning the open file: its due
    /// time can then be mended on exactly the version that was read
    /// (`File::set_modified`), never on one written over it since.
    pub fn read_envelope_file(
        &self,
        id: &QueueId,
    ) -> Result<(QueuedMessage, std::fs::File), SpoolError> {
        use std::io::Read;
        let path = self.env_path(id);
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let plain = open(&self.key, id, &data).ok_or(SpoolError::Decrypt { path: path.clone() })?;
        let msg = serde_json::from_slice(&plain).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok((msg, file))
    }

    /// Removes both files of a message (after final delivery or bounce).
    pub async fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        // The envelope goes first: without it the content is an orphan that
        // recovery discards, never a message that reappears.
        for path in [self.env_path(id), self.msg_path(id)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(SpoolError::Io { path, source }),
            }
        }
        self.sync_dir().await
    }

    /// Removes the content file of a message whose DATA did not complete.
    pub async fn discard_content(&self, id: &QueueId) {
        let _ = tokio::fs::remove_file(self.msg_path(id)).await;
    }

    /// Opens the content of message `id` for reading.
    pub async fn open_content(&self, id: &QueueId) -> Result<ContentReader, SpoolError> {
        let path = self.msg_path(id);
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).await.map_err(io)?;
        let corrupt = |reason: &str| SpoolError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let (keys, nonces, header_len) = if &magic == MSG_MAGIC {
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(&magic);
            file.read_exact(&mut header[8..]).await.map_err(io)?;
            let key = self
                .key
                .for_header(&header, INFO_MSG)
                .ok_or_else(|| corrupt("written with a spool key that is not in the key file"))?;
            (vec![key], [0u8; 7], HEADER)
        } else if &magic == MSG_MAGIC_V1 {
            let mut prefix = [0u8; 7];
            file.read_exact(&mut prefix).await.map_err(io)?;
            (self.key.v1_keys().collect(), prefix, MSG_HEADER_V1)
        } else {
            return Err(corrupt("not a sealgate spool file"));
        };
        Ok(ContentReader {
            file,
            path: path.clone(),
            keys,
            aad: id.0.clone(),
            prefix: nonces,
            counter: 0,
            remaining: len.saturating_sub(header_len as u64),
            done: false,
        })
    }

    /// Reads the whole content into memory (DSN headers, tests, small tools).
    pub async fn read_content(&self, id: &QueueId, limit: usize) -> Result<Vec<u8>, SpoolError> {
        let mut r = self.open_content(id).await?;
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await? {
            out.extend_from_slice(&chunk);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    /// Reads the envelope of message `id` on a blocking thread.
    pub async fn load_envelope(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        let (spool, id2) = (self.clone(), id.clone());
        tokio::task::spawn_blocking(move || spool.read_envelope(&id2))
            .await
            .unwrap_or_else(|e| {
                Err(SpoolError::Io {
                    path: self.env_path(id),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    /// Whether message `id` has a committed envelope.
    pub fn has_envelope(&self, id: &QueueId) -> bool {
        self.env_path(id).is_file()
    }

    /// Sets the due-time mtime of an existing envelope without rewriting
    /// it: the mtime is only an index (the envelope inside is the truth),
    /// so no fsync is needed; a lost update is found and made again by the
    /// next scan.
    pub fn set_due_hint(&self, id: &QueueId, due: SystemTime) -> Result<(), SpoolError> {
        let path = self.env_path(id);
        std::fs::File::open(&path)
            .and_then(|f| f.set_modified(due))
            .map_err(|source| SpoolError::Io { path, source })
    }

    /// Walks the queue folder, calling `each` with every committed
    /// envelope's id and times, in directory order. Streaming: memory does
    /// not grow with the queue. Files that vanish during the walk are
    /// skipped; `each` returns `false` to stop early.
    pub fn walk_envelopes(
        &self,
        mut each: impl FnMut(QueueId, EnvelopeStat) -> bool,
    ) -> Result<(), SpoolError> {
        let folder = |source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&self.dir).map_err(folder)? {
            let entry = entry.map_err(folder)?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".env"))
                .and_then(QueueId::parse)
            else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SpoolError::Io {
                        path: entry.path(),
                        source,
                    });
                }
            };
            if !each(id, EnvelopeStat::of(&meta)) {
                break;
            }
        }
        Ok(())
    }

    /// Scans the spool after a start, in one streaming pass: half-written
    /// files are removed, unreadable ones reported and kept, committed
    /// ones counted, and the `window` of them due soonest (by the mtime
    /// index) read into memory. The others stay on disk only.
    pub fn recover(&self, window: usize) -> Result<Recovered, SpoolError> {
        let mut rec = Recovered::default();
        let folder = |source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        };
        // The `window` soonest due, as a max-heap: the latest one is
        // pushed out first.
        let mut soonest: std::collections::BinaryHeap<(SystemTime, QueueId)> =
            std::collections::BinaryHeap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(folder)? {
            let entry = entry.map_err(folder)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                rec.discarded += 1;
            } else if let Some(id) = name.strip_suffix(".msg") {
                // Checked one by one rather than by collecting names, so a
                // million queued messages cost no memory here.
                if !self.dir.join(format!("{id}.env")).exists() {
                    let _ = std::fs::remove_file(entry.path());
                    rec.discarded += 1;
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                let Some(qid) = QueueId::parse(id) else {
                    rec.damaged.push(format!("{id}: not a queue id"));
                    continue;
                };
                if !self.msg_path(&qid).exists() {
                    rec.damaged.push(format!("{id}: envelope without content"));
                    rec.damaged_ids.push(qid);
                    continue;
                }
                let due = match entry.metadata() {
                    Ok(m) => EnvelopeStat::of(&m).due,
                    Err(e) => {
                        rec.damaged.push(format!("{id}: {e}"));
                        continue;
                    }
                };
                rec.queued += 1;
                soonest.push((due, qid));
                if soonest.len() > window {
                    if let Some((later, _)) = soonest.pop() {
                        rec.note_on_disk(later);
                    }
                }
            }
        }
        for (_, id) in soonest.into_sorted_vec() {
            match self.read_envelope(&id) {
                Ok(m) => rec.messages.push(m),
                Err(e) => {
                    rec.damaged.push(format!("{id}: {e}"));
                    rec.damaged_ids.push(id);
                    rec.queued -= 1;
                }
            }
        }
        Ok(rec)
    }

    /// Lists the ids of messages in the spool (committed ones only).
    pub fn list_ids(&self) -> Result<Vec<QueueId>, SpoolError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        })?;
        let mut ids: Vec<QueueId> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".env")
                    .map(|s| QueueId(s.to_string()))
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn chunk_nonce(prefix: &[u8; 7], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn seal(key: &SpoolKey, id: &QueueId, plain: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let (mut out, aead) = key.new_file(ENV_MAGIC, INFO_ENV);
    let mut body = plain.to_vec();
    // Each envelope write has its own key (fresh salt): a fixed nonce is safe.
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; 12]),
        Aad::from(id.0.as_bytes()),
        &mut body,
    )
    .map_err(|_| SpoolError::Corrupt {
        path: PathBuf::from(format!("{id}.env")),
        reason: "encryption failed".into(),
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn open(key: &SpoolKey, id: &QueueId, data: &[u8]) -> Option<Vec<u8>> {
    let aad = || Aad::from(id.0.as_bytes());
    if data.len() >= HEADER + TAG && &data[..8] == ENV_MAGIC {
        let aead = key.for_header(&data[..HEADER], INFO_ENV)?;
        let mut body = data[HEADER..].to_vec();
        let plain = aead
            .open_in_place(Nonce::assume_unique_for_key([0u8; 12]), aad(), &mut body)
            .ok()?;
        return Some(plain.to_vec());
    }
    if data.len() < 8 + 12 + TAG || &data[..8] != ENV_MAGIC_V1 {
        return None;
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&data[8..20]);
    key.v1_keys().find_map(|aead| {
        let mut body = data[20..].to_vec();
        let plain = aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad(), &mut body)
            .ok()?;
        Some(plain.to_vec())
    })
}

/// Streams message content into an encrypted spool file.
pub struct ContentWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    /// This file's own key (HKDF from the spool key and the header's salt).
    key: LessSafeKey,
    aad: String,
    counter: u32,
    buf: Vec<u8>,
    written: u64,
    digest: ring::digest::Context,
}

impl ContentWriter {
    async fn write_raw(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.file
            .write_all(data)
            .await
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Appends plaintext.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), SpoolError> {
        self.written += data.len() as u64;
        self.digest.update(data);
        while !data.is_empty() {
            // A full buffer is flushed only once more data arrives, so the
            // chunk written by `finish` is always the one flagged last.
            if self.buf.len() == CHUNK {
                self.flush_chunk(false).await?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    async fn flush_chunk(&mut self, last: bool) -> Result<(), SpoolError> {
        let nonce = chunk_nonce(&[0u8; 7], self.counter, last);
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| SpoolError::Corrupt {
                path: self.path.clone(),
                reason: "message too large for the spool format".into(),
            })?;
        let mut chunk = std::mem::take(&mut self.buf);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(self.aad.as_bytes()), &mut chunk)
            .map_err(|_| SpoolError::Corrupt {
                path: self.path.clone(),
                reason: "encryption failed".into(),
            })?;
        self.write_raw(&chunk).await?;
        chunk.clear();
        self.buf = chunk;
        Ok(())
    }

    /// Bytes of plaintext written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Writes the last chunk and fsyncs the file. Returns the plaintext size
    /// and its SHA-256 (hex).
    pub async fn finish(mut self) -> Result<(u64, String), SpoolError> {
        self.flush_chunk(true).await?;
        let io = |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.flush().await.map_err(io)?;
        self.file.get_mut().sync_all().await.map_err(io)?;
        Ok((self.written, hex::encode(self.digest.finish().as_ref())))
    }
}

/// Streams decrypted message content out of a spool file, chunk by chunk.
pub struct ContentReader {
    file: tokio::fs::File,
    path: PathBuf,
    /// The file's key; for format-1 files every spool key, the right one
    /// found at the first chunk.
    keys: Vec<LessSafeKey>,
    aad: String,
    prefix: [u8; 7],
    counter: u32,
    remaining: u64,
    done: bool,
}

impl ContentReader {
    /// Decrypts one chunk in place; returns the plaintext length. With
    /// several candidate keys (a format-1 file) the one that opens the
    /// first chunk is kept for the rest.
    fn open_chunk(&mut self, last: bool, buf: &mut [u8]) -> Result<usize, SpoolError> {
        let decrypt = || SpoolError::Decrypt {
            path: self.path.clone(),
        };
        let nonce = || chunk_nonce(&self.prefix, self.counter, last);
        let aad = self.aad.as_bytes();
        if self.keys.len() > 1 {
            let found = self.keys.iter().position(|k| {
                let mut trial = buf.to_vec();
                k.open_in_place(nonce(), Aad::from(aad), &mut trial).is_ok()
            });
            let i = found.ok_or_else(decrypt)?;
            let key = self.keys.swap_remove(i);
            self.keys = vec![key];
        }
        let key = self.keys.first().ok_or_else(decrypt)?;
        key.open_in_place(nonce(), Aad::from(aad), buf)
            .map(|plain| plain.len())
            .map_err(|_| decrypt())
    }

    /// The next chunk of plaintext, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SpoolError> {
        if self.done {
            return Ok(None);
        }
        let full = (CHUNK + TAG) as u64;
        let last = self.remaining <= full;
        let size = self.remaining.min(full) as usize;
        if size < TAG {
            return Err(SpoolError::Corrupt {
                path: self.path.clone(),
                reason: "truncated".into(),
            });
        }
        let mut buf = vec![0u8; size];
        self.file
            .read_exact(&mut buf)
            .await
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.remaining -= size as u64;
        let n = self.open_chunk(last, &mut buf)?;
        self.counter = self.counter.wrapping_add(1);
        buf.truncate(n);
        if last {
            self.done = true;
        }
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueuedMessage;

    fn spool(dir: &Path) -> Spool {
        Spool::open(dir, SpoolKey::from_bytes([7u8; 32])).unwrap()
    }

    async fn roundtrip(size: usize) {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let id = QueueId::new();
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut w = s.create_content(&id).await.unwrap();
        for piece in data.chunks(1000) {
            w.write(piece).await.unwrap();
        }
        let (n, sha) = w.finish().await.unwrap();
        assert_eq!(n as usize, size);
        assert_eq!(sha, crate::util::sha256_hex(&data));
        let back = s.read_content(&id, usize::MAX).await.unwrap();
        assert_eq!(back, data, "size {size}");
        // On disk it is not plaintext.
        let raw = std::fs::read(s.msg_path(&id)).unwrap();
        if size > 64 {
            assert!(!raw.windows(64).any(|w| w == &data[..64]));
        }
    }

    #[tokio::test]
    async fn content_roundtrips_at_chunk_edges() {
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            roundtrip(size).await;
        }
    }

    #[tokio::test]
    async fn truncation_and_tampering_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let id = QueueId::new();
        let mut w = s.create_content(&id).await.unwrap();
        w.write(&vec![b'x'; 3 * CHUNK]).await.unwrap();
        w.finish().await.unwrap();
        let path = s.msg_path(&id);
        let raw = std::fs::read(&path).unwrap();
        // Drop the last chunk: the new last one was not sealed as last.
        std::fs::write(&path, &raw[..HEADER + 2 * (CHUNK + TAG)]).unwrap();
        assert!(s.read_content(&id, usize::MAX).await.is_err());
        let mut flipped = raw.clone();
        flipped[HEADER + 10] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(s.read_content(&id, usize::MAX).await.is_err());
    }

    #[tokio::test]
    async fn recovery_keeps_committed_and_discards_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let done = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        let mut w = s.create_content(&done.id).await.unwrap();
        w.write(b"Subject: x\r\n\r\nhi\r\n").await.unwrap();
        w.finish().await.unwrap();
        s.write_envelope(&done).await.unwrap();
        let half = QueueId::new();
        let mut w = s.create_content(&half).await.unwrap();
        w.write(b"Subject: half").await.unwrap();
        drop(w);
        let rec = s.recover(usize::MAX).unwrap();
        assert_eq!(rec.queued, 1);
        assert_eq!(rec.messages.len(), 1);
        assert_eq!(rec.messages[0].id, done.id);
        assert_eq!(rec.discarded, 1);
        assert!(!s.msg_path(&half).exists());
    }

    async fn committed(s: &Spool, m: &QueuedMessage) {
        let mut w = s.create_content(&m.id).await.unwrap();
        w.write(b"Subject: x\r\n\r\nhi\r\n").await.unwrap();
        w.finish().await.unwrap();
        s.write_envelope(m).await.unwrap();
    }

    #[tokio::test]
    async fn the_envelope_mtime_is_the_due_time_and_recovery_loads_the_soonest() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let now = chrono::Utc::now();
        let mut made = Vec::new();
        for offset in [300i64, -60, 3600, 0] {
            let mut m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
            m.recipients[0].status = crate::queue::RecipientStatus::Deferred;
            m.recipients[0].next_attempt = Some(now + chrono::Duration::seconds(offset));
            committed(&s, &m).await;
            made.push(m);
        }
        let mut held = QueuedMessage::for_test("a@example.test", &["c@example.test"]);
        held.recipients[0].status = crate::queue::RecipientStatus::Held;
        committed(&s, &held).await;
        let mtime = |id: &QueueId| {
            std::fs::metadata(s.env_path(id))
                .unwrap()
                .modified()
                .unwrap()
        };
        for m in &made {
            assert_eq!(mtime(&m.id), SystemTime::from(m.next_due().unwrap()));
        }
        assert_eq!(mtime(&held.id), parked());
        let mut walked = Vec::new();
        s.walk_envelopes(|id, st| {
            walked.push((id, st.parked()));
            true
        })
        .unwrap();
        walked.sort();
        let mut want: Vec<(QueueId, bool)> = made.iter().map(|m| (m.id.clone(), false)).collect();
        want.push((held.id.clone(), true));
        want.sort();
        assert_eq!(walked, want);

        let rec = s.recover(2).unwrap();
        assert_eq!(rec.queued, 5);
        let ids: Vec<&QueueId> = rec.messages.iter().map(|m| &m.id).collect();
        assert_eq!(
            ids,
            vec![&made[1].id, &made[3].id],
            "the two due soonest, in due order"
        );
        assert_eq!(
            rec.on_disk_due,
            Some(SystemTime::from(made[0].next_due().unwrap())),
            "the soonest left on disk; the held one is not due by time"
        );
        // A hint set by hand moves the message in the index only.
        let later = SystemTime::from(now + chrono::Duration::seconds(7200));
        s.set_due_hint(&made[1].id, later).unwrap();
        assert_eq!(mtime(&made[1].id), later);
        assert_eq!(s.read_envelope(&made[1].id).unwrap(), made[1]);
    }

    #[tokio::test]
    async fn every_file_has_its_own_key_and_rotation_keeps_old_files_readable() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("spool.key");
        SpoolKey::generate(&key_file).unwrap();
        let s = Spool::open(dir.path(), SpoolKey::load(&key_file).unwrap()).unwrap();
        let (a, b) = (QueueId::new(), QueueId::new());
        for id in [&a, &b] {
            let mut w = s.create_content(id).await.unwrap();
            w.write(&[b'x'; 1000]).await.unwrap();
            w.finish().await.unwrap();
        }
        let (ra, rb) = (
            std::fs::read(s.msg_path(&a)).unwrap(),
            std::fs::read(s.msg_path(&b)).unwrap(),
        );
        assert_eq!(ra[..16], rb[..16], "same magic and key id");
        assert_ne!(ra[16..HEADER], rb[16..HEADER], "fresh salt per file");
        assert_ne!(ra[HEADER..], rb[HEADER..], "same plaintext, different key");
        let m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        s.write_envelope(&m).await.unwrap();
        let before = std::fs::read(s.env_path(&m.id)).unwrap();
        s.write_envelope(&m).await.unwrap();
        assert_ne!(
            before,
            std::fs::read(s.env_path(&m.id)).unwrap(),
            "new key per rewrite"
        );

        assert_eq!(SpoolKey::rotate(&key_file).unwrap(), 2);
        let s2 = Spool::open(dir.path(), SpoolKey::load(&key_file).unwrap()).unwrap();
        assert_eq!(
            s2.read_content(&a, usize::MAX).await.unwrap(),
            vec![b'x'; 1000]
        );
        assert_eq!(s2.read_envelope(&m.id).unwrap(), m);
        // Still in use: prune keeps the old key.
        assert_eq!(SpoolKey::prune(&key_file, &s2).unwrap(), 0);
        for id in [&a, &b, &m.id] {
            std::fs::remove_file(s2.msg_path(id)).ok();
            std::fs::remove_file(s2.env_path(id)).ok();
        }
        let c = QueueId::new();
        let mut w = s2.create_content(&c).await.unwrap();
        w.write(b"new").await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(SpoolKey::prune(&key_file, &s2).unwrap(), 1);
        let s3 = Spool::open(dir.path(), SpoolKey::load(&key_file).unwrap()).unwrap();
        assert_eq!(s3.read_content(&c, usize::MAX).await.unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_file), 0o600);
        assert_eq!(mode(&s3.msg_path(&c)), 0o600);
        assert_eq!(mode(&s3.dir), 0o700);
        assert_eq!(mode(dir.path()), 0o700);
    }

    #[tokio::test]
    async fn prune_keeps_the_daemons_key_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("spool.key");
        SpoolKey::generate(&key_file).unwrap();
        let running = Spool::open(dir.path(), SpoolKey::load(&key_file).unwrap()).unwrap();
        running.record_key_in_use().unwrap();
        SpoolKey::rotate(&key_file).unwrap();
        // The daemon has not restarted: its key stays although no file uses it.
        let cli = Spool::open(dir.path(), SpoolKey::load(&key_file).unwrap()).unwrap();
        assert_eq!(SpoolKey::prune(&key_file, &cli).unwrap(), 0);
        // A message streaming in (header not flushed yet): prune refuses.
        std::fs::write(cli.dir.join("0000.msg"), b"SGMSG0").unwrap();
        assert!(SpoolKey::prune(&key_file, &cli).is_err());
        std::fs::remove_file(cli.dir.join("0000.msg")).unwrap();
        cli.record_key_in_use().unwrap();
        assert_eq!(SpoolKey::prune(&key_file, &cli).unwrap(), 1);
        assert_eq!(SpoolKey::load(&key_file).unwrap().keys.len(), 1);
    }

    #[tokio::test]
    async fn format_1_files_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [9u8; 32];
        let s = spool_with(dir.path(), raw);
        let m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        let v1 = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).unwrap());
        let prefix = [3u8; 7];
        let mut chunk = b"Subject: old\r\n\r\nbody\r\n".to_vec();
        v1.seal_in_place_append_tag(
            chunk_nonce(&prefix, 0, true),
            Aad::from(m.id.0.as_bytes()),
            &mut chunk,
        )
        .unwrap();
        let mut file = MSG_MAGIC_V1.to_vec();
        file.extend_from_slice(&prefix);
        file.extend_from_slice(&chunk);
        std::fs::write(s.msg_path(&m.id), file).unwrap();
        let mut env = serde_json::to_vec(&m).unwrap();
        let nonce = [4u8; 12];
        v1.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(m.id.0.as_bytes()),
            &mut env,
        )
        .unwrap();
        let mut file = ENV_MAGIC_V1.to_vec();
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&env);
        std::fs::write(s.env_path(&m.id), file).unwrap();
        assert_eq!(s.read_envelope(&m.id).unwrap(), m);
        assert_eq!(
            s.read_content(&m.id, usize::MAX).await.unwrap(),
            b"Subject: old\r\n\r\nbody\r\n"
        );
    }

    fn spool_with(dir: &Path, key: [u8; 32]) -> Spool {
        Spool::open(dir, SpoolKey::from_bytes(key)).unwrap()
    }

    /// A real full disk (a tiny tmpfs; the tests run as root): the write
    /// of a larger envelope fails with ENOSPC, the error is returned, and
    /// the good envelope stays readable with its old state.
    #[tokio::test]
    async fn a_write_that_hits_a_full_disk_fails_and_leaves_the_good_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs needs root");
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path());
        let s = spool(dir.path());
        let mut m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        s.write_envelope(&m).await.unwrap();
        // Fill what is left.
        {
            use std::io::Write;
            let mut f = std::fs::File::create(dir.path().join("filler")).unwrap();
            while f.write_all(&[0u8; 4096]).is_ok() {}
        }
        m.recipients = (0..2000)
            .map(|i| crate::queue::Recipient::new(format!("r{i}@example.test")))
            .collect();
        let err = s.write_envelope(&m).await.unwrap_err();
        assert!(err.is_out_of_space(), "{err}");
        let back = s.read_envelope(&m.id).unwrap();
        assert_eq!(back.recipients.len(), 1, "the old envelope is intact");
        let tmp_left = std::fs::read_dir(&s.dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
        assert!(!tmp_left, "the temporary file was removed");
    }

    #[test]
    fn key_files_with_several_keys_and_bad_lines() {
        let k1 = "11".repeat(32);
        let k2 = "22".repeat(32);
        let keys = parse_keys(format!("# c\n{k1}\n\n{k2}\n").as_bytes()).unwrap();
        assert_eq!(keys, vec![[0x11; 32], [0x22; 32]]);
        assert!(parse_keys(b"# nothing\n").is_err());
        assert!(parse_keys(format!("{k1}\nzz\n").as_bytes()).is_err());
        assert!(parse_keys(&[0u8; 31]).is_err());
        // The first format: 64 hex characters split by white space.
        let split = format!("{}\n{}\n", &k1[..60], &k1[60..]);
        assert_eq!(parse_keys(split.as_bytes()).unwrap(), vec![[0x11; 32]]);
        assert_eq!(parse_keys(&[0xffu8; 32]).unwrap(), vec![[0xff; 32]]);
    }

    #[tokio::test]
    async fn wrong_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool(dir.path());
        let m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        s.write_envelope(&m).await.unwrap();
        let other = Spool::open(dir.path(), SpoolKey::from_bytes([8u8; 32])).unwrap();
        assert!(matches!(
            other.read_envelope(&m.id),
            Err(SpoolError::Decrypt { .. })
        ));
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    /// One process at a time: a second lock fails at once with the
    /// "in use" error, and is free again once the first is dropped.
    #[test]
    fn the_spool_is_locked_for_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([4; 32])).unwrap();
        let first = spool.lock().unwrap();
        let other = Spool::open(dir.path(), SpoolKey::from_bytes([4; 32])).unwrap();
        match other.lock() {
            Err(e @ SpoolError::InUse { .. }) => {
                assert!(
                    e.to_string().contains("in use by another sealgate process"),
                    "{e}"
                )
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        other.lock().unwrap();
    }
}
