//! OpenPGP: PGP/MIME (RFC 3156) with header protection (RFC 9788), bytes
//! in, bytes out, no I/O.
//!
//! The whole original MIME entity (its headers and body, byte for byte)
//! becomes the encrypted payload; the payload's Content-Type gets
//! `hp="cipher"` and carries the real Subject and the other protected
//! headers. The outer message keeps only what transport needs (From, To,
//! Cc, Date, Message-ID, threading headers) and a placeholder Subject.

use std::io::Write;

use openpgp::Cert;
use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::types::RevocationStatus;
use sequoia_openpgp as openpgp;
use serde::Serialize;

/// Why a key cannot be used for an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("the key has no user ID with the address {0}")]
    NoAddress(String),
    #[error("the key is revoked")]
    Revoked,
    #[error("the key is expired or not yet valid")]
    Expired,
    #[error("the key has no valid encryption-capable key")]
    NoEncryptionKey,
    #[error("the key fails the algorithm policy: {0}")]
    Policy(String),
    #[error("the key cannot be read: {0}")]
    Unreadable(String),
}

/// What the evidence says about a key used for encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyFacts {
    pub fingerprint: String,
    /// Fingerprints of the (sub)keys that will receive the session key.
    pub encryption_keys: Vec<String>,
    pub version: u8,
    pub algorithms: Vec<String>,
}

/// The algorithm policy: Sequoia's standard policy (which rejects SHA-1
/// binding signatures and other broken algorithms), plus no RSA, DSA or
/// ElGamal keys shorter than 2048 bits.
pub fn policy() -> StandardPolicy<'static> {
    StandardPolicy::new()
}

static POLICY: StandardPolicy<'static> = StandardPolicy::new();

const MIN_RSA_BITS: usize = 2048;

/// Checks that `cert` can encrypt to `address` now.
pub fn check_key(cert: &Cert, address: &str) -> Result<KeyFacts, KeyProblem> {
    let p = policy();
    let vc = cert
        .with_policy(&p, None)
        .map_err(|e| KeyProblem::Policy(e.to_string()))?;
    if let RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(KeyProblem::Revoked);
    }
    vc.alive().map_err(|_| KeyProblem::Expired)?;
    let want = address.to_ascii_lowercase();
    let bound = vc.userids().any(|u| {
        u.userid()
            .email_normalized()
            .ok()
            .flatten()
            .is_some_and(|e| e == want)
            && !matches!(u.revocation_status(), RevocationStatus::Revoked(_))
    });
    if !bound {
        return Err(KeyProblem::NoAddress(address.to_string()));
    }
    let keys: Vec<_> = vc
        .keys()
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .collect();
    if keys.is_empty() {
        return Err(KeyProblem::NoEncryptionKey);
    }
    let mut algorithms = Vec::new();
    for k in vc.keys() {
        let algo = k.key().pk_algo();
        if let Some(bits) = k.key().mpis().bits() {
            use openpgp::types::PublicKeyAlgorithm::*;
            #[allow(deprecated)]
            let weak = matches!(
                algo,
                RSAEncryptSign | RSAEncrypt | RSASign | DSA | ElGamalEncrypt | ElGamalEncryptSign
            ) && bits < MIN_RSA_BITS;
            if weak {
                return Err(KeyProblem::Policy(format!(
                    "{algo} key of {bits} bits (at least {MIN_RSA_BITS} needed)"
                )));
            }
            algorithms.push(format!("{algo}-{bits}"));
        } else {
            algorithms.push(algo.to_string());
        }
    }
    Ok(KeyFacts {
        fingerprint: cert.fingerprint().to_hex(),
        encryption_keys: keys
            .iter()
            .map(|k| k.key().fingerprint().to_hex())
            .collect(),
        version: cert.primary_key().key().version(),
        algorithms,
    })
}

/// Reads one or more certificates (armored or binary).
pub fn parse_certs(data: &[u8]) -> Result<Vec<Cert>, String> {
    use openpgp::parse::Parse;
    openpgp::cert::CertParser::from_bytes(data)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<Cert>, _>>()
        .map_err(|e| e.to_string())
}

/// ASCII-armored form of a certificate (public parts only).
pub fn armor(cert: &Cert) -> Result<String, String> {
    use openpgp::serialize::SerializeInto;
    let bytes = cert.armored().to_vec().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// Header fields that stay outside (transport needs them), besides the
/// placeholder Subject. Everything else is protected inside.
const OUTER: &[&str] = &[
    "from",
    "to",
    "cc",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "reply-to",
    "sender",
    "mime-version",
];
/// Trace and signature fields: not copied into the payload, kept outside
/// (Received) or dropped (DKIM-Signature, which the rewrite breaks).
const TRACE: &[&str] = &[
    "received",
    "return-path",
    "dkim-signature",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "authentication-results",
];

/// Splits a message into (header fields as raw lines, body). The header
/// section ends at the empty line, or at the first line that is neither a
/// field (`name:`) nor a continuation line: readers differ on such a line
/// (some skip it, some start the body there), so it and all that follows
/// count as body, and nothing a reader may show as body text is copied
/// into the unencrypted outer header section.
fn split(message: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields: Vec<std::ops::Range<usize>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..len];
        if line == b"\r\n" || line == b"\n" {
            let fields = fields.into_iter().map(|r| &message[r]).collect();
            return (fields, &message[pos + len..]);
        }
        match fields.last_mut() {
            Some(last) if matches!(line[0], b' ' | b'\t') => last.end = pos + len,
            _ if is_field_start(line) => fields.push(pos..pos + len),
            _ => break,
        }
        pos += len;
    }
    let fields = fields.into_iter().map(|r| &message[r]).collect();
    (fields, &message[pos..])
}

/// `name:` with a name of printable ASCII (RFC 5322 section 2.2), blanks
/// allowed before the colon (the obsolete syntax readers still accept).
fn is_field_start(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))
}

fn field_name(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    String::from_utf8_lossy(&field[..colon])
        .trim()
        .to_ascii_lowercase()
}

/// Adds `hp="cipher"` to a Content-Type field (RFC 9788 section 2.1.1).
fn with_hp(field: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(field);
    let trimmed = text.trim_end_matches(['\r', '\n']);
    format!("{trimmed};\r\n hp=\"cipher\"\r\n").into_bytes()
}

/// The fields of the original that also go outside, besides trace fields
/// and the placeholder Subject: what transport needs.
fn outer_fields<'m>(fields: &[&'m [u8]]) -> Vec<&'m [u8]> {
    fields
        .iter()
        .copied()
        .filter(|f| {
            let name = field_name(f);
            OUTER.contains(&name.as_str()) && name != "mime-version"
        })
        .collect()
}

/// The outer Subject, without control characters.
fn clean_placeholder(placeholder: &str) -> String {
    placeholder.chars().filter(|c| !c.is_control()).collect()
}

/// Builds the cryptographic payload: the original entity with its
/// protected headers, `hp="cipher"` on its Content-Type, and an
/// `HP-Outer` field for each non-structural field the outer message
/// carries, the placeholder Subject included (RFC 9788 section 2.2), so
/// that a reader can tell what was visible in transit.
pub fn payload(original: &[u8], placeholder: &str) -> Vec<u8> {
    let (fields, body) = split(original);
    let mut out = Vec::with_capacity(original.len() + 512);
    let mut has_ct = false;
    for f in &fields {
        let name = field_name(f);
        if TRACE.contains(&name.as_str()) {
            continue;
        }
        if name == "content-type" {
            has_ct = true;
            out.extend_from_slice(&with_hp(f));
        } else {
            out.extend_from_slice(f);
        }
    }
    if !has_ct {
        out.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii;\r\n hp=\"cipher\"\r\n");
    }
    for f in outer_fields(&fields) {
        out.extend_from_slice(b"HP-Outer: ");
        out.extend_from_slice(f);
    }
    out.extend_from_slice(
        format!("HP-Outer: Subject: {}\r\n", clean_placeholder(placeholder)).as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Options for one encryption.
pub struct PgpOptions<'a> {
    /// Recipients' certificates (and an additional decryption key, if any).
    pub recipients: &'a [Cert],
    /// Organisation key to sign with (sign-then-encrypt).
    pub signer: Option<&'a Cert>,
    /// The outer Subject (RFC 9788's obscured Subject `[...]` by default).
    pub subject_placeholder: &'a str,
}

/// Builds the OpenPGP writer stack (armor, encryption to every recipient
/// key, optional signature, literal data) over `sink`: write the payload
/// into it, then `finalize()`. Memory does not grow with the payload.
pub fn writer<'a, W: Write + Send + Sync + 'a>(
    sink: W,
    opts: &PgpOptions<'a>,
) -> Result<Message<'a>, String> {
    let p = &POLICY;
    let mut recipients: Vec<openpgp::serialize::stream::Recipient> = Vec::new();
    for cert in opts.recipients {
        let before = recipients.len();
        recipients.extend(
            cert.keys()
                .with_policy(p, None)
                .supported()
                .alive()
                .revoked(false)
                .for_transport_encryption()
                .map(openpgp::serialize::stream::Recipient::from),
        );
        if recipients.len() == before {
            return Err(format!(
                "certificate {} has no usable encryption key",
                cert.fingerprint()
            ));
        }
    }
    let message = Message::new(sink);
    let message = Armorer::new(message).build().map_err(|e| e.to_string())?;
    let message = Encryptor::for_recipients(message, recipients)
        .build()
        .map_err(|e| e.to_string())?;
    let message = match opts.signer {
        Some(cert) => {
            let key = cert
                .keys()
                .with_policy(p, None)
                .secret()
                .alive()
                .revoked(false)
                .for_signing()
                .next()
                .ok_or("the signing certificate has no usable signing key with secret material")?
                .key()
                .clone();
            let keypair = key
                .into_keypair()
                .map_err(|e| format!("signing key: {e}"))?;
            Signer::new(message, keypair)
                .map_err(|e| e.to_string())?
                .build()
                .map_err(|e| e.to_string())?
        }
        None => message,
    };
    LiteralWriter::new(message)
        .build()
        .map_err(|e| e.to_string())
}

/// Encrypts `original` (a whole RFC 5322 message) to PGP/MIME in memory.
pub fn encrypt(original: &[u8], opts: &PgpOptions<'_>) -> Result<Vec<u8>, String> {
    let payload = payload(original, opts.subject_placeholder);
    let mut armored = Vec::with_capacity(payload.len() * 4 / 3 + 1024);
    {
        let mut w = writer(&mut armored, opts)?;
        w.write_all(&payload).map_err(|e| e.to_string())?;
        w.finalize().map_err(|e| e.to_string())?;
    }
    let boundary = new_boundary();
    let mut out = outer_prefix(original, opts.subject_placeholder, &boundary);
    out.extend_from_slice(&armor_to_crlf(&armored));
    out.extend_from_slice(&outer_suffix(&boundary));
    Ok(out)
}

/// A fresh MIME boundary for the outer message.
pub fn new_boundary() -> String {
    format!("sealgate-pgp-{}", crate::util::random_hex_id())
}

/// Armor lines end in LF; mail needs CRLF (armor holds no CR).
pub fn armor_to_crlf(armored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(armored.len() + armored.len() / 64 + 2);
    for &b in armored {
        if b == b'\n' {
            out.push(b'\r');
        }
        if b != b'\r' {
            out.push(b);
        }
    }
    out
}

/// The outer header section and the MIME parts up to the armored data;
/// `original_head` is (at least) the original header section.
pub fn outer_prefix(original_head: &[u8], placeholder: &str, boundary: &str) -> Vec<u8> {
    let (fields, _) = split(original_head);
    let mut out = Vec::with_capacity(2048);
    // In the original's order: trace fields and what transport needs.
    let outer = outer_fields(&fields);
    for f in &fields {
        let name = field_name(f);
        if name == "received" || name == "return-path" || outer.contains(f) {
            out.extend_from_slice(f);
        }
    }
    let placeholder = clean_placeholder(placeholder);
    out.extend_from_slice(format!("Subject: {placeholder}\r\n").as_bytes());
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(
        format!("Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n");
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n");
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(
        b"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\nContent-Description: OpenPGP encrypted message\r\nContent-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n",
    );
    out
}

/// The end of the outer message after the armored data.
pub fn outer_suffix(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::parse::Parse;
    use openpgp::parse::stream::*;

    fn new_cert(email: &str) -> Cert {
        let (cert, _) = CertBuilder::general_purpose(Some(format!("Test <{email}>")))
            .generate()
            .unwrap();
        cert
    }

    struct Helper<'a>(&'a Cert);
    impl VerificationHelper for Helper<'_> {
        fn get_certs(&mut self, _: &[openpgp::KeyHandle]) -> openpgp::Result<Vec<Cert>> {
            Ok(vec![])
        }
        fn check(&mut self, _: MessageStructure) -> openpgp::Result<()> {
            Ok(())
        }
    }
    impl DecryptionHelper for Helper<'_> {
        fn decrypt(
            &mut self,
            pkesks: &[openpgp::packet::PKESK],
            _: &[openpgp::packet::SKESK],
            sym: Option<openpgp::types::SymmetricAlgorithm>,
            decrypt: &mut dyn FnMut(
                Option<openpgp::types::SymmetricAlgorithm>,
                &openpgp::crypto::SessionKey,
            ) -> bool,
        ) -> openpgp::Result<Option<Cert>> {
            let p = policy();
            for ka in self
                .0
                .keys()
                .with_policy(&p, None)
                .secret()
                .for_transport_encryption()
            {
                let mut pair = ka.key().clone().into_keypair()?;
                for pkesk in pkesks {
                    if pkesk
                        .decrypt(&mut pair, sym)
                        .map(|(a, sk)| decrypt(a, &sk))
                        .unwrap_or(false)
                    {
                        return Ok(None);
                    }
                }
            }
            Err(anyhow::anyhow!("no key"))
        }
    }

    #[test]
    fn roundtrip_with_header_protection() {
        let cert = new_cert("bob@example.test");
        let original = b"Received: from x by y\r\nFrom: a@clinic.test\r\nTo: bob@example.test\r\nSubject: Lab results for Jane\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.line\r\n";
        let out = encrypt(
            original,
            &PgpOptions {
                recipients: &[cert.clone()],
                signer: None,
                subject_placeholder: "...",
            },
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("Subject: ...\r\n"));
        assert!(!text.contains("Lab results"));
        assert!(text.contains("multipart/encrypted; protocol=\"application/pgp-encrypted\""));
        assert!(text.contains("Received: from x by y"));
        let armored = text
            .split("filename=\"encrypted.asc\"\r\n\r\n")
            .nth(1)
            .unwrap();
        let p = policy();
        let mut d = DecryptorBuilder::from_bytes(armored.as_bytes())
            .unwrap()
            .with_policy(&p, None, Helper(&cert))
            .unwrap();
        let mut plain = Vec::new();
        std::io::copy(&mut d, &mut plain).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(plain.contains("Subject: Lab results for Jane\r\n"));
        assert!(plain.contains("hp=\"cipher\""));
        assert!(!plain.contains("Received:"));
        assert!(
            plain.ends_with("\r\n\r\nGr\u{fc}\u{df}e\r\n.line\r\n"),
            "{plain:?}"
        );
    }

    #[test]
    fn header_section_ends_at_a_line_that_is_not_a_field() {
        // Found by the fuzz target (tests/fuzz): readers differ after a
        // line that is not a field (mail-parser starts the body at a form
        // feed, Python's email at any such line), and the lines after it
        // were copied into the unencrypted outer header.
        for odd in ["\x0c\r\n", "not a field\r\n", "é: x\r\n"] {
            let original = format!(
                "Received: from x by y\r\nFrom: a@clinic.test\r\n{odd}To: Jane Patient <j@x.test>\r\nSubject: Jane's results\r\n\r\nbody\r\n"
            );
            let outer = String::from_utf8(outer_prefix(original.as_bytes(), "...", "b")).unwrap();
            assert!(!outer.contains("Jane"), "{odd:?}: {outer}");
            assert!(
                outer.starts_with(
                    "Received: from x by y\r\nFrom: a@clinic.test\r\nSubject: ...\r\n"
                )
            );
            let inner = String::from_utf8(payload(original.as_bytes(), "[...]")).unwrap();
            assert!(
                inner.starts_with("From: a@clinic.test\r\nContent-Type: text/plain; charset=us-ascii;\r\n hp=\"cipher\"\r\nHP-Outer: From: a@clinic.test\r\nHP-Outer: Subject: [...]\r\n\r\n"),
                "{odd:?}: {inner}"
            );
            assert!(inner.ends_with(&format!(
                "{odd}To: Jane Patient <j@x.test>\r\nSubject: Jane's results\r\n\r\nbody\r\n"
            )));
        }
        // Folded fields and blanks before the colon still count as fields.
        let (fields, body) = split(b"A: 1\r\n 2\r\nB : 3\r\n\r\nbody");
        assert_eq!(fields, vec![&b"A: 1\r\n 2\r\n"[..], &b"B : 3\r\n"[..]]);
        assert_eq!(body, b"body");
    }

    #[test]
    fn v6_keys_roundtrip() {
        use openpgp::Profile;
        let (cert, _) = CertBuilder::general_purpose(Some("<six@example.test>"))
            .set_profile(Profile::RFC9580)
            .unwrap()
            .generate()
            .unwrap();
        assert_eq!(cert.primary_key().key().version(), 6);
        let facts = check_key(&cert, "six@example.test").unwrap();
        assert_eq!(facts.version, 6);
        let out = encrypt(
            b"Subject: v6\r\n\r\nbody\r\n",
            &PgpOptions {
                recipients: &[cert.clone()],
                signer: None,
                subject_placeholder: "...",
            },
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let armored = text
            .split("filename=\"encrypted.asc\"\r\n\r\n")
            .nth(1)
            .unwrap();
        let p = policy();
        let mut d = DecryptorBuilder::from_bytes(armored.as_bytes())
            .unwrap()
            .with_policy(&p, None, Helper(&cert))
            .unwrap();
        let mut plain = Vec::new();
        std::io::copy(&mut d, &mut plain).unwrap();
        assert!(String::from_utf8(plain).unwrap().contains("Subject: v6"));
    }

    #[test]
    fn key_checks() {
        let cert = new_cert("bob@example.test");
        assert!(check_key(&cert, "Bob@Example.test").is_ok());
        assert_eq!(
            check_key(&cert, "eve@example.test"),
            Err(KeyProblem::NoAddress("eve@example.test".into()))
        );
        let (revoked, rev) = CertBuilder::general_purpose(Some("<r@example.test>"))
            .generate()
            .unwrap();
        let revoked = revoked.insert_packets(rev).unwrap().0;
        assert_eq!(
            check_key(&revoked, "r@example.test"),
            Err(KeyProblem::Revoked)
        );
        let _ = Cert::from_bytes(armor(&cert).unwrap().as_bytes()).unwrap();
    }
}
