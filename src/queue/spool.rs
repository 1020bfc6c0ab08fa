//! The spool: the only place a message lives between `250 OK` and delivery.
//!
//! Each message is two files in `<spool_dir>/queue/`:
//! - `<id>.msg`, the content, written while DATA streams in, encrypted in
//!   64 KiB AES-256-GCM chunks (nonce = 7-byte random prefix, 4-byte chunk
//!   counter, 1-byte last-chunk flag; the queue id is the associated data),
//!   so memory does not grow with message size and truncation or reordering
//!   is detected;
//! - `<id>.env`, the envelope and per-recipient state, one AES-256-GCM
//!   sealed JSON document, replaced atomically (write, fsync, rename, fsync
//!   folder) on every state change.
//!
//! The `.env` file is the commit point: it is written only after the `.msg`
//! file is complete and fsynced, so on recovery a `.msg` without `.env` is
//! a half-received message (the client never got `250`) and is discarded.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{QueueId, QueuedMessage};

const MSG_MAGIC: &[u8; 8] = b"SGMSG001";
const ENV_MAGIC: &[u8; 8] = b"SGENV001";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const MSG_HEADER: usize = 8 + 7;

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
}

/// The spool key, never logged (its Debug is redacted).
#[derive(Clone)]
pub struct SpoolKey([u8; 32]);

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(..)")
    }
}

impl SpoolKey {
    /// Reads a key file: 64 hex characters (whitespace ignored) or 32 raw bytes.
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
        let text: String = String::from_utf8_lossy(&bytes).split_whitespace().collect();
        let raw = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(&text).map_err(|e| err(e.to_string()))?
        } else if bytes.len() == 32 {
            bytes
        } else {
            return Err(err(
                "must hold 32 bytes, written as 64 hex characters".into()
            ));
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "spool key file is readable by group or others; chmod 600 it");
                }
            }
        }
        Ok(SpoolKey(key))
    }

    /// Creates a new random key file (mode 0600), refusing to overwrite one.
    pub fn generate(path: &Path) -> Result<(), SpoolError> {
        let err = |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        };
        let key = crate::util::random_bytes::<32>();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        use std::io::Write;
        writeln!(f, "{}", hex::encode(key)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(())
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is always a valid AES-256 key length.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).unwrap_or_else(|_| unreachable!()))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(b: [u8; 32]) -> SpoolKey {
        SpoolKey(b)
    }
}

/// The spool folder.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    key: SpoolKey,
    syncer: DirSyncer,
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
    /// Complete messages, to be scheduled.
    pub messages: Vec<QueuedMessage>,
    /// Half-written files removed (crash or disconnect during DATA).
    pub discarded: usize,
    /// Files that could not be read; left in place for an operator.
    pub damaged: Vec<String>,
}

impl Spool {
    /// Opens (creating if needed) the spool folder.
    pub fn open(spool_dir: &Path, key: SpoolKey) -> Result<Spool, SpoolError> {
        let dir = spool_dir.join("queue");
        std::fs::create_dir_all(&dir).map_err(|source| SpoolError::Folder {
            path: dir.clone(),
            source,
        })?;
        let syncer = DirSyncer::start(dir.clone());
        Ok(Spool { dir, key, syncer })
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
            .open(&path)
            .await
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        let prefix = crate::util::random_bytes::<7>();
        let mut w = ContentWriter {
            file: tokio::io::BufWriter::with_capacity(CHUNK + TAG, file),
            path,
            key: self.key.aead(),
            aad: id.0.clone(),
            prefix,
            counter: 0,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        };
        w.write_raw(MSG_MAGIC).await?;
        w.write_raw(&prefix).await?;
        Ok(w)
    }

    /// Writes (or replaces) the envelope and state of a message atomically.
    /// The message is durable once this returns.
    pub async fn write_envelope(&self, msg: &QueuedMessage) -> Result<(), SpoolError> {
        let path = self.env_path(&msg.id);
        let tmp = self.dir.join(format!("{}.env.tmp", msg.id.0));
        let json = serde_json::to_vec(msg).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let sealed = seal(&self.key, &msg.id, &json);
        let io = |source| SpoolError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        f.write_all(&sealed).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        drop(f);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
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
        let path = self.env_path(id);
        let data = std::fs::read(&path).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        let plain = open(&self.key, id, &data).ok_or(SpoolError::Decrypt { path: path.clone() })?;
        serde_json::from_slice(&plain).map_err(|e| SpoolError::Corrupt {
            path,
            reason: e.to_string(),
        })
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
        let mut header = [0u8; MSG_HEADER];
        file.read_exact(&mut header).await.map_err(io)?;
        if &header[..8] != MSG_MAGIC {
            return Err(SpoolError::Corrupt {
                path,
                reason: "not a sealgate spool file".into(),
            });
        }
        let mut prefix = [0u8; 7];
        prefix.copy_from_slice(&header[8..]);
        Ok(ContentReader {
            file,
            path: path.clone(),
            key: self.key.aead(),
            aad: id.0.clone(),
            prefix,
            counter: 0,
            remaining: len.saturating_sub(MSG_HEADER as u64),
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

    /// Scans the spool after a start: complete messages are returned,
    /// half-written ones removed, unreadable ones reported and kept.
    pub fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut rec = Recovered::default();
        let entries = std::fs::read_dir(&self.dir).map_err(|source| SpoolError::Folder {
            path: self.dir.clone(),
            source,
        })?;
        let mut msgs = std::collections::BTreeSet::new();
        let mut envs = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                rec.discarded += 1;
            } else if let Some(id) = name.strip_suffix(".msg") {
                msgs.insert(id.to_string());
            } else if let Some(id) = name.strip_suffix(".env") {
                envs.insert(id.to_string());
            }
        }
        for id in &msgs {
            if !envs.contains(id) {
                let _ = std::fs::remove_file(self.dir.join(format!("{id}.msg")));
                rec.discarded += 1;
            }
        }
        for id in envs {
            if !msgs.contains(&id) {
                rec.damaged.push(format!("{id}: envelope without content"));
                continue;
            }
            match self.read_envelope(&QueueId(id.clone())) {
                Ok(m) => rec.messages.push(m),
                Err(e) => rec.damaged.push(format!("{id}: {e}")),
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

fn seal(key: &SpoolKey, id: &QueueId, plain: &[u8]) -> Vec<u8> {
    let nonce_bytes = crate::util::random_bytes::<12>();
    let mut out = Vec::with_capacity(8 + 12 + plain.len() + TAG);
    out.extend_from_slice(ENV_MAGIC);
    out.extend_from_slice(&nonce_bytes);
    let mut body = plain.to_vec();
    let aead = key.aead();
    // Sealing only fails for inputs larger than GCM's limit (64 GiB).
    if aead
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(id.0.as_bytes()),
            &mut body,
        )
        .is_err()
    {
        body.clear();
    }
    out.extend_from_slice(&body);
    out
}

fn open(key: &SpoolKey, id: &QueueId, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 8 + 12 + TAG || &data[..8] != ENV_MAGIC {
        return None;
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&data[8..20]);
    let mut body = data[20..].to_vec();
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.0.as_bytes()),
            &mut body,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// Streams message content into an encrypted spool file.
pub struct ContentWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    key: LessSafeKey,
    aad: String,
    prefix: [u8; 7],
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
        let nonce = chunk_nonce(&self.prefix, self.counter, last);
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
    key: LessSafeKey,
    aad: String,
    prefix: [u8; 7],
    counter: u32,
    remaining: u64,
    done: bool,
}

impl ContentReader {
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
        let nonce = chunk_nonce(&self.prefix, self.counter, last);
        self.counter = self.counter.wrapping_add(1);
        let n = self
            .key
            .open_in_place(nonce, Aad::from(self.aad.as_bytes()), &mut buf)
            .map_err(|_| SpoolError::Decrypt {
                path: self.path.clone(),
            })?
            .len();
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
        std::fs::write(&path, &raw[..MSG_HEADER + 2 * (CHUNK + TAG)]).unwrap();
        assert!(s.read_content(&id, usize::MAX).await.is_err());
        let mut flipped = raw.clone();
        flipped[MSG_HEADER + 10] ^= 1;
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
        let rec = s.recover().unwrap();
        assert_eq!(rec.messages.len(), 1);
        assert_eq!(rec.messages[0].id, done.id);
        assert_eq!(rec.discarded, 1);
        assert!(!s.msg_path(&half).exists());
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
