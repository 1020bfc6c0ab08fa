//! The cryptography of stored portal messages, bytes to bytes.
//!
//! Every message gets a fresh AES-256-GCM data key. Its content is sealed
//! in chunks of [`CHUNK`] bytes: chunk `n` under nonce `n`, with the
//! message id, `n` and whether it is the last chunk bound as associated
//! data, so a chunk cannot be moved to another message or place and a
//! store cut short (the last chunk missing) does not read as complete.
//!
//! The data key is wrapped (AES-256-GCM, random nonce, the message id as
//! associated data) under a key derived with HKDF-SHA256 from the master
//! key (`[portal] master_key_file`) and, when the link is bound
//! (`[portal] link_bound`), from the pickup token too: then the database
//! and the master key together open nothing without the recipient's link.
//! Only a hash of the token is stored.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Plaintext bytes per stored chunk.
pub const CHUNK: usize = 64 * 1024;

/// Bytes a sealed chunk adds to its plaintext (the GCM tag).
pub const CHUNK_OVERHEAD: usize = 16;

/// Why something stored could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A chunk or wrapped key that fails its integrity check: changed,
    /// moved, cut short, or (for a bound link) the wrong token.
    #[error(
        "stored data failed its integrity check (changed, moved, or opened with the wrong link)"
    )]
    Corrupt,
}

/// A message's data key (never stored unwrapped, never logged).
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned, exclusively borrowed byte.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl DataKey {
    /// A fresh random key (OS CSPRNG).
    pub fn generate() -> DataKey {
        DataKey(crate::util::random_bytes::<32>())
    }

    fn aead(&self) -> LessSafeKey {
        aead(&self.0)
    }
}

fn aead(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!()))
}

/// The associated data of chunk `seq` of message `id`.
fn chunk_aad(id: &str, seq: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(id.len() + 40);
    aad.extend_from_slice(b"sealgate portal chunk v1\0");
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

fn chunk_nonce(seq: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals chunk `seq` of message `id` (at most [`CHUNK`] bytes).
pub fn seal_chunk(key: &DataKey, id: &str, seq: u64, last: bool, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + CHUNK_OVERHEAD);
    out.extend_from_slice(plain);
    // Sealing in place fails only for inputs beyond GCM's limit (64 GiB).
    key.aead()
        .seal_in_place_append_tag(
            chunk_nonce(seq),
            Aad::from(chunk_aad(id, seq, last)),
            &mut out,
        )
        .unwrap_or_else(|_| unreachable!());
    out
}

/// Opens chunk `seq` of message `id`.
pub fn open_chunk(
    key: &DataKey,
    id: &str,
    seq: u64,
    last: bool,
    mut sealed: Vec<u8>,
) -> Result<Vec<u8>, SealError> {
    let len = key
        .aead()
        .open_in_place(
            chunk_nonce(seq),
            Aad::from(chunk_aad(id, seq, last)),
            &mut sealed,
        )
        .map_err(|_| SealError::Corrupt)?
        .len();
    sealed.truncate(len);
    Ok(sealed)
}

/// The key-wrapping key: HKDF-SHA256 over the master key, bound to the
/// pickup token when `token` is given.
fn wrapping_key(master: &[u8; 32], token: Option<&str>) -> LessSafeKey {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"sealgate portal key wrap v1");
    let prk = salt.extract(master);
    let info: Vec<&[u8]> = match token {
        None => vec![b"master"],
        Some(t) => vec![b"link\0", t.as_bytes()],
    };
    // One AES-256 key length never exceeds HKDF's output limit.
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .unwrap_or_else(|_| unreachable!());
    LessSafeKey::new(UnboundKey::from(okm))
}

/// What a wrapped key is bound to: the facts of its message's row that a
/// reader relies on. Changing any of them in the database (pointing
/// another link at the message, another sender or recipient, a later
/// expiry, other
/// content bounds) makes the key fail to unwrap.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub id: &'a str,
    pub token_hash: &'a str,
    pub sender: &'a str,
    pub recipient: &'a str,
    pub expires_at: i64,
    pub size: u64,
    pub chunks: u64,
}

fn wrap_aad(b: &Binding<'_>, bound: bool) -> Vec<u8> {
    let mut aad = b"sealgate portal wrapped key v3\0".to_vec();
    for field in [b.id, b.token_hash, b.sender, b.recipient] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad.extend_from_slice(&b.expires_at.to_be_bytes());
    aad.extend_from_slice(&b.size.to_be_bytes());
    aad.extend_from_slice(&b.chunks.to_be_bytes());
    aad.push(u8::from(bound));
    aad
}

/// Wraps `key` for the message `binding` describes: nonce, then
/// ciphertext and tag.
pub fn wrap(
    master: &[u8; 32],
    token: Option<&str>,
    binding: &Binding<'_>,
    key: &DataKey,
) -> Vec<u8> {
    let nonce = crate::util::random_bytes::<NONCE_LEN>();
    let mut body = key.0.to_vec();
    wrapping_key(master, token)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(binding, token.is_some())),
            &mut body,
        )
        .unwrap_or_else(|_| unreachable!());
    let mut out = nonce.to_vec();
    out.extend_from_slice(&body);
    out
}

/// Unwraps the data key of the message `binding` describes.
pub fn unwrap(
    master: &[u8; 32],
    token: Option<&str>,
    binding: &Binding<'_>,
    wrapped: &[u8],
) -> Result<DataKey, SealError> {
    if wrapped.len() != NONCE_LEN + 32 + CHUNK_OVERHEAD {
        return Err(SealError::Corrupt);
    }
    let (nonce, body) = wrapped.split_at(NONCE_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    let mut body = body.to_vec();
    let plain = wrapping_key(master, token)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(wrap_aad(binding, token.is_some())),
            &mut body,
        )
        .map_err(|_| SealError::Corrupt)?;
    let mut k = [0u8; 32];
    k.copy_from_slice(plain);
    Ok(DataKey(k))
}

/// A new pickup token: 128 random bits, URL-safe base64 (22 characters).
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::util::random_bytes::<16>())
}

/// What is stored of a token: SHA-256 over a label and the token, hex.
/// Lookups by this hash reveal nothing about the token's bytes.
pub fn token_hash(token: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sealgate portal token v1\0");
    ctx.update(token.as_bytes());
    hex::encode(ctx.finish().as_ref())
}

/// A short id naming which master key wrapped a data key (reveals nothing
/// of the key), so that a rotated key file still opens older messages.
pub fn master_key_id(master: &[u8; 32]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sealgate portal master key id\0");
    ctx.update(master);
    hex::encode(&ctx.finish().as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_open_only_where_they_were_sealed() {
        let key = DataKey::generate();
        let sealed = seal_chunk(&key, "m1", 3, false, b"lab result");
        assert_eq!(sealed.len(), 10 + CHUNK_OVERHEAD);
        assert!(!sealed.windows(3).any(|w| w == b"lab"));
        assert_eq!(
            open_chunk(&key, "m1", 3, false, sealed.clone()).unwrap(),
            b"lab result"
        );
        // Another place, another message, the last flag, another key, a
        // flipped bit: each fails.
        for (id, seq, last) in [("m1", 2, false), ("m2", 3, false), ("m1", 3, true)] {
            assert_eq!(
                open_chunk(&key, id, seq, last, sealed.clone()),
                Err(SealError::Corrupt)
            );
        }
        assert_eq!(
            open_chunk(&DataKey::generate(), "m1", 3, false, sealed.clone()),
            Err(SealError::Corrupt)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open_chunk(&key, "m1", 3, false, bad),
                Err(SealError::Corrupt)
            );
        }
        // An empty last chunk (empty content) seals and opens.
        let empty = seal_chunk(&key, "m1", 0, true, b"");
        assert_eq!(open_chunk(&key, "m1", 0, true, empty).unwrap(), b"");
    }

    const ROW: Binding<'static> = Binding {
        id: "m1",
        token_hash: "aa",
        sender: "doctor@clinic.example",
        recipient: "patient@mail.example",
        expires_at: 1_900_000_000,
        size: 1,
        chunks: 1,
    };

    #[test]
    fn a_bound_key_needs_the_token_and_a_master_key_alone_opens_nothing() {
        let master = crate::util::random_bytes::<32>();
        let key = DataKey::generate();
        let token = new_token();
        let wrapped = wrap(&master, Some(&token), &ROW, &key);
        let sealed = seal_chunk(&key, "m1", 0, true, b"x");
        let opened = unwrap(&master, Some(&token), &ROW, &wrapped).unwrap();
        assert_eq!(open_chunk(&opened, "m1", 0, true, sealed).unwrap(), b"x");
        assert!(unwrap(&master, None, &ROW, &wrapped).is_err());
        assert!(unwrap(&master, Some(&new_token()), &ROW, &wrapped).is_err());
        let other = crate::util::random_bytes::<32>();
        assert!(unwrap(&other, Some(&token), &ROW, &wrapped).is_err());
        // A master-wrapped key is not a bound one, and the reverse.
        let plain = wrap(&master, None, &ROW, &key);
        assert!(unwrap(&master, None, &ROW, &plain).is_ok());
        assert!(unwrap(&master, Some(&token), &ROW, &plain).is_err());
        // Truncated or padded wrapped keys are refused, not panicked on.
        for n in [0, 1, 12, plain.len() - 1] {
            assert!(unwrap(&master, None, &ROW, &plain[..n]).is_err());
        }
        let mut long = plain.clone();
        long.push(0);
        assert!(unwrap(&master, None, &ROW, &long).is_err());
    }

    #[test]
    fn every_fact_of_the_row_is_bound_to_the_key() {
        let master = crate::util::random_bytes::<32>();
        let key = DataKey::generate();
        let wrapped = wrap(&master, None, &ROW, &key);
        for changed in [
            Binding { id: "m2", ..ROW },
            Binding {
                token_hash: "bb",
                ..ROW
            },
            Binding {
                recipient: "someone@else.example",
                ..ROW
            },
            Binding {
                sender: "phisher@else.example",
                ..ROW
            },
            // A byte moved between sender and recipient.
            Binding {
                sender: "doctor@clinic.examplep",
                recipient: "atient@mail.example",
                ..ROW
            },
            Binding {
                expires_at: ROW.expires_at + 1,
                ..ROW
            },
            Binding { size: 2, ..ROW },
            Binding { chunks: 2, ..ROW },
            // Length prefixes: a byte moved from one field to the next.
            Binding {
                id: "m1a",
                token_hash: "a",
                ..ROW
            },
        ] {
            assert!(
                unwrap(&master, None, &changed, &wrapped).is_err(),
                "{changed:?}"
            );
        }
    }

    #[test]
    fn tokens_are_128_bit_and_only_their_hash_is_kept() {
        let a = new_token();
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_token());
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .unwrap();
        assert_eq!(decoded.len(), 16);
        let h = token_hash(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a));
        assert_eq!(h, token_hash(&a));
        assert_ne!(h, token_hash(&new_token()));
    }
}
