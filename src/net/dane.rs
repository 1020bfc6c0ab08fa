//! DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): MX and TLSA records
//! validated with DNSSEC. A secure MX set whose hosts publish usable TLSA
//! records (DANE-TA(2) or DANE-EE(3), selector 0 or 1, matching 0, 1 or 2)
//! makes DANE the requirement; a secure TLSA RRset with only unusable
//! records makes TLS mandatory (`encrypted`, RFC 7672 section 2.2); an
//! insecure MX set means no DANE; a bogus or failed lookup is an error, so
//! the recipient waits (never a fallback); the DANE probe
//! (`probe::dane`) reports this. Delivery under a decision that rests on
//! it takes its hosts and addresses from the same validating resolver
//! (`validated_mx`, `validated_addrs`) and authenticates the server by
//! the TLSA records (`client_config`).

use std::sync::{Arc, Mutex};

use hickory_resolver::Name;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
use hickory_resolver::proto::dnssec::{
    Algorithm, DigestType, Proof, PublicKey, PublicKeyBuf, TrustAnchors,
};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use serde::Serialize;

use crate::config::DnsSettings;

/// A TLSA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    #[serde(serialize_with = "ser_hex")]
    pub data: Vec<u8>,
}

fn ser_hex<S: serde::Serializer>(d: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(d))
}

impl Tlsa {
    /// RFC 7672 section 3.1: SMTP uses DANE-TA(2) and DANE-EE(3) only, with
    /// known selectors and matching types; anything else is unusable.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && matches!(self.matching, 0..=2)
    }

    /// Whether `cert` (DER) matches this record's selector and matching type.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let key;
        let selected: &[u8] = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(s) => {
                    key = s;
                    key.as_ref()
                }
                None => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected.to_vec(),
            1 => ring::digest::digest(&ring::digest::SHA256, selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        crate::util::constant_time_eq(&digest, &self.data)
    }

    /// `usage selector matching hex` as in zone files.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            hex::encode(&self.data)
        )
    }
}

/// What the TLSA RRset of one MX host means (RFC 7672 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTlsa {
    /// No secure TLSA RRset (insecure address or TLSA records, or none
    /// published): DANE does not apply to this host.
    None,
    /// A secure RRset whose records are all unusable for SMTP (PKIX
    /// usages, unknown selectors or matching types): TLS is mandatory,
    /// but the certificate cannot be authenticated.
    Unusable(Vec<Tlsa>),
    /// A secure RRset with usable records: the server must match one.
    Usable { usable: Vec<Tlsa>, all: Vec<Tlsa> },
}

impl HostTlsa {
    /// Sorts a secure, non-empty RRset into usable or unusable.
    pub fn classify(all: Vec<Tlsa>) -> HostTlsa {
        if all.is_empty() {
            return HostTlsa::None;
        }
        let usable: Vec<Tlsa> = all.iter().filter(|t| t.usable()).cloned().collect();
        if usable.is_empty() {
            HostTlsa::Unusable(all)
        } else {
            HostTlsa::Usable { usable, all }
        }
    }

    /// Every record of the RRset, for the evidence.
    pub fn all(&self) -> &[Tlsa] {
        match self {
            HostTlsa::None => &[],
            HostTlsa::Unusable(all) | HostTlsa::Usable { all, .. } => all,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate (RFC 5280 section 4.1),
/// with its SEQUENCE header, as webpki (the parser rustls verifies with)
/// reads it; `None` for anything webpki does not accept as a certificate,
/// so a selector 1 record never matches bytes it could not parse.
///
/// webpki's trust anchor reading is used (it also takes v1 certificates
/// and ignores unknown critical extensions): a DANE-TA(2) certificate
/// becomes a trust anchor exactly that way (`RootCertStore::add`), and a
/// DANE-EE(3) leaf is parsed again, strictly, by the handshake's signature
/// check, so the leniency admits nothing the handshake would refuse.
pub fn spki(cert: &[u8]) -> Option<SubjectPublicKeyInfoDer<'static>> {
    let der = CertificateDer::from(cert);
    let anchor = webpki::anchor_from_trusted_cert(&der).ok()?;
    Some(webpki::spki_for_anchor(&anchor))
}

/// What DNSSEC says about an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dnssec {
    Secure,
    Insecure,
}

/// DNSKEY flags (RFC 4034 section 2.1.1, RFC 5011 section 7).
const ZONE_KEY: u16 = 0x0100;
const SEP: u16 = 0x0001;
const REVOKE: u16 = 0x0080;

/// One record of a trust anchor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorRecord {
    /// A root key-signing key, trusted as written.
    Dnskey { line: usize, key: DNSKEY },
    /// The digest of a root key-signing key, as IANA publishes it: the
    /// root DNSKEY RRset is fetched at start and the keys it matches are
    /// trusted.
    Ds { line: usize, ds: DS },
}

/// A `[dns] trust_anchor` file: root DNSKEY and DS records in zone-file
/// form (`. 172800 IN DNSKEY 257 3 8 AwEAA...`, `. IN DS 20326 8 2
/// E06D44B8...`), `;` comments, `( ... )` spanning lines.
///
/// Every record must be for the root `.`: hickory trusts an anchor key
/// wherever it meets it, and this resolver starts every chain at the root.
/// A DNSKEY must be a zone key with the SEP bit (flags 257) and not
/// revoked: a zone-signing key is usually rolled without notice, and a
/// file naming one is a mistake worth hearing about at start. A DS with
/// digest type 1 (SHA-1) is refused: IANA publishes SHA-256 (type 2) for
/// the root, and an anchor is where a weak digest would matter most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchorFile {
    pub path: std::path::PathBuf,
    pub records: Vec<AnchorRecord>,
}

/// One record of a zone-file text.
struct ZoneFileRecord {
    /// The line it starts on (1-based).
    line: usize,
    /// Whether that line starts with a blank: no owner name.
    blank: bool,
    tokens: Vec<String>,
}

/// The records of a zone-file text: `;` comments dropped, `( ... )`
/// joining lines.
fn zone_file_records(text: &str) -> Result<Vec<ZoneFileRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut current: Option<ZoneFileRecord> = None;
    let mut in_parens = false;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let body = raw.split(';').next().unwrap_or("");
        let spaced = body.replace('(', " ( ").replace(')', " ) ");
        for token in spaced.split_whitespace() {
            let record = current.get_or_insert_with(|| ZoneFileRecord {
                line,
                blank: raw.starts_with([' ', '\t']),
                tokens: Vec::new(),
            });
            match token {
                "(" if in_parens => return Err((line, "nested `(`".into())),
                "(" => in_parens = true,
                ")" if !in_parens => return Err((line, "`)` without `(`".into())),
                ")" => in_parens = false,
                t => record.tokens.push(t.to_string()),
            }
        }
        if !in_parens && let Some(r) = current.take() {
            records.push(r);
        }
    }
    match current {
        Some(r) => Err((r.line, "`(` is never closed".into())),
        None => Ok(records),
    }
}

impl TrustAnchorFile {
    /// Reads and checks the file: every problem, each as `path:line:
    /// message`.
    pub fn load(path: &std::path::Path) -> Result<TrustAnchorFile, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse(path, &text)
    }

    /// Parses `text` (read from `path`, named in the messages).
    pub fn parse(path: &std::path::Path, text: &str) -> Result<TrustAnchorFile, Vec<String>> {
        let at = |n: usize, m: &str| format!("{}:{n}: {m}", path.display());
        if text.trim_start().starts_with('<') {
            return Err(vec![format!(
                "{}: this looks like XML (IANA's root-anchors.xml), which is not read; \
                 write each current <KeyDigest> as a DS line: \
                 `. IN DS <KeyTag> <Algorithm> <DigestType> <Digest>`",
                path.display()
            )]);
        }
        let records = zone_file_records(text).map_err(|(n, m)| vec![at(n, &m)])?;
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for r in records {
            if r.tokens
                .first()
                .is_some_and(|t| t.eq_ignore_ascii_case("$TTL"))
            {
                continue;
            }
            let tokens: Vec<&str> = r.tokens.iter().map(String::as_str).collect();
            match Self::record(r.line, r.blank, &tokens) {
                Ok(rec) => out.push(rec),
                Err(m) => problems.push(at(r.line, &m)),
            }
        }
        if out.is_empty() && problems.is_empty() {
            problems.push(format!("{}: no DNSKEY or DS record", path.display()));
        }
        if problems.is_empty() {
            Ok(TrustAnchorFile {
                path: path.to_path_buf(),
                records: out,
            })
        } else {
            Err(problems)
        }
    }

    /// One record: `. [ttl] [IN] DNSKEY|DS rdata`.
    fn record(line: usize, blank: bool, tokens: &[&str]) -> Result<AnchorRecord, String> {
        if blank {
            return Err(
                "the record has no owner name (a line that starts with a blank \
                        repeats the previous owner); a trust anchor starts with the root `.`"
                    .into(),
            );
        }
        let (owner, rest) = tokens.split_first().ok_or("empty record")?;
        // `[ttl] [IN]` (in either order), then the type.
        let i = rest
            .iter()
            .take(2)
            .take_while(|t| t.eq_ignore_ascii_case("IN") || t.bytes().all(|b| b.is_ascii_digit()))
            .count();
        let rtype = rest.get(i).ok_or("no record type")?;
        if !(rtype.eq_ignore_ascii_case("DNSKEY") || rtype.eq_ignore_ascii_case("DS")) {
            return Err(format!(
                "expected a DNSKEY or DS record of class IN, found `{rtype}`"
            ));
        }
        if *owner != "." {
            return Err(format!(
                "the owner name is `{owner}`: a trust anchor must be for the root `.` \
                 (sealgate validates every answer from the root down)"
            ));
        }
        let rdata = &rest[i + 1..];
        if rtype.eq_ignore_ascii_case("DNSKEY") {
            Self::dnskey(rdata).map(|key| AnchorRecord::Dnskey { line, key })
        } else {
            Self::ds(rdata).map(|ds| AnchorRecord::Ds { line, ds })
        }
    }

    /// `flags 3 algorithm base64`.
    fn dnskey(rdata: &[&str]) -> Result<DNSKEY, String> {
        use base64::Engine;
        let [flags, protocol, alg, key @ ..] = rdata else {
            return Err("expected `DNSKEY flags 3 algorithm key`".into());
        };
        if key.is_empty() {
            return Err("expected `DNSKEY flags 3 algorithm key`".into());
        }
        let flags: u16 = flags
            .parse()
            .map_err(|_| format!("DNSKEY flags `{flags}` are not a number"))?;
        if *protocol != "3" {
            return Err(format!("DNSKEY protocol is `{protocol}`, must be 3"));
        }
        let alg = algorithm(alg)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.concat())
            .map_err(|_| "the DNSKEY key is not base64".to_string())?;
        if flags & ZONE_KEY == 0 {
            return Err(format!(
                "DNSKEY flags {flags} lack the Zone Key bit (256): not a DNSSEC zone key; \
                 a trust anchor is the root's key-signing key (flags 257)"
            ));
        }
        if flags & REVOKE != 0 {
            return Err(format!(
                "DNSKEY flags {flags} have the REVOKE bit (128): this key has been revoked \
                 (RFC 5011) and must not be trusted"
            ));
        }
        if flags & SEP == 0 {
            return Err(format!(
                "DNSKEY flags {flags} lack the SEP bit (1): this is a zone-signing key; \
                 a trust anchor is the root's key-signing key (flags 257)"
            ));
        }
        Ok(DNSKEY::with_flags(flags, PublicKeyBuf::new(key, alg)))
    }

    /// `key-tag algorithm digest-type hex`.
    fn ds(rdata: &[&str]) -> Result<DS, String> {
        let [tag, alg, digest_type, digest @ ..] = rdata else {
            return Err("expected `DS key-tag algorithm digest-type digest`".into());
        };
        let tag: u16 = tag
            .parse()
            .map_err(|_| format!("DS key tag `{tag}` is not a number from 0 to 65535"))?;
        let alg = algorithm(alg)?;
        let (digest_type, len) = match *digest_type {
            "2" => (DigestType::SHA256, 32),
            "4" => (DigestType::SHA384, 48),
            "1" => {
                return Err("DS digest type 1 (SHA-1) is too weak for a trust anchor; \
                            use the SHA-256 (type 2) DS that IANA publishes"
                    .into());
            }
            other => {
                return Err(format!(
                    "DS digest type `{other}` is not known (2 is SHA-256, 4 is SHA-384)"
                ));
            }
        };
        let digest = hex::decode(digest.concat())
            .map_err(|_| "the DS digest is not hexadecimal".to_string())?;
        if digest.len() != len {
            return Err(format!(
                "the DS digest is {} bytes long, a {} digest is {len}",
                digest.len(),
                if len == 32 { "SHA-256" } else { "SHA-384" }
            ));
        }
        Ok(DS::new(tag, alg, digest_type, digest))
    }

    /// Whether the root DNSKEY RRset must be fetched ([`Self::anchors`]).
    pub fn has_ds(&self) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r, AnchorRecord::Ds { .. }))
    }

    /// The trust anchors: each DNSKEY record as written, and each key of
    /// `root_keys` (the root DNSKEY RRset as fetched, not yet validated)
    /// that a DS record matches: same key tag and algorithm, flags 257,
    /// and the digest over the owner `.` and the key's RDATA (RFC 4034
    /// section 5.1.4). A DS that matches nothing is logged; a file that
    /// yields no key at all is an error, never a silent fall back to the
    /// built-in root keys.
    pub fn anchors(&self, root_keys: &[DNSKEY]) -> Result<TrustAnchors, String> {
        let mut anchors = TrustAnchors::empty();
        let mut unmatched = Vec::new();
        for r in &self.records {
            match r {
                AnchorRecord::Dnskey { key, .. } => {
                    anchors.insert(key.public_key());
                }
                AnchorRecord::Ds { line, ds } => {
                    let mut found = false;
                    for key in root_keys.iter().filter(|k| ds_matches(ds, k)) {
                        found = true;
                        anchors.insert(key.public_key());
                        tracing::info!(
                            anchor = %format!("{}:{line}", self.path.display()),
                            key_tag = ds.key_tag(),
                            "trust anchor: the root DNSKEY matching this DS is trusted"
                        );
                    }
                    if !found {
                        unmatched.push((*line, ds.key_tag()));
                    }
                }
            }
        }
        let describe = |u: &[(usize, u16)]| {
            u.iter()
                .map(|(l, t)| format!("line {l} (key tag {t})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if anchors.is_empty() {
            let tags: Vec<String> = root_keys
                .iter()
                .map(|k| match k.calculate_key_tag() {
                    Ok(t) => format!("{t} (flags {})", k.flags()),
                    Err(_) => format!("? (flags {})", k.flags()),
                })
                .collect();
            return Err(format!(
                "{}: no key of the root DNSKEY RRset fetched through [dns] nameservers \
                 (key tags: {}) matches the DS record at {}; DNSSEC cannot be validated, \
                 and sealgate does not fall back to its built-in root keys",
                self.path.display(),
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                },
                describe(&unmatched)
            ));
        }
        if !unmatched.is_empty() {
            tracing::warn!(
                anchor = %self.path.display(),
                unmatched = %describe(&unmatched),
                "trust anchor: no root DNSKEY matches these DS records (a key not yet \
                 published, or a mistake); the other anchors are used"
            );
        }
        Ok(anchors)
    }
}

/// A DNSSEC algorithm number that hickory validates.
fn algorithm(text: &str) -> Result<Algorithm, String> {
    let n: u8 = text
        .parse()
        .map_err(|_| format!("algorithm `{text}` is not a number"))?;
    let alg = Algorithm::from_u8(n);
    if !alg.is_supported() {
        return Err(format!(
            "DNSSEC algorithm {n} is not supported by this resolver"
        ));
    }
    Ok(alg)
}

/// Whether `ds` is the digest of `key`, a root key-signing key.
fn ds_matches(ds: &DS, key: &DNSKEY) -> bool {
    key.flags() & (ZONE_KEY | SEP | REVOKE) == ZONE_KEY | SEP
        && key.public_key().algorithm() == ds.algorithm()
        && key.calculate_key_tag().ok() == Some(ds.key_tag())
        && ds.covers(&Name::root(), key).unwrap_or(false)
}

/// The root DNSKEY RRset through the configured resolvers, unvalidated:
/// only keys a configured DS matches are then trusted.
async fn fetch_root_keys(dns: &DnsSettings) -> Result<Vec<DNSKEY>, String> {
    let resolver = super::route::resolver_builder(dns)
        .map_err(|e| e.to_string())?
        .build();
    let lookup = resolver
        .lookup(Name::root(), RecordType::DNSKEY)
        .await
        .map_err(|e| {
            format!(
                "dns.trust_anchor: cannot fetch the root DNSKEY RRset to match the DS \
                 trust anchor against: {e}"
            )
        })?;
    Ok(lookup
        .record_iter()
        .filter(|r| r.name().is_root())
        .filter_map(|r| match r.data() {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
            _ => None,
        })
        .collect())
}

/// Why a host's validated addresses could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrsError {
    /// The name does not exist (NXDOMAIN).
    NxDomain(String),
    /// Bogus, or the lookup failed.
    Failed(String),
}

impl std::fmt::Display for AddrsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrsError::NxDomain(m) | AddrsError::Failed(m) => f.write_str(m),
        }
    }
}

/// What a validated answer says beside its records.
#[derive(Debug, Default)]
struct Found {
    /// The owner of the records when it is not the name asked for (the
    /// target of a CNAME chain), lowercase, without the final dot.
    owner: Option<String>,
    /// A (validated) NXDOMAIN: the name does not exist.
    nxdomain: bool,
}

/// A validated lookup that did not succeed.
struct LookupFailure {
    message: String,
    /// The answer came, and failed validation.
    bogus: bool,
    /// The records of a bogus answer.
    data: Vec<RData>,
}

/// Labels of a name looked at for a zone cut at most (a DNS name has at
/// most 127).
const MAX_LABELS: usize = 127;

/// Whether this validator can authenticate a zone by `ds` (RFC 6840
/// section 5.2): an algorithm it verifies and a digest type it computes.
/// RSASHA1-NSEC3-SHA1 (7) is listed by hickory but its ring backend
/// cannot verify it.
fn ds_usable(ds: &DS) -> bool {
    #[allow(deprecated)]
    let verifiable = ds.algorithm().is_supported() && ds.algorithm() != Algorithm::RSASHA1NSEC3SHA1;
    verifiable
        && matches!(
            ds.digest_type(),
            DigestType::SHA1 | DigestType::SHA256 | DigestType::SHA384
        )
}

/// The validating resolver and TLSA lookups.
pub struct Dane {
    resolver: TokioResolver,
    port: u16,
}

impl Dane {
    /// A validating resolver over `[dns]` (the trust anchor file, or the
    /// IANA root built into hickory). A file with DS records makes this
    /// fetch the root DNSKEY RRset first; it fails when none matches.
    pub async fn new(dns: &DnsSettings, port: u16) -> Result<Dane, String> {
        let mut builder = super::route::resolver_builder(dns).map_err(|e| e.to_string())?;
        builder.options_mut().validate = true;
        if let Some(path) = &dns.trust_anchor {
            let file = TrustAnchorFile::load(path)
                .map_err(|e| format!("dns.trust_anchor {}", e.join("; ")))?;
            let root_keys = if file.has_ds() {
                fetch_root_keys(dns).await?
            } else {
                Vec::new()
            };
            let anchors = file
                .anchors(&root_keys)
                .map_err(|e| format!("dns.trust_anchor {e}"))?;
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        Ok(Dane {
            resolver: builder.build(),
            port,
        })
    }

    /// The weakest proof among the answer's records.
    fn lookup_proof(l: &hickory_resolver::lookup::Lookup) -> Proof {
        l.record_iter()
            .map(|r| r.proof())
            .min()
            .unwrap_or(Proof::Indeterminate)
    }

    /// A validated lookup: `Ok((status, rdata))`, empty for a proven
    /// NODATA/NXDOMAIN; `Err` for bogus or failed lookups.
    ///
    /// An answer hickory finds bogus is insecure when it lies below a
    /// zone cut whose DS RRset is secure and names only algorithms this
    /// validator cannot verify (RFC 6840 section 5.2, RFC 4035 section
    /// 5.2): hickory takes that into account for algorithms it does not
    /// know (Ed448), but reports as bogus a zone signed with one it lists
    /// yet cannot verify (RSASHA1-NSEC3-SHA1, algorithm 7, under ring).
    async fn validated(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Dnssec, Vec<RData>), String> {
        self.validated_owner(name, rtype)
            .await
            .map(|(status, data, _)| (status, data))
    }

    /// [`Dane::validated`], with the owner name of the records found when
    /// it is not `name` (the target of a CNAME chain, lowercase, without
    /// the final dot).
    async fn validated_owner(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Dnssec, Vec<RData>, Found), String> {
        match self.validated_raw(name, rtype).await {
            Err(e) if e.bogus => {
                if let Some(cut) = self.unverifiable_cut(name).await {
                    tracing::debug!(
                        name, %rtype, zone = %cut,
                        "DNSSEC: the zone is signed only with algorithms this validator does not implement; insecure (RFC 6840 section 5.2)"
                    );
                    return Ok((Dnssec::Insecure, e.data, Found::default()));
                }
                Err(e.message)
            }
            Err(e) => Err(e.message),
            Ok(v) => Ok(v),
        }
    }

    /// The closest zone cut above or at `name` (not the root) whose DS
    /// RRset is DNSSEC-secure, not empty, and made only of records this
    /// validator cannot use: an algorithm it cannot verify or a digest
    /// type it does not know. Each ancestor's DS RRset is asked for, from
    /// `name` up, bounded by the name's labels.
    async fn unverifiable_cut(&self, name: &str) -> Option<String> {
        let name = name.trim_end_matches('.');
        let labels: Vec<&str> = name.split('.').collect();
        for i in 0..labels.len().min(MAX_LABELS) {
            let zone = format!("{}.", labels[i..].join("."));
            let Ok(l) = self.resolver.lookup(zone.clone(), RecordType::DS).await else {
                continue;
            };
            let ds: Vec<&DS> = l
                .record_iter()
                .filter(|r| r.proof() == Proof::Secure)
                .filter_map(|r| match r.data() {
                    RData::DNSSEC(DNSSECRData::DS(ds)) => Some(ds),
                    _ => None,
                })
                .collect();
            if Self::lookup_proof(&l) != Proof::Secure || ds.is_empty() {
                continue;
            }
            if ds.iter().all(|d| !ds_usable(d)) {
                return Some(zone);
            }
            // A secure DS RRset with a usable record: the zone below is
            // validated with it, and its answers' bogus proofs stand.
            return None;
        }
        None
    }

    /// [`Dane::validated`] before the unsupported-algorithm check: a bogus
    /// answer is an error that says so (with the records it carried).
    async fn validated_raw(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<(Dnssec, Vec<RData>, Found), LookupFailure> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let bogus = |message: String, data: Vec<RData>| LookupFailure {
            message,
            bogus: true,
            data,
        };
        let failed = |message: String| LookupFailure {
            message,
            bogus: false,
            data: Vec::new(),
        };
        match self.resolver.lookup(fqdn.clone(), rtype).await {
            Ok(l) => {
                let proof = Self::lookup_proof(&l);
                let data: Vec<RData> = l
                    .record_iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data().clone())
                    .collect();
                let owner = l
                    .record_iter()
                    .find(|r| r.record_type() == rtype)
                    .map(|r| {
                        r.name()
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase()
                    })
                    .filter(|o| !o.eq_ignore_ascii_case(fqdn.trim_end_matches('.')));
                match proof {
                    Proof::Secure => Ok((
                        Dnssec::Secure,
                        data,
                        Found {
                            owner,
                            nxdomain: false,
                        },
                    )),
                    Proof::Insecure => Ok((
                        Dnssec::Insecure,
                        data,
                        Found {
                            owner,
                            nxdomain: false,
                        },
                    )),
                    Proof::Bogus => Err(bogus(
                        format!("DNSSEC validation of {fqdn} {rtype} failed (bogus)"),
                        data,
                    )),
                    Proof::Indeterminate => Err(failed(format!(
                        "DNSSEC status of {fqdn} {rtype} is indeterminate"
                    ))),
                }
            }
            Err(e) => {
                if let Some(ProtoErrorKind::NoRecordsFound {
                    soa, response_code, ..
                }) = e.proto().map(|p| p.kind())
                {
                    let proof = soa.as_ref().map_or(Proof::Indeterminate, |s| s.proof());
                    let found = Found {
                        owner: None,
                        nxdomain: *response_code == ResponseCode::NXDomain,
                    };
                    let what = if *response_code == ResponseCode::NXDomain {
                        "NXDOMAIN"
                    } else {
                        "no data"
                    };
                    return match proof {
                        Proof::Secure => Ok((Dnssec::Secure, Vec::new(), found)),
                        Proof::Insecure => Ok((Dnssec::Insecure, Vec::new(), found)),
                        Proof::Bogus => Err(bogus(
                            format!(
                                "DNSSEC validation of the {what} answer for {fqdn} {rtype} failed (bogus)"
                            ),
                            Vec::new(),
                        )),
                        Proof::Indeterminate => Err(failed(format!(
                            "{what} for {fqdn} {rtype} could not be proven"
                        ))),
                    };
                }
                Err(failed(format!(
                    "validated lookup of {fqdn} {rtype} failed: {e}"
                )))
            }
        }
    }

    /// What the TLSA records of an MX host say (RFC 7672 section 2.2):
    /// `Err` when the answer is bogus or the lookup failed.
    pub async fn tlsa(&self, host: &str) -> Result<HostTlsa, String> {
        self.tlsa_at(host, self.port).await
    }

    /// The TLSA records of `host` for SMTP on `port` (a smarthost's own
    /// port), as [`Dane::tlsa`].
    pub async fn tlsa_at(&self, host: &str, port: u16) -> Result<HostTlsa, String> {
        // RFC 7672 section 2.2.2: the host's address records must be
        // secure for its TLSA records to be used (a CNAME chain to them
        // too: the weakest proof of the answer counts).
        let (addr_status, _, found) = self.validated_owner(host, RecordType::A).await?;
        let target = found.owner;
        if addr_status != Dnssec::Secure {
            return Ok(HostTlsa::None);
        }
        // A host name that is a secure CNAME (RFC 5321 forbids it, it
        // happens): the TLSA records are looked up at the fully expanded
        // name first, then, if that has none, at the original name (RFC
        // 7672 section 2.2.2, RFC 7671 section 7). A CNAME of the TLSA
        // name itself is followed by the resolver, secure end to end.
        let mut bases: Vec<String> = target.into_iter().collect();
        bases.push(host.trim_end_matches('.').to_ascii_lowercase());
        let mut data = Vec::new();
        for base in &bases {
            let name = format!("_{port}._tcp.{base}");
            let (status, found) = self.validated(&name, RecordType::TLSA).await?;
            // Insecure TLSA records do not count; the next name is asked.
            if status == Dnssec::Secure && !found.is_empty() {
                data = found;
                break;
            }
        }
        if data.is_empty() {
            return Ok(HostTlsa::None);
        }
        let all: Vec<Tlsa> = data
            .iter()
            .filter_map(|d| match d {
                RData::TLSA(t) => Some(Tlsa {
                    usage: u8::from(t.cert_usage()),
                    selector: u8::from(t.selector()),
                    matching: u8::from(t.matching()),
                    data: t.cert_data().to_vec(),
                }),
                _ => None,
            })
            .collect();
        Ok(HostTlsa::classify(all))
    }

    /// The MX RRset of `domain` from the validating resolver, in
    /// preference order: `(status, [(preference, host)])`, empty for a
    /// proven NODATA or NXDOMAIN; `Err` for bogus or failed lookups.
    pub async fn validated_mx(&self, domain: &str) -> Result<(Dnssec, Vec<(u16, String)>), String> {
        let (status, mx) = self.validated(domain, RecordType::MX).await?;
        let mut hosts: Vec<(u16, String)> = mx
            .iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((
                    m.preference(),
                    m.exchange()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        Ok((status, hosts))
    }

    /// The addresses (AAAA and A) of `host` from the validating resolver,
    /// secure or provably insecure; `Err` for bogus or failed lookups, so
    /// no forged address is ever used for a decision that rests on DNSSEC.
    pub async fn validated_addrs(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, AddrsError> {
        let mut out = Vec::new();
        for rtype in [RecordType::AAAA, RecordType::A] {
            let (status, data, found) = self
                .validated_owner(host, rtype)
                .await
                .map_err(AddrsError::Failed)?;
            if found.nxdomain {
                return Err(AddrsError::NxDomain(format!(
                    "{host} does not exist (NXDOMAIN{})",
                    if status == Dnssec::Secure {
                        ", DNSSEC-proven"
                    } else {
                        ""
                    }
                )));
            }
            for d in data {
                let ip = match d {
                    RData::A(a) => std::net::IpAddr::V4(a.0),
                    RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                    _ => continue,
                };
                let addr = std::net::SocketAddr::new(ip, port);
                if !out.contains(&addr) && out.len() < super::route::MAX_ADDRS_PER_HOST {
                    out.push(addr);
                }
            }
        }
        Ok(out)
    }

    /// OpenPGP keys published for `address` in DNS (RFC 7929), accepted
    /// only from a DNSSEC-secure answer: `Ok(None)` when there is none or
    /// the zone is unsigned, `Err` for a bogus or failed lookup.
    pub async fn openpgpkey(&self, address: &str) -> Result<Option<Vec<Vec<u8>>>, String> {
        let (local, domain) = address.rsplit_once('@').ok_or("not an address")?;
        let local = openpgpkey_local(local);
        let hash = ring::digest::digest(&ring::digest::SHA256, local.as_bytes());
        let name = format!(
            "{}._openpgpkey.{}",
            hex::encode(&hash.as_ref()[..28]),
            domain
        );
        let (status, data) = self.validated(&name, RecordType::OPENPGPKEY).await?;
        if status != Dnssec::Secure || data.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            data.iter()
                .filter_map(|d| match d {
                    RData::OPENPGPKEY(k) => Some(k.public_key().to_vec()),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// A rustls configuration that authenticates the server by `tlsa`
    /// (RFC 7671 / 7672), recording which record matched in `matched`.
    pub fn client_config(
        &self,
        tlsa: Vec<Tlsa>,
        names: Vec<String>,
        matched: Arc<Mutex<Option<Tlsa>>>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = super::tls::provider();
        let verifier = DaneVerifier {
            tlsa,
            names,
            matched,
            provider: provider.clone(),
        };
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

/// Verifies a server's chain against TLSA records.
#[derive(Debug)]
struct DaneVerifier {
    tlsa: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA: the MX host name and the domain.
    names: Vec<String>,
    matched: Arc<Mutex<Option<Tlsa>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE(3): the leaf itself; names and dates are not checked
        // (RFC 7671 section 5.1).
        for t in self.tlsa.iter().filter(|t| t.usage == 3) {
            if t.matches(end_entity.as_ref()) {
                *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
                return Ok(ServerCertVerified::assertion());
            }
        }
        // DANE-TA(2): a certificate of the presented chain is the trust
        // anchor; the leaf must chain to it and match a reference name.
        for t in self.tlsa.iter().filter(|t| t.usage == 2) {
            for ta in intermediates.iter().chain(std::iter::once(end_entity)) {
                if !t.matches(ta.as_ref()) {
                    continue;
                }
                let mut roots = rustls::RootCertStore::empty();
                if roots.add(ta.clone().into_owned()).is_err() {
                    continue;
                }
                let Ok(v) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build() else {
                    continue;
                };
                for name in &self.names {
                    let Ok(sn) = ServerName::try_from(name.clone()) else {
                        continue;
                    };
                    if v.verify_server_cert(end_entity, intermediates, &sn, &[], now)
                        .is_ok()
                    {
                        *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
                        return Ok(ServerCertVerified::assertion());
                    }
                }
            }
        }
        Err(rustls::Error::General(
            "TLSA mismatch: no DANE-TA or DANE-EE record matches the presented certificate chain"
                .into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6840 section 5.2: which DS records can authenticate a zone
    /// here; a zone whose secure DS RRset has none is insecure.
    #[test]
    #[allow(deprecated)]
    fn ds_usable_algorithms_and_digests() {
        let ds =
            |alg: u8, digest: DigestType| DS::new(1, Algorithm::from_u8(alg), digest, vec![0; 32]);
        for alg in [5, 8, 10, 13, 14, 15] {
            assert!(ds_usable(&ds(alg, DigestType::SHA256)), "algorithm {alg}");
        }
        // 7: listed by hickory, not verifiable by its ring backend;
        // 16 (Ed448), 12 (GOST), 3 (DSA), 1 (RSAMD5): not implemented.
        for alg in [1, 3, 7, 12, 16, 253] {
            assert!(!ds_usable(&ds(alg, DigestType::SHA256)), "algorithm {alg}");
        }
        assert!(ds_usable(&ds(13, DigestType::SHA384)));
        assert!(ds_usable(&ds(13, DigestType::SHA1)));
        assert!(!ds_usable(&ds(13, DigestType::from(3))));
    }

    #[test]
    fn tlsa_matching() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki_der = spki(&der).expect("SPKI found");
        let spki_der = spki_der.as_ref();
        assert_eq!(spki_der, key.public_key_der().as_slice());
        let sha256 = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, d)
                .as_ref()
                .to_vec()
        };
        let sha512 = |d: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, d)
                .as_ref()
                .to_vec()
        };
        let cases = [
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 0,
                    data: der.clone(),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 0,
                    matching: 1,
                    data: sha256(&der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha256(spki_der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 2,
                    data: sha512(spki_der),
                },
                true,
            ),
            (
                Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: sha256(b"other"),
                },
                false,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(t.matches(&der), want, "{}", t.describe());
        }
        assert!(
            !Tlsa {
                usage: 1,
                selector: 1,
                matching: 1,
                data: vec![]
            }
            .usable()
        );
        assert!(
            !Tlsa {
                usage: 3,
                selector: 2,
                matching: 1,
                data: vec![]
            }
            .usable()
        );
        assert!(
            Tlsa {
                usage: 2,
                selector: 0,
                matching: 2,
                data: vec![]
            }
            .usable()
        );
        assert_eq!(spki(b"\x30\x03\x02\x01"), None, "truncated DER is refused");
    }

    #[test]
    fn tlsa_rrsets_are_usable_unusable_or_absent() {
        let t = |usage, selector, matching| Tlsa {
            usage,
            selector,
            matching,
            data: vec![1, 2, 3],
        };
        assert_eq!(HostTlsa::classify(Vec::new()), HostTlsa::None);
        // Only PKIX usages, or unknown selectors and matching types:
        // mandatory TLS, no authentication (RFC 7672 section 2.2).
        for only in [
            vec![t(0, 1, 1)],
            vec![t(1, 1, 1), t(0, 0, 1)],
            vec![t(3, 2, 1)],
            vec![t(2, 1, 3)],
            vec![t(4, 1, 1)],
        ] {
            assert_eq!(
                HostTlsa::classify(only.clone()),
                HostTlsa::Unusable(only.clone()),
                "{only:?}"
            );
        }
        // Mixed: the usable records authenticate, all are evidence.
        let mixed = vec![t(1, 1, 1), t(3, 1, 1), t(3, 9, 1)];
        match HostTlsa::classify(mixed.clone()) {
            HostTlsa::Usable { usable, all } => {
                assert_eq!(usable, vec![t(3, 1, 1)]);
                assert_eq!(all, mixed);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod spki_tests {
    use super::*;

    fn sha256(d: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, d)
            .as_ref()
            .to_vec()
    }

    fn record(data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data,
        }
    }

    /// Certificates made by the openssl command line (see
    /// tests/data/dane/README.md), with their SPKI digests as openssl
    /// computes them: long-form lengths all the way, many extensions, a
    /// v1 certificate without a version field.
    const OPENSSL_CERTS: [(&[u8], &str); 2] = [
        (
            include_bytes!("../../tests/data/dane/rsa4096-ext.der"),
            "e88bb202d9294fd4a09c1029187342f9a1b95f493acb011348f276df6df0ae23",
        ),
        (
            include_bytes!("../../tests/data/dane/v1.der"),
            "49fcc3fc6c0a21a21fdf67da3c2d666e428494425bd36c8af5a6c81560ec6a78",
        ),
    ];

    #[test]
    fn odd_but_valid_der_matches_the_spki_openssl_computed() {
        for (der, want) in OPENSSL_CERTS {
            let want = hex::decode(want).unwrap();
            let got = spki(der).expect("webpki reads the certificate");
            assert_eq!(sha256(got.as_ref()), want);
            assert!(record(want.clone()).matches(der));
            let mut other = want.clone();
            other[0] ^= 1;
            assert!(!record(other).matches(der));
        }
    }

    #[test]
    fn an_unknown_critical_extension_still_yields_the_spki() {
        // A DANE-TA certificate is a trust anchor, and webpki ignores
        // what it does not know in one (as `RootCertStore::add` does).
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["mx.example.test".into(); 1]).unwrap();
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let got = spki(&der).expect("SPKI found");
        assert_eq!(got.as_ref(), key.public_key_der().as_slice());
        assert!(record(sha256(&key.public_key_der())).matches(&der));
    }

    #[test]
    fn garbage_fails_closed() {
        let (der, digest) = OPENSSL_CERTS[0];
        let good = record(hex::decode(digest).unwrap());
        assert!(good.matches(der));
        // Every truncation, trailing bytes, a corrupted length, nothing.
        for cut in 0..der.len() {
            assert_eq!(spki(&der[..cut]), None, "cut at {cut}");
            assert!(!good.matches(&der[..cut]), "cut at {cut}");
        }
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert_eq!(spki(&trailing), None);
        let mut bad_length = der.to_vec();
        bad_length[3] ^= 0x01;
        assert_eq!(spki(&bad_length), None);
        for junk in [
            &b""[..],
            b"\x30\x03\x02\x01",
            b"\x30\x80\x00\x00",
            b"\x30\x84\xff\xff\xff\xff",
            b"-----BEGIN CERTIFICATE-----",
        ] {
            assert_eq!(spki(junk), None, "{junk:?}");
            assert!(!good.matches(junk));
        }
        // A bare SPKI is not a certificate.
        let (v1, _) = OPENSSL_CERTS[1];
        let bare = spki(v1).unwrap();
        assert_eq!(spki(bare.as_ref()), None);
    }
}

#[cfg(test)]
mod trust_anchor_tests {
    use super::*;
    use base64::Engine;
    use std::path::Path;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// The root KSK 20326 (hickory's built-in copy) and the DS IANA
    /// publishes for it (also what `dnssec-dsfromkey -2` prints).
    fn root_ksk_20326() -> DNSKEY {
        let builtin = TrustAnchors::default();
        let key = builtin.get(0).unwrap();
        DNSKEY::with_flags(257, key.clone())
    }
    const IANA_DS_20326: &str =
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

    fn parse(text: &str) -> Result<TrustAnchorFile, Vec<String>> {
        TrustAnchorFile::parse(Path::new("/etc/sealgate/root.key"), text)
    }

    /// The error (TrustAnchors is not Debug, so no `unwrap_err`).
    fn refused(r: Result<TrustAnchors, String>) -> String {
        match r {
            Ok(_) => panic!("trusted"),
            Err(e) => e,
        }
    }

    fn one_error(text: &str) -> String {
        let e = parse(text).expect_err(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }

    /// RFC 4034 section 5.1.4, computed here without hickory: the digest
    /// over the owner's wire form (the root is one zero byte) and the
    /// DNSKEY RDATA.
    fn ds_digest(
        alg: &'static ring::digest::Algorithm,
        flags: u16,
        algorithm: u8,
        key: &[u8],
    ) -> String {
        let mut data = vec![0u8];
        data.extend(flags.to_be_bytes());
        data.extend([3, algorithm]);
        data.extend(key);
        hex::encode_upper(ring::digest::digest(alg, &data))
    }

    /// RFC 4034 appendix B, computed here.
    fn key_tag(flags: u16, algorithm: u8, key: &[u8]) -> u16 {
        let mut rdata = flags.to_be_bytes().to_vec();
        rdata.extend([3, algorithm]);
        rdata.extend(key);
        let mut ac: u32 = 0;
        for (i, b) in rdata.iter().enumerate() {
            ac += if i & 1 == 1 {
                u32::from(*b)
            } else {
                u32::from(*b) << 8
            };
        }
        ac += (ac >> 16) & 0xffff;
        (ac & 0xffff) as u16
    }

    fn p256_key(seed: u8) -> Vec<u8> {
        (0..64)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i))
            .collect()
    }

    #[test]
    fn dnskey_lines_as_tools_print_them() {
        let key = B64.encode(root_ksk_20326().public_key().public_bytes());
        for text in [
            format!(". 172800 IN DNSKEY 257 3 8 {key}"),
            format!(".\tIN\tDNSKEY\t257 3 8 {key} ;{{id = 20326 (ksk), size = 2048b}}"),
            format!(
                "; a comment\n\n. DNSKEY 257 3 8 (\n {} ; first half\n {} )\n",
                &key[..100],
                &key[100..]
            ),
            format!("$TTL 3600\n. 3600 in dnskey 257 3 8 {key}"),
        ] {
            let file = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(file.records.len(), 1, "{text}");
            assert!(!file.has_ds());
            let anchors = file.anchors(&[]).unwrap();
            assert!(anchors.contains(root_ksk_20326().public_key()), "{text}");
        }
    }

    #[test]
    fn the_owner_must_be_the_root() {
        let key = B64.encode(p256_key(1));
        for (owner, shown) in [
            ("test.", "`test.`"),
            ("example.com.", "`example.com.`"),
            ("@", "`@`"),
            ("com", "`com`"),
        ] {
            let text = format!("; comment\n{owner} 3600 IN DNSKEY 257 3 13 {key}\n");
            let e = one_error(&text);
            assert!(e.starts_with("/etc/sealgate/root.key:2: "), "{e}");
            assert!(e.contains(&format!("the owner name is {shown}")), "{e}");
            assert!(e.contains("root `.`"), "{e}");
        }
        let e = one_error(&format!("test. IN DS 1 13 2 {}", "00".repeat(32)));
        assert!(e.contains("owner name is `test.`"), "{e}");
        // A line that starts with a blank has no owner.
        let e = one_error(&format!("  IN DNSKEY 257 3 13 {key}"));
        assert!(e.contains(":1: the record has no owner name"), "{e}");
    }

    #[test]
    fn only_key_signing_keys_are_anchors() {
        let key = B64.encode(p256_key(2));
        for (flags, says) in [
            (256, "lack the SEP bit"),
            (1, "lack the Zone Key bit"),
            (0, "lack the Zone Key bit"),
            (385, "REVOKE bit"),
        ] {
            let e = one_error(&format!(". IN DNSKEY {flags} 3 13 {key}"));
            assert!(e.contains(says), "{flags}: {e}");
            assert!(e.contains(":1: "), "{e}");
        }
        assert!(parse(&format!(". IN DNSKEY 257 3 13 {key}")).is_ok());
    }

    #[test]
    fn malformed_records_are_refused_all_at_once() {
        let key = B64.encode(p256_key(3));
        let text = [
            format!(". IN DNSKEY 257 2 13 {key}"),
            format!(". IN DNSKEY 257 3 99 {key}"),
            ". IN DNSKEY 257 3 13 !!notbase64".to_string(),
            ". IN DNSKEY 257 3".to_string(),
            format!(". CH DNSKEY 257 3 13 {key}"),
            format!(". IN RRSIG DNSKEY 13 0 3600 {key}"),
            format!(". IN DS 1 13 1 {}", "00".repeat(20)),
            format!(". IN DS 1 13 3 {}", "00".repeat(32)),
            format!(". IN DS 1 13 2 {}", "00".repeat(31)),
            ". IN DS 1 13 2 xyz".to_string(),
            format!(". IN DS 70000 13 2 {}", "00".repeat(32)),
            format!(". IN DNSKEY ( 257 3 13 {key}"),
        ]
        .join("\n");
        let e = parse(&text).expect_err("refused");
        // The unclosed `(` stops the reading; it is reported alone.
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains(":12: `(` is never closed"), "{e:?}");
        let text = text.lines().take(11).collect::<Vec<_>>().join("\n");
        let e = parse(&text).expect_err("refused");
        let wants = [
            "protocol is `2`",
            "algorithm 99 is not supported",
            "not base64",
            "expected `DNSKEY flags 3 algorithm key`",
            "found `CH`",
            "found `RRSIG`",
            "SHA-1) is too weak",
            "digest type `3` is not known",
            "31 bytes long",
            "not hexadecimal",
            "key tag `70000`",
        ];
        assert_eq!(e.len(), wants.len(), "{e:#?}");
        for (n, (got, want)) in e.iter().zip(wants).enumerate() {
            assert!(got.contains(&format!(":{}: ", n + 1)), "{got}");
            assert!(got.contains(want), "{got} (wanted {want})");
        }
        assert!(one_error("; nothing\n").contains("no DNSKEY or DS record"));
        assert!(one_error("<?xml version=\"1.0\"?>\n<TrustAnchor>").contains("root-anchors.xml"));
    }

    #[test]
    fn iana_ds_matches_the_real_root_ksk() {
        let file = parse(IANA_DS_20326).unwrap();
        assert!(file.has_ds());
        // The DNSKEY RRset as fetched: the KSK among other keys.
        let zsk = DNSKEY::with_flags(256, PublicKeyBuf::new(vec![3; 260], Algorithm::RSASHA256));
        let other = DNSKEY::with_flags(257, TrustAnchors::default().get(1).unwrap().clone());
        let anchors = file
            .anchors(&[zsk.clone(), other.clone(), root_ksk_20326()])
            .unwrap();
        assert_eq!(anchors.len(), 1);
        assert!(anchors.contains(root_ksk_20326().public_key()));
        assert!(!anchors.contains(other.public_key()));
        // Without the key in the RRset: a start error that names the DS.
        let e = refused(file.anchors(&[zsk, other]));
        assert!(e.contains("line 1 (key tag 20326)"), "{e}");
        assert!(e.contains("38696 (flags 257)"), "{e}");
        assert!(e.contains("does not fall back"), "{e}");
        let e = refused(file.anchors(&[]));
        assert!(e.contains("key tags: none"), "{e}");
    }

    #[test]
    fn ds_digests_computed_independently_match() {
        let key = p256_key(4);
        let tag = key_tag(257, 13, &key);
        let sha256 = ds_digest(&ring::digest::SHA256, 257, 13, &key);
        let sha384 = ds_digest(&ring::digest::SHA384, 257, 13, &key);
        let fetched = DNSKEY::with_flags(
            257,
            PublicKeyBuf::new(key.clone(), Algorithm::ECDSAP256SHA256),
        );
        assert_eq!(fetched.calculate_key_tag().unwrap(), tag);
        for text in [
            format!(". IN DS {tag} 13 2 {sha256}"),
            format!(". 86400 IN DS {tag} 13 2 {}", sha256.to_lowercase()),
            format!(". IN DS {tag} 13 4 {sha384}"),
            format!(
                ". IN DS ( {tag} 13 2\n  {} {} )",
                &sha256[..32],
                &sha256[32..]
            ),
        ] {
            let anchors = parse(&text)
                .unwrap()
                .anchors(std::slice::from_ref(&fetched));
            let anchors = anchors.unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(anchors.contains(fetched.public_key()), "{text}");
        }
        // What does not match: another digest, another tag or algorithm,
        // the same key fetched as a ZSK or revoked.
        let mut wrong = sha256.clone().into_bytes();
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        for (text, keys) in [
            (format!(". IN DS {tag} 13 2 {wrong}"), vec![fetched.clone()]),
            (
                format!(". IN DS {} 13 2 {sha256}", tag.wrapping_add(1)),
                vec![fetched.clone()],
            ),
            (format!(". IN DS {tag} 8 2 {sha256}"), vec![fetched.clone()]),
            (
                format!(
                    ". IN DS {} 13 2 {}",
                    key_tag(256, 13, &key),
                    ds_digest(&ring::digest::SHA256, 256, 13, &key)
                ),
                vec![DNSKEY::with_flags(256, fetched.public_key().clone())],
            ),
            (
                format!(
                    ". IN DS {} 13 2 {}",
                    key_tag(385, 13, &key),
                    ds_digest(&ring::digest::SHA256, 385, 13, &key)
                ),
                vec![DNSKEY::with_flags(385, fetched.public_key().clone())],
            ),
        ] {
            let e = refused(parse(&text).unwrap().anchors(&keys));
            assert!(e.contains("matches the DS record at line 1"), "{e}");
        }
    }

    #[test]
    fn dnskey_and_ds_lines_mix_and_an_unmatched_ds_is_not_fatal() {
        let key = p256_key(5);
        let fetched = DNSKEY::with_flags(
            257,
            PublicKeyBuf::new(key.clone(), Algorithm::ECDSAP256SHA256),
        );
        let written = B64.encode(p256_key(6));
        let text = format!(
            ". IN DNSKEY 257 3 13 {written}\n{IANA_DS_20326}\n. IN DS {} 13 2 {}\n",
            key_tag(257, 13, &key),
            ds_digest(&ring::digest::SHA256, 257, 13, &key)
        );
        let anchors = parse(&text).unwrap().anchors(&[fetched.clone()]).unwrap();
        assert_eq!(anchors.len(), 2);
        assert!(anchors.contains(fetched.public_key()));
        assert!(anchors.contains(&PublicKeyBuf::new(p256_key(6), Algorithm::ECDSAP256SHA256)));
    }
}

/// The local part as RFC 7929 section 3 hashes it: without the enclosing
/// quotes and quoting backslashes of a quoted local part, in Unicode NFC.
/// (Case is kept: the RFC hashes the local part as given.)
fn openpgpkey_local(local: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let unquoted = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => local.to_string(),
    };
    unquoted.nfc().collect()
}

#[cfg(test)]
mod openpgpkey_tests {
    use super::openpgpkey_local;

    #[test]
    fn the_local_part_is_unquoted_and_nfc() {
        assert_eq!(openpgpkey_local("hugh"), "hugh");
        assert_eq!(openpgpkey_local("Hugh"), "Hugh");
        assert_eq!(openpgpkey_local("\"john smith\""), "john smith");
        assert_eq!(openpgpkey_local("\"a\\\"b\""), "a\"b");
        // e + combining acute (U+0301) is hashed as precomposed é.
        assert_eq!(openpgpkey_local("jose\u{301}"), "jos\u{e9}");
        // RFC 7929 section 3's example: hugh@example.com.
        let h = ring::digest::digest(&ring::digest::SHA256, openpgpkey_local("hugh").as_bytes());
        assert_eq!(
            hex::encode(&h.as_ref()[..28]),
            "c93f1e400f26708f98cb19d936620da35eec8f72e57f9eec01c1afd6"
        );
    }
}
