//! DNSSEC for the test DNS server ([`super::Zone`] / [`super::DnsServer`]).
//!
//! The test server is authoritative for the root zone `.` and everything below it, and
//! signs on the fly (when a query carries the EDNS DO bit) with a root KSK + ZSK
//! (ECDSA P-256 / SHA-256, algorithm 13) generated per [`super::Zone`]:
//!
//! * every RRset gets an RRSIG by the ZSK (signer `.`); the root DNSKEY RRset (both keys)
//!   is signed by the KSK; the KSK is the trust anchor (see [`RootKeys::trust_anchor_text`]);
//! * negative answers carry the SOA of the zone (synthetic root SOA unless a closer one was
//!   added) and NSEC records (a chain over all signed owner names) proving NXDOMAIN / NODATA;
//! * names at or below an *insecure delegation* are served unsigned, and a DS query at the
//!   delegation point gets a signed NSEC from the root proving there is no DS;
//! * names in a *bogus* subtree get corrupted signatures; in an *expired* subtree,
//!   signatures whose validity ended a day ago.
//!
//! # Trust anchor file format (hickory-resolver 0.25)
//!
//! hickory-resolver 0.25.2 **ignores** `ResolverOpts::trust_anchor` (the field exists but
//! nothing reads it); the only way to set anchors is
//! `ResolverBuilder::with_trust_anchor(Arc<TrustAnchors>)`. Without it `validate = true`
//! uses the built-in IANA root keys, and every answer of this test world is Bogus.
//! `TrustAnchors::from_file(path)` (hickory-proto, needs its `text-parsing` feature) reads
//! a zone-file-like list of DNSKEY records, one per line, `owner [ttl] [class] DNSKEY
//! flags protocol algorithm base64-key` (`;` starts a comment; DS lines are rejected),
//! e.g.
//!
//! ```text
//! . 3600 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==
//! ```
//!
//! Only the key bytes and the algorithm are used (flags, owner and TTL are ignored), and
//! a key in the anchor set is trusted for any zone's DNSKEY RRset. [`load_trust_anchor`]
//! reads the same format without needing `text-parsing`.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, NSEC, RRSIG};
use hickory_proto::dnssec::{Algorithm, PublicKey, PublicKeyBuf, SigningKey, TBS, TrustAnchors};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// How an RRSIG is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SigMode {
    /// A valid signature (inception an hour ago, expiration in a day).
    #[default]
    Valid,
    /// A signature whose validity period ended a day ago.
    Expired,
    /// A signature with a flipped byte: does not verify.
    Corrupt,
}

/// The root zone's keys: a KSK (flags 257, signs the DNSKEY RRset; the trust anchor) and a
/// ZSK (flags 256, signs everything else).
pub struct RootKeys {
    ksk: EcdsaSigningKey,
    zsk: EcdsaSigningKey,
    ksk_dnskey: DNSKEY,
    zsk_dnskey: DNSKEY,
    ksk_tag: u16,
    zsk_tag: u16,
}

impl fmt::Debug for RootKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKeys")
            .field("ksk_tag", &self.ksk_tag)
            .field("zsk_tag", &self.zsk_tag)
            .finish()
    }
}

const ALG: Algorithm = Algorithm::ECDSAP256SHA256;

fn gen_key(flags: u16) -> (EcdsaSigningKey, DNSKEY, u16) {
    let pkcs8 = EcdsaSigningKey::generate_pkcs8(ALG).expect("generating ECDSA P-256 key");
    let key = EcdsaSigningKey::from_pkcs8(&pkcs8, ALG).expect("loading ECDSA P-256 key");
    let public = key.to_public_key().expect("public key");
    let dnskey = DNSKEY::with_flags(flags, public);
    let tag = dnskey.calculate_key_tag().expect("key tag");
    (key, dnskey, tag)
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32
}

impl RootKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        let (ksk, ksk_dnskey, ksk_tag) = gen_key(257);
        let (zsk, zsk_dnskey, zsk_tag) = gen_key(256);
        RootKeys {
            ksk,
            zsk,
            ksk_dnskey,
            zsk_dnskey,
            ksk_tag,
            zsk_tag,
        }
    }

    /// The KSK's DNSKEY rdata (the trust anchor).
    pub fn ksk(&self) -> &DNSKEY {
        &self.ksk_dnskey
    }

    pub fn zsk(&self) -> &DNSKEY {
        &self.zsk_dnskey
    }

    /// The root DNSKEY RRset (KSK and ZSK).
    pub fn dnskey_rrset(&self, ttl: u32) -> Vec<Record> {
        [&self.ksk_dnskey, &self.zsk_dnskey]
            .into_iter()
            .map(|k| {
                let mut r = Record::from_rdata(Name::root(), ttl, RData::from(k.clone()));
                r.set_dns_class(DNSClass::IN);
                r
            })
            .collect()
    }

    /// `TrustAnchors` holding the KSK (what a file from [`Self::trust_anchor_text`] loads to).
    pub fn trust_anchors(&self) -> TrustAnchors {
        let mut t = TrustAnchors::empty();
        t.insert(self.ksk_dnskey.public_key());
        t
    }

    /// The trust anchor file: one line, `. 3600 IN DNSKEY 257 3 13 <base64 key>`.
    pub fn trust_anchor_text(&self) -> String {
        format!(
            "; sealgate test world root trust anchor (KSK, key tag {})\n. 3600 IN DNSKEY 257 3 {} {}\n",
            self.ksk_tag,
            u8::from(ALG),
            B64.encode(self.ksk_dnskey.public_key().public_bytes())
        )
    }

    /// An RRSIG record over `rrset` (all records must share owner, class and type; the
    /// DNSKEY RRset is signed with the KSK, anything else with the ZSK).
    pub fn sign(&self, rrset: &[Record], mode: SigMode) -> Record {
        let first = rrset.first().expect("signing an empty RRset");
        let owner = first.name().clone();
        let rtype = first.record_type();
        let ttl = rrset.iter().map(Record::ttl).min().unwrap_or(0);
        let (key, tag) = if rtype == RecordType::DNSKEY {
            (&self.ksk, self.ksk_tag)
        } else {
            (&self.zsk, self.zsk_tag)
        };
        let t = now();
        let (inception, expiration) = match mode {
            SigMode::Expired => (t - 3 * 86400, t - 86400),
            _ => (t - 3600, t + 86400),
        };
        let num_labels = owner.num_labels() - u8::from(owner.is_wildcard());
        let unsigned = RRSIG::new(
            rtype,
            ALG,
            num_labels,
            ttl,
            expiration,
            inception,
            tag,
            Name::root(),
            Vec::new(),
        );
        let tbs = TBS::from_sig(&owner, DNSClass::IN, &unsigned, rrset.iter())
            .expect("building data to sign");
        let mut sig = key.sign(&tbs).expect("signing");
        if mode == SigMode::Corrupt {
            sig[10] ^= 0x5a;
        }
        let rrsig = RRSIG::new(
            rtype,
            ALG,
            num_labels,
            ttl,
            expiration,
            inception,
            tag,
            Name::root(),
            sig,
        );
        let mut r = Record::from_rdata(owner, ttl, RData::DNSSEC(DNSSECRData::RRSIG(rrsig)));
        r.set_dns_class(DNSClass::IN);
        r
    }
}

/// An NSEC record `owner NSEC next types... RRSIG NSEC`.
pub fn nsec_record(owner: Name, next: Name, types: &[RecordType], ttl: u32) -> Record {
    let mut all: Vec<RecordType> = types.to_vec();
    all.push(RecordType::RRSIG);
    all.push(RecordType::NSEC);
    all.sort();
    all.dedup();
    let mut r = Record::from_rdata(
        owner,
        ttl,
        RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, all))),
    );
    r.set_dns_class(DNSClass::IN);
    r
}

/// Loads a trust anchor file in the format of [`RootKeys::trust_anchor_text`] /
/// `TrustAnchors::from_file` (DNSKEY lines; comments after `;`) without needing
/// hickory-proto's `text-parsing` feature.
pub fn load_trust_anchor(path: &Path) -> Result<TrustAnchors> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_trust_anchor(&text)
}

/// See [`load_trust_anchor`].
pub fn parse_trust_anchor(text: &str) -> Result<TrustAnchors> {
    let mut anchors = TrustAnchors::empty();
    for (n, line) in text.lines().enumerate() {
        let line = line.split(';').next().unwrap_or("");
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let Some(i) = tokens.iter().position(|t| t.eq_ignore_ascii_case("DNSKEY")) else {
            bail!("line {}: not a DNSKEY record", n + 1);
        };
        let rdata = &tokens[i + 1..];
        if rdata.len() < 4 || rdata[1] != "3" {
            bail!("line {}: expected `flags 3 algorithm key`", n + 1);
        }
        let alg: u8 = rdata[2].parse().context("algorithm")?;
        let key = B64
            .decode(rdata[3..].concat())
            .with_context(|| format!("line {}: key is not base64", n + 1))?;
        anchors.insert(&PublicKeyBuf::new(key, Algorithm::from_u8(alg)));
    }
    if anchors.is_empty() {
        bail!("no DNSKEY in trust anchor file");
    }
    Ok(anchors)
}
