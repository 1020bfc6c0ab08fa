//! The encrypt stage: the decisions of one group of recipients become a
//! [`Prepared`] message, a recipe for the bytes they get and the evidence
//! of what was used; a recipe turns the spooled content (a reader that
//! `queue` hands out) into a [`ContentStream`] of message bytes, as many
//! times as delivery needs it (once per host tried).
//!
//! Streams are bounded (64 KiB chunks, bounded channels), so memory does
//! not grow with the message; no network I/O happens here. Today's
//! recipes: the message as it is (with the subject-tag transformation),
//! and PGP/MIME. S/MIME and the portal notification join as further
//! recipes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use sequoia_openpgp::Cert;

use super::pgp;
use crate::config::Settings;
use crate::policy::{Decision, Method};
use crate::queue::{ContentReader, QueuedMessage, SpoolError};

/// Header sections longer than this are passed on untransformed (the
/// listener's own limit is lower).
const MAX_HEAD: usize = 4 * 1024 * 1024;

/// Why a group cannot be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unprepared {
    /// Held for an operator (never sent with less than decided).
    Held(String),
    /// Not now; the next attempt decides again.
    Later(String),
}

/// Why a stream could not be produced to the end.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("reading the spooled message: {0}")]
    Spool(String),
    #[error("OpenPGP encryption failed: {0}")]
    Pgp(String),
}

impl From<SpoolError> for EncryptError {
    fn from(e: SpoolError) -> Self {
        EncryptError::Spool(e.to_string())
    }
}

/// What one group of recipients gets, and how it was made.
pub struct Prepared {
    pub recipe: Recipe,
    /// Method, keys, format (`None` for the message as it is).
    pub evidence: Option<serde_json::Value>,
}

/// How the bytes for the wire are made from the spooled content.
pub enum Recipe {
    /// The message as it is, with the subject tag removed when given.
    Plain { strip_tag: Option<String> },
    /// PGP/MIME with header protection.
    Pgp(PgpRecipe),
}

/// What OpenPGP encryption of one group needs.
pub struct PgpRecipe {
    certs: Vec<Cert>,
    signer: Option<Cert>,
    placeholder: String,
    strip_tag: Option<String>,
}

/// Where the OpenPGP encryptor finds the key a decision chose, by
/// fingerprint: the key store the probes filled (`probe::keys::Keyring`).
/// A trait, so that `encrypt/` reads keys without importing the probes.
pub trait Certificates: Send + Sync {
    /// The certificate with this fingerprint (upper-case hex), if known.
    fn cert(&self, fingerprint: &str) -> Option<Cert>;
}

/// The keys the encryptors use: the OpenPGP key store (once open),
/// organisation signing keys by sender domain, an additional decryption
/// key for archiving, the outer Subject placeholder.
pub struct Encryptors {
    keyring: OnceLock<Arc<dyn Certificates>>,
    signing_keys: HashMap<String, Cert>,
    adk: Option<Cert>,
    placeholder: String,
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("OpenPGP key file {0}")]
pub struct KeyError(pub String);

impl Encryptors {
    /// Loads the signing keys and the additional decryption key that
    /// `[pgp]` names.
    pub fn load(settings: &Settings) -> Result<Encryptors, KeyError> {
        let mut signing_keys = HashMap::new();
        for (domain, path) in &settings.pgp.signing_keys {
            signing_keys.insert(domain.clone(), load_cert(path, true)?);
        }
        let adk = settings
            .pgp
            .additional_decryption_key
            .as_deref()
            .map(|p| load_cert(p, false))
            .transpose()?;
        Ok(Encryptors {
            keyring: OnceLock::new(),
            signing_keys,
            adk,
            placeholder: settings.pgp.subject_placeholder.clone(),
        })
    }

    /// Gives the encryptors the key store (certificates the probes chose).
    pub fn set_keyring(&self, keyring: Arc<dyn Certificates>) {
        let _ = self.keyring.set(keyring);
    }

    /// The recipe for `members` (index, decision) of `msg`: PGP/MIME when
    /// any of them was decided for OpenPGP, else the message as it is.
    pub fn prepare(
        &self,
        msg: &QueuedMessage,
        members: &[(usize, Decision)],
        strip_tag: Option<&str>,
    ) -> Result<Prepared, Unprepared> {
        let strip_tag = strip_tag.map(str::to_string);
        if !members.iter().any(|(_, d)| d.method == Method::Pgp) {
            return Ok(Prepared {
                recipe: Recipe::Plain { strip_tag },
                evidence: None,
            });
        }
        let domain = crate::queue::domain_of(&msg.sender);
        let wants_sign = members.iter().any(|(_, d)| d.sign);
        let signer = self.signing_keys.get(&domain).cloned();
        if wants_sign && signer.is_none() {
            return Err(Unprepared::Held(format!(
                "the policy asks for a signature (sign = true), but [pgp] signing_keys has no key for the sender's domain {domain:?}; held, never sent unsigned: configure one, then `sealgate queue release`"
            )));
        }
        let keyring = self
            .keyring
            .get()
            .ok_or_else(|| Unprepared::Later("the OpenPGP key store is not available".into()))?;
        let mut certs = Vec::new();
        for (_, d) in members {
            let fpr = d
                .key
                .as_deref()
                .ok_or_else(|| Unprepared::Later("no key chosen".into()))?;
            certs.push(keyring.cert(fpr).ok_or_else(|| {
                Unprepared::Later(format!(
                    "OpenPGP key {fpr} is no longer available; waiting for the next decision"
                ))
            })?);
        }
        let fprs: Vec<String> = certs.iter().map(|c| c.fingerprint().to_hex()).collect();
        if let Some(adk) = &self.adk {
            certs.push(adk.clone());
        }
        let signer = if wants_sign { signer } else { None };
        let evidence = serde_json::json!({
            "method": "pgp",
            "recipient_keys": fprs,
            "additional_decryption_key": self.adk.as_ref().map(|c| c.fingerprint().to_hex()),
            "signed_by": signer.as_ref().map(|c| c.fingerprint().to_hex()),
            "signing_requested": wants_sign,
            "format": "PGP/MIME (RFC 3156), header protection (RFC 9788)",
        });
        Ok(Prepared {
            recipe: Recipe::Pgp(PgpRecipe {
                certs,
                signer,
                placeholder: self.placeholder.clone(),
                strip_tag,
            }),
            evidence: Some(evidence),
        })
    }
}

/// The `[pgp]` key files that exist but cannot be used, each with its
/// config key, its place among that key's values, and why: `check-config`
/// reports them all at once (`serve` refuses to start on the first).
pub fn unusable_key_files(settings: &Settings) -> Vec<(&'static str, usize, KeyError)> {
    let mut out = Vec::new();
    for (i, path) in settings.pgp.signing_keys.values().enumerate() {
        if let Some(e) = path
            .is_file()
            .then(|| load_cert(path, true).err())
            .flatten()
        {
            out.push(("pgp.signing_keys", i, e));
        }
    }
    if let Some(path) = &settings.pgp.additional_decryption_key
        && let Some(e) = path
            .is_file()
            .then(|| load_cert(path, false).err())
            .flatten()
    {
        out.push(("pgp.additional_decryption_key", 0, e));
    }
    out
}

fn load_cert(path: &std::path::Path, secret: bool) -> Result<Cert, KeyError> {
    let data = std::fs::read(path).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
    let certs =
        pgp::parse_certs(&data).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
    let cert = certs
        .into_iter()
        .next()
        .ok_or_else(|| KeyError(format!("{}: no OpenPGP key", path.display())))?;
    if secret && !cert.is_tsk() {
        return Err(KeyError(format!(
            "{}: no secret key material (export it with --export-secret-keys)",
            path.display()
        )));
    }
    Ok(cert)
}

impl Recipe {
    /// The bytes of the message made from `reader`, in order.
    pub fn open(&self, reader: ContentReader) -> ContentStream {
        match self {
            Recipe::Plain { strip_tag } => ContentStream(Inner::Plain {
                reader,
                head: strip_tag.as_ref().map(|t| (t.clone(), Vec::new())),
            }),
            Recipe::Pgp(p) => ContentStream(Inner::PgpStart {
                reader: Some(reader),
                certs: p.certs.clone(),
                signer: p.signer.clone(),
                placeholder: p.placeholder.clone(),
                strip_tag: p.strip_tag.clone(),
            }),
        }
    }
}

/// Message bytes, chunk by chunk (not yet dot-stuffed).
pub struct ContentStream(Inner);

enum Inner {
    Plain {
        reader: ContentReader,
        /// With a subject tag to remove: the tag and the header section
        /// held back so far.
        head: Option<(String, Vec<u8>)>,
    },
    PgpStart {
        reader: Option<ContentReader>,
        certs: Vec<Cert>,
        signer: Option<Cert>,
        placeholder: String,
        strip_tag: Option<String>,
    },
    Pgp {
        armored: tokio::sync::mpsc::Receiver<Vec<u8>>,
        encryptor: tokio::task::JoinHandle<Result<(), String>>,
        producer: tokio::task::JoinHandle<Result<(), SpoolError>>,
        boundary: String,
    },
    Done,
}

impl ContentStream {
    /// The next chunk, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, EncryptError> {
        match &mut self.0 {
            Inner::Plain { reader, head } => plain_next(reader, head).await,
            Inner::PgpStart { .. } => self.start_pgp().await.map(Some),
            Inner::Pgp { armored, .. } => match armored.recv().await {
                Some(chunk) => Ok(Some(pgp::armor_to_crlf(&chunk))),
                None => self.finish_pgp().await,
            },
            Inner::Done => Ok(None),
        }
    }

    /// Reads the header section, starts the encryption (a blocking task
    /// fed by a spool reading task, bounded channels both ways) and
    /// returns the outer header and the start of the multipart.
    async fn start_pgp(&mut self) -> Result<Vec<u8>, EncryptError> {
        let Inner::PgpStart {
            reader,
            certs,
            signer,
            placeholder,
            strip_tag,
        } = &mut self.0
        else {
            return Ok(Vec::new());
        };
        let Some(mut reader) = reader.take() else {
            return Err(EncryptError::Spool("the message was already read".into()));
        };
        let mut head = Vec::new();
        let mut rest = Vec::new();
        while let Some(chunk) = reader.next_chunk().await? {
            head.extend_from_slice(&chunk);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                rest = head.split_off(p + 4);
                break;
            }
            if head.len() > MAX_HEAD {
                break;
            }
        }
        if let Some(tag) = strip_tag {
            head = super::strip_subject_tag(&head, tag);
        }
        let boundary = pgp::new_boundary();
        let prefix = pgp::outer_prefix(&head, placeholder, &boundary);
        let payload_head = pgp::payload(&head, placeholder);
        let (ptx, mut prx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (ctx, crx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (certs, signer) = (std::mem::take(certs), signer.take());
        let encryptor = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let sink = ChannelWriter {
                tx: ctx,
                buf: Vec::with_capacity(64 * 1024),
            };
            let opts = pgp::PgpOptions {
                recipients: &certs,
                signer: signer.as_ref(),
                subject_placeholder: "",
            };
            use std::io::Write;
            let mut w = pgp::writer(sink, &opts)?;
            w.write_all(&payload_head).map_err(|e| e.to_string())?;
            while let Some(chunk) = prx.blocking_recv() {
                w.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            w.finalize().map_err(|e| e.to_string())
        });
        // Stops by itself when the encryptor is gone (the stream dropped).
        let producer = tokio::spawn(async move {
            if !rest.is_empty() && ptx.send(rest).await.is_err() {
                return Ok(());
            }
            while let Some(chunk) = reader.next_chunk().await? {
                if ptx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        self.0 = Inner::Pgp {
            armored: crx,
            encryptor,
            producer,
            boundary,
        };
        Ok(prefix)
    }

    /// After the last armored chunk: the outcome of both tasks, then the
    /// end of the multipart.
    async fn finish_pgp(&mut self) -> Result<Option<Vec<u8>>, EncryptError> {
        let Inner::Pgp {
            encryptor,
            producer,
            boundary,
            ..
        } = std::mem::replace(&mut self.0, Inner::Done)
        else {
            return Ok(None);
        };
        producer
            .await
            .map_err(|e| EncryptError::Spool(e.to_string()))??;
        encryptor
            .await
            .map_err(|e| EncryptError::Pgp(e.to_string()))?
            .map_err(EncryptError::Pgp)?;
        Ok(Some(pgp::outer_suffix(&boundary)))
    }
}

impl Drop for ContentStream {
    fn drop(&mut self) {
        // A delivery that stopped half way: the reading task must not wait
        // for an encryptor that is gone (it notices a closed channel), and
        // nothing else holds on to the spool.
        if let Inner::Pgp { producer, .. } = &self.0 {
            producer.abort();
        }
    }
}

/// The message as it is, with the subject tag removed from the header
/// section once it is complete (held back until then, bounded).
async fn plain_next(
    reader: &mut ContentReader,
    head: &mut Option<(String, Vec<u8>)>,
) -> Result<Option<Vec<u8>>, EncryptError> {
    loop {
        let Some(chunk) = reader.next_chunk().await? else {
            // A message that is all header.
            return Ok(head
                .take()
                .map(|(tag, h)| super::strip_subject_tag(&h, &tag)));
        };
        let Some((tag, h)) = head.as_mut() else {
            return Ok(Some(chunk));
        };
        h.extend_from_slice(&chunk);
        let end = h.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        if end.is_none() && h.len() < MAX_HEAD {
            continue;
        }
        let end = end.unwrap_or(h.len());
        let mut out = super::strip_subject_tag(&h[..end], tag);
        out.extend_from_slice(&h[end..]);
        *head = None;
        return Ok(Some(out));
    }
}

/// A `Write` that hands 64 KiB chunks to the async side (used from the
/// blocking encryption task).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(64 * 1024));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "delivery stopped")
            })?;
        }
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}
