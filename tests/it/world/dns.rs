//! A tiny authoritative-style DNS server for tests, speaking UDP and TCP on the same
//! `127.0.0.1:<port>`, answering from a shared, mutable [`Zone`].
//!
//! The zone stores RRsets (`name -> type -> records`). The server is authoritative for
//! the root zone `.` and everything below, and is DNSSEC-signed by default (see
//! [`dnssec`]): queries with the EDNS DO bit get RRSIGs, NSEC denial and the root
//! DNSKEY RRset; queries without DO get exactly the unsigned answers they always got.
//! [`Zone::add_insecure_delegation`], [`Zone::set_bogus`] and [`Zone::set_expired`]
//! make parts of the tree Insecure / Bogus; [`DnsServer::write_trust_anchor`] exports
//! the root KSK and [`DnsServer::validating_resolver`] builds a validating resolver.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

#[path = "dnssec.rs"]
pub mod dnssec;

use dnssec::{RootKeys, SigMode};

/// How the server reacts to queries for a name (or a name and type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Answer from the zone.
    #[default]
    Normal,
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Never answer (the query is dropped; the client times out).
    Timeout,
    /// Answer normally after a delay.
    Delay(Duration),
    /// Over UDP, always answer with an empty truncated (TC) response, forcing TCP.
    /// Over TCP, answer normally.
    TruncateUdp,
}

/// Parses a domain name for the zone: lowercase, fully qualified. Panics when invalid.
pub fn name(s: &str) -> Name {
    try_name(s).unwrap_or_else(|e| panic!("invalid DNS name {s:?}: {e}"))
}

pub fn try_name(s: &str) -> Result<Name> {
    let mut n = Name::from_ascii(s).with_context(|| format!("bad name {s:?}"))?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

#[derive(Debug, Default)]
struct ZoneData {
    /// RRsets by owner name (lowercase FQDN) and type.
    rrsets: BTreeMap<Name, BTreeMap<RecordType, Vec<Record>>>,
    /// Behaviour by name, and optionally type (type-specific wins).
    behaviours: HashMap<(Name, Option<RecordType>), Behaviour>,
    default_ttl: u32,
    /// DNSSEC off (no RRSIG/NSEC/DNSKEY even for DO queries).
    unsigned: bool,
    /// Insecure delegation points: the subtree is served unsigned; the root proves no DS.
    insecure: BTreeSet<Name>,
    /// Subtrees whose signatures are corrupted.
    bogus: BTreeSet<Name>,
    /// Subtrees whose signatures have expired.
    expired: BTreeSet<Name>,
    /// Forged RRsets served instead of the real ones to queries without the
    /// DO bit (a resolver that does not validate), as an attacker on the
    /// path could: validating queries still get the signed truth.
    lies: HashMap<(Name, RecordType), Vec<Record>>,
}

impl ZoneData {
    /// Whether `n` belongs to the signed root zone (not at/below an insecure delegation).
    fn in_signed_zone(&self, n: &Name) -> bool {
        !self.unsigned && !self.insecure.iter().any(|d| d.zone_of(n))
    }

    fn sig_mode(&self, n: &Name) -> SigMode {
        if self.bogus.iter().any(|b| b.zone_of(n)) {
            SigMode::Corrupt
        } else if self.expired.iter().any(|b| b.zone_of(n)) {
            SigMode::Expired
        } else {
            SigMode::Valid
        }
    }

    fn root_soa(&self) -> Record {
        let soa = SOA::new(
            name("ns.root.test"),
            name("hostmaster.root.test"),
            1,
            3600,
            600,
            86400,
            self.default_ttl,
        );
        Record::from_rdata(Name::root(), self.default_ttl, RData::SOA(soa))
    }

    /// The RRsets at `n` as served: the stored ones plus, at the root of a signed zone,
    /// a synthetic SOA (unless one was added) and the DNSKEY RRset.
    fn view(&self, n: &Name, keys: &RootKeys) -> Option<BTreeMap<RecordType, Vec<Record>>> {
        let stored = self.rrsets.get(n).cloned();
        if self.unsigned || !n.is_root() {
            return stored;
        }
        let mut types = stored.unwrap_or_default();
        types
            .entry(RecordType::SOA)
            .or_insert_with(|| vec![self.root_soa()]);
        types.insert(RecordType::DNSKEY, keys.dnskey_rrset(self.default_ttl));
        Some(types)
    }

    fn has_descendants(&self, n: &Name) -> bool {
        self.rrsets.keys().any(|k| k != n && n.zone_of(k))
    }

    /// The signed root zone's NSEC chain: (owner, types at owner), in canonical order.
    fn nsec_chain(&self) -> Vec<(Name, Vec<RecordType>)> {
        let mut owners: BTreeMap<Name, BTreeSet<RecordType>> = BTreeMap::new();
        let root = owners.entry(Name::root()).or_default();
        root.extend([RecordType::SOA, RecordType::DNSKEY]);
        for (n, types) in &self.rrsets {
            if self.in_signed_zone(n) {
                owners.entry(n.clone()).or_default().extend(types.keys());
            }
        }
        for d in &self.insecure {
            // the parent side of a delegation: NS only (no DS)
            if !self.insecure.iter().any(|o| o != d && o.zone_of(d)) {
                owners.entry(d.clone()).or_default().insert(RecordType::NS);
            }
        }
        owners
            .into_iter()
            .map(|(n, t)| (n, t.into_iter().collect()))
            .collect()
    }
}

/// A shared, mutable table of DNS records. Cloning gives another handle to the same
/// table, so tests can change records while a [`DnsServer`] is serving it.
///
/// All `add_*` methods append to the RRset (duplicates of identical rdata are ignored)
/// and return `&Self` for chaining. Names are case-insensitive; a trailing dot is optional.
#[derive(Clone, Debug)]
pub struct Zone {
    inner: Arc<Mutex<ZoneData>>,
    keys: Arc<RootKeys>,
}

impl Default for Zone {
    fn default() -> Self {
        Self::new()
    }
}

impl Zone {
    /// An empty zone; records added get TTL 0 (nothing cached by resolvers) unless
    /// [`Zone::set_default_ttl`] is used. DNSSEC-signed under fresh root keys (signatures
    /// are only sent to queries with the DO bit).
    pub fn new() -> Self {
        Zone {
            inner: Arc::new(Mutex::new(ZoneData::default())),
            keys: Arc::new(RootKeys::generate()),
        }
    }

    /// An empty zone that never signs: DO queries get no RRSIG/NSEC/DNSKEY (a validating
    /// resolver then finds everything Bogus, as with a DNSSEC-unaware server).
    pub fn new_unsigned() -> Self {
        let z = Self::new();
        z.set_signed(false);
        z
    }

    /// Turns DNSSEC signing on (default) or off.
    pub fn set_signed(&self, signed: bool) -> &Self {
        self.lock().unsigned = !signed;
        self
    }

    pub fn is_signed(&self) -> bool {
        !self.lock().unsigned
    }

    /// The root keys (KSK = trust anchor, ZSK).
    pub fn root_keys(&self) -> &RootKeys {
        &self.keys
    }

    /// Trust anchor file contents (root KSK as a DNSKEY line); see [`dnssec`] for the format.
    pub fn trust_anchor_text(&self) -> String {
        self.keys.trust_anchor_text()
    }

    /// Makes `apex` an insecure delegation: it and everything below are served unsigned
    /// (their own zone, with an SOA at `apex`, added unless present), and a DS query for
    /// `apex` gets a signed NSEC from the root showing there is no DS, so a validating
    /// resolver classifies answers there as Insecure. Records can be added before or after.
    pub fn add_insecure_delegation(&self, apex: &str) -> &Self {
        let n = name(apex);
        self.lock().insecure.insert(n.clone());
        if self.records(apex, RecordType::SOA).is_empty() {
            self.add_soa(apex);
        }
        self
    }

    /// Undoes [`Zone::add_insecure_delegation`] (the SOA added at `apex` stays).
    pub fn remove_insecure_delegation(&self, apex: &str) -> &Self {
        self.lock().insecure.remove(&name(apex));
        self
    }

    /// `owner` and every name below it get corrupted RRSIGs (answers and denials there
    /// validate as Bogus). `bogus = false` undoes it.
    pub fn set_bogus(&self, owner: &str, bogus: bool) -> &Self {
        let n = name(owner);
        let mut z = self.lock();
        if bogus {
            z.bogus.insert(n);
        } else {
            z.bogus.remove(&n);
        }
        drop(z);
        self
    }

    /// `owner` and every name below it get RRSIGs that expired a day ago (Bogus to a
    /// validator). `expired = false` undoes it.
    pub fn set_expired(&self, owner: &str, expired: bool) -> &Self {
        let n = name(owner);
        let mut z = self.lock();
        if expired {
            z.expired.insert(n);
        } else {
            z.expired.remove(&n);
        }
        drop(z);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ZoneData> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// TTL for records added by the `add_*` helpers from now on.
    pub fn set_default_ttl(&self, ttl: u32) -> &Self {
        self.lock().default_ttl = ttl;
        self
    }

    pub fn default_ttl(&self) -> u32 {
        self.lock().default_ttl
    }

    fn add_rdata(&self, owner: &str, rdata: RData) -> &Self {
        let ttl = self.default_ttl();
        self.add_record(Record::from_rdata(name(owner), ttl, rdata))
    }

    /// Adds any record (owner name is lowercased and made fully qualified).
    pub fn add_record(&self, mut record: Record) -> &Self {
        let mut owner = record.name().clone();
        owner.set_fqdn(true);
        let owner = owner.to_lowercase();
        record.set_name(owner.clone());
        record.set_dns_class(DNSClass::IN);
        let rtype = record.record_type();
        let mut z = self.lock();
        let set = z.rrsets.entry(owner).or_default().entry(rtype).or_default();
        if !set.iter().any(|r| r.data() == record.data()) {
            set.push(record);
        }
        drop(z);
        self
    }

    /// `domain MX pref host`. Use host "." for a null MX.
    pub fn add_mx(&self, domain: &str, pref: u16, host: &str) -> &Self {
        self.add_rdata(domain, RData::MX(MX::new(pref, name(host))))
    }

    pub fn add_a(&self, host: &str, ip: Ipv4Addr) -> &Self {
        self.add_rdata(host, RData::A(A(ip)))
    }

    pub fn add_aaaa(&self, host: &str, ip: Ipv6Addr) -> &Self {
        self.add_rdata(host, RData::AAAA(AAAA(ip)))
    }

    /// One TXT record; text longer than 255 bytes is split into several strings.
    pub fn add_txt(&self, owner: &str, text: &str) -> &Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while rest.len() > 255 {
            let mut cut = 255;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            parts.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        parts.push(rest.to_string());
        self.add_rdata(owner, RData::TXT(TXT::new(parts)))
    }

    pub fn add_cname(&self, owner: &str, target: &str) -> &Self {
        self.add_rdata(owner, RData::CNAME(CNAME(name(target))))
    }

    /// `owner TLSA usage selector matching data` (e.g. `_25._tcp.mx.example.test 3 1 1 <sha256>`).
    pub fn add_tlsa(
        &self,
        owner: &str,
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    ) -> &Self {
        self.add_rdata(
            owner,
            RData::TLSA(TLSA::new(
                usage.into(),
                selector.into(),
                matching.into(),
                data,
            )),
        )
    }

    /// An SOA at `apex`; negative answers for names under it then carry this SOA in the
    /// authority section (minimum = the default TTL).
    pub fn add_soa(&self, apex: &str) -> &Self {
        let min = self.default_ttl();
        let soa = SOA::new(
            name(&format!("ns.{}", apex.trim_end_matches('.'))),
            name(&format!("hostmaster.{}", apex.trim_end_matches('.'))),
            1,
            3600,
            600,
            86400,
            min,
        );
        self.add_rdata(apex, RData::SOA(soa))
    }

    /// Removes every record of `owner` (the name becomes NXDOMAIN unless it has
    /// descendants).
    pub fn remove_name(&self, owner: &str) -> &Self {
        self.lock().rrsets.remove(&name(owner));
        self
    }

    /// Removes the RRset `owner`/`rtype`.
    pub fn remove_rrset(&self, owner: &str, rtype: RecordType) -> &Self {
        let n = name(owner);
        let mut z = self.lock();
        if let Some(types) = z.rrsets.get_mut(&n) {
            types.remove(&rtype);
            if types.is_empty() {
                z.rrsets.remove(&n);
            }
        }
        drop(z);
        self
    }

    /// Removes all records and behaviours (and insecure / bogus / expired marks).
    pub fn clear(&self) -> &Self {
        let mut z = self.lock();
        z.rrsets.clear();
        z.behaviours.clear();
        z.insecure.clear();
        z.bogus.clear();
        z.expired.clear();
        drop(z);
        self
    }

    /// Answers queries for `owner` without the DO bit (non-validating
    /// resolvers) with `rdata` instead of the real RRset; queries asking for
    /// DNSSEC records still get the real, signed answer.
    pub fn lie_to_plain_queries(&self, owner: &str, rdata: RData) -> &Self {
        let n = name(owner);
        let rtype = rdata.record_type();
        let mut z = self.lock();
        let ttl = z.default_ttl;
        z.lies
            .entry((n.clone(), rtype))
            .or_default()
            .push(Record::from_rdata(n, ttl, rdata));
        drop(z);
        self
    }

    /// Failure mode for every query type at `owner`.
    pub fn set_behaviour(&self, owner: &str, b: Behaviour) -> &Self {
        self.set_behaviour_inner(name(owner), None, b)
    }

    /// Failure mode for one query type at `owner` (overrides the name-wide one).
    pub fn set_behaviour_for(&self, owner: &str, rtype: RecordType, b: Behaviour) -> &Self {
        self.set_behaviour_inner(name(owner), Some(rtype), b)
    }

    fn set_behaviour_inner(&self, n: Name, t: Option<RecordType>, b: Behaviour) -> &Self {
        let mut z = self.lock();
        if b == Behaviour::Normal {
            z.behaviours.remove(&(n, t));
        } else {
            z.behaviours.insert((n, t), b);
        }
        drop(z);
        self
    }

    fn behaviour(&self, n: &Name, t: RecordType) -> Behaviour {
        let z = self.lock();
        z.behaviours
            .get(&(n.clone(), Some(t)))
            .or_else(|| z.behaviours.get(&(n.clone(), None)))
            .copied()
            .unwrap_or_default()
    }

    /// The RRset `owner`/`rtype` (empty if none).
    pub fn records(&self, owner: &str, rtype: RecordType) -> Vec<Record> {
        self.lock()
            .rrsets
            .get(&name(owner))
            .and_then(|t| t.get(&rtype))
            .cloned()
            .unwrap_or_default()
    }

    /// All RRsets, in canonical-ish (BTreeMap) order: `(owner, type, records)`.
    pub fn rrsets(&self) -> Vec<(Name, RecordType, Vec<Record>)> {
        let z = self.lock();
        z.rrsets
            .iter()
            .flat_map(|(n, types)| types.iter().map(move |(t, rs)| (n.clone(), *t, rs.clone())))
            .collect()
    }

    /// Builds the answer for one question: (rcode, answers, authority). With `dnssec_ok`
    /// (and a signed zone) RRSIGs and NSEC denial are added.
    fn lookup(
        &self,
        qname: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let z = self.lock();
        let keys = &*self.keys;
        let sign = dnssec_ok && !z.unsigned;
        let qname = qname.to_lowercase();
        if !dnssec_ok && let Some(forged) = z.lies.get(&(qname.clone(), qtype)) {
            return (ResponseCode::NoError, forged.clone(), Vec::new());
        }

        // DS at an insecure delegation point: answered by the parent (the root), which
        // proves with NSEC that there is no DS.
        if !z.unsigned && qtype == RecordType::DS && z.insecure.contains(&qname) {
            let mut authority = vec![z.root_soa()];
            if sign {
                let mode = z.sig_mode(&qname);
                authority.push(keys.sign(&authority[..1], mode));
                authority.extend(nsec_proof(&z, keys, &qname, mode));
            }
            return (ResponseCode::NoError, vec![], authority);
        }

        let mut answer_sets: Vec<Vec<Record>> = Vec::new();
        let mut current = qname.clone();
        let mut rcode = ResponseCode::NoError;
        let mut found = false;
        for _ in 0..16 {
            match z.view(&current, keys) {
                None => {
                    if !z.has_descendants(&current) {
                        rcode = ResponseCode::NXDomain;
                    }
                    break;
                }
                Some(types) => {
                    if qtype == RecordType::ANY {
                        answer_sets.extend(types.into_values());
                        found = !answer_sets.is_empty();
                        break;
                    }
                    if let Some(rs) = types.get(&qtype) {
                        answer_sets.push(rs.clone());
                        found = true;
                        break;
                    }
                    if qtype != RecordType::CNAME
                        && let Some(cn) = types.get(&RecordType::CNAME)
                        && let Some(first) = cn.first()
                    {
                        answer_sets.push(cn.clone());
                        match first.data() {
                            RData::CNAME(CNAME(target)) => {
                                current = target.to_lowercase();
                                continue;
                            }
                            _ => break,
                        }
                    }
                    break;
                }
            }
        }

        let mut answers = Vec::new();
        for set in &answer_sets {
            answers.extend(set.iter().cloned());
            if sign && z.in_signed_zone(set[0].name()) {
                answers.push(keys.sign(set, z.sig_mode(set[0].name())));
            }
        }

        let mut authority = Vec::new();
        if !found || rcode == ResponseCode::NXDomain {
            // closest enclosing SOA of the final name (the synthetic root SOA only counts
            // for DNSSEC queries, so plain answers stay as they were)
            let mut n = current.clone();
            let soa = loop {
                let soa = if sign {
                    z.view(&n, keys)
                        .and_then(|mut t| t.remove(&RecordType::SOA))
                } else {
                    z.rrsets
                        .get(&n)
                        .and_then(|t| t.get(&RecordType::SOA))
                        .cloned()
                };
                if soa.is_some() || n.is_root() {
                    break soa;
                }
                n = n.base_name();
            };
            if let Some(soa) = soa {
                authority.extend(soa.iter().cloned());
                if sign && z.in_signed_zone(&current) {
                    let mode = z.sig_mode(&current).max(z.sig_mode(&n));
                    authority.push(keys.sign(&soa, mode));
                    authority.extend(nsec_proof(&z, keys, &current, mode));
                }
            }
        }
        (rcode, answers, authority)
    }
}

/// Signed NSEC records denying `qname` (or its type, if it exists): the NSEC matching or
/// covering `qname`, the one covering the wildcard at the closest encloser, and (for
/// hickory's validator, which checks it) the one matching or covering `qname`'s parent.
fn nsec_proof(z: &ZoneData, keys: &RootKeys, qname: &Name, mode: SigMode) -> Vec<Record> {
    let chain = z.nsec_chain();
    // index of the NSEC matching or covering `n` (greatest owner <= n; "." always is)
    let find = |n: &Name| chain.iter().rposition(|(o, _)| o <= n).unwrap_or(0);
    let mut idx = vec![find(qname)];
    if chain[idx[0]].0 == *qname {
        // NODATA at an existing name: its own NSEC shows the type is absent
        return nsec_records(z, keys, &chain, &idx, mode);
    }
    // closest encloser: deepest ancestor that exists (owns records or has descendants)
    let mut ce = qname.clone();
    while !ce.is_root() {
        if z.rrsets.contains_key(&ce) || (ce != *qname && z.has_descendants(&ce)) {
            break;
        }
        ce = ce.base_name();
    }
    if let Ok(wild) = Name::from_ascii("*").and_then(|w| w.append_domain(&ce)) {
        idx.push(find(&wild));
    }
    if !qname.is_root() {
        idx.push(find(&qname.base_name()));
    }
    idx.sort_unstable();
    idx.dedup();
    nsec_records(z, keys, &chain, &idx, mode)
}

fn nsec_records(
    z: &ZoneData,
    keys: &RootKeys,
    chain: &[(Name, Vec<RecordType>)],
    idx: &[usize],
    mode: SigMode,
) -> Vec<Record> {
    let ttl = z.default_ttl;
    let mut out = Vec::new();
    for &i in idx {
        let (owner, types) = &chain[i];
        let next = chain
            .get(i + 1)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(Name::root);
        let rec = dnssec::nsec_record(owner.clone(), next, types, ttl);
        let sig = keys.sign(std::slice::from_ref(&rec), mode);
        out.push(rec);
        out.push(sig);
    }
    out
}

/// One query seen by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryLog {
    /// Lowercase FQDN, with trailing dot.
    pub name: String,
    pub rtype: RecordType,
    pub tcp: bool,
}

#[derive(Debug, Default)]
struct Stats {
    log: Vec<QueryLog>,
}

/// A running DNS server. Dropping it stops the server.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Zone,
    stats: Arc<Mutex<Stats>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Starts serving `zone` on UDP and TCP `127.0.0.1:<random port>`. Panics on failure.
    pub async fn start(zone: Zone) -> DnsServer {
        Self::try_start(zone)
            .await
            .expect("starting test DNS server")
    }

    pub async fn try_start(zone: Zone) -> Result<DnsServer> {
        let mut last_err = None;
        for _ in 0..50 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => return Ok(Self::spawn(zone, udp, tcp, addr)),
                Err(e) => last_err = Some(e),
            }
        }
        bail!("could not bind UDP+TCP on one port: {last_err:?}")
    }

    /// Starts on a given port (UDP and TCP).
    pub async fn start_on(zone: Zone, port: u16) -> Result<DnsServer> {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr).await?;
        Ok(Self::spawn(zone, udp, tcp, addr))
    }

    fn spawn(zone: Zone, udp: UdpSocket, tcp: TcpListener, addr: SocketAddr) -> DnsServer {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let udp_task = tokio::spawn(serve_udp(Arc::new(udp), zone.clone(), stats.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone.clone(), stats.clone()));
        DnsServer {
            addr,
            zone,
            stats,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// The address (same for UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Another handle to the served zone.
    pub fn zone(&self) -> Zone {
        self.zone.clone()
    }

    /// Shortcut for `zone().set_behaviour(..)`.
    pub fn set_behaviour(&self, owner: &str, b: Behaviour) {
        self.zone.set_behaviour(owner, b);
    }

    /// Shortcut for `zone().set_behaviour_for(..)`.
    pub fn set_behaviour_for(&self, owner: &str, rtype: RecordType, b: Behaviour) {
        self.zone.set_behaviour_for(owner, rtype, b);
    }

    /// Number of (parseable) queries received so far, UDP and TCP.
    pub fn queries(&self) -> usize {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .len()
    }

    /// Every query received so far, in order.
    pub fn query_log(&self) -> Vec<QueryLog> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clone()
    }

    /// Number of queries for `owner`/`rtype`.
    pub fn queries_for(&self, owner: &str, rtype: RecordType) -> usize {
        let n = name(owner).to_ascii();
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .iter()
            .filter(|q| q.name == n && q.rtype == rtype)
            .count()
    }

    /// Forgets the query log.
    pub fn reset_queries(&self) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clear();
    }

    /// A hickory resolver using only this server (UDP, falling back to TCP on
    /// truncation), without cache (`cache_size` 0), 2 s timeout, 1 attempt.
    pub fn resolver(&self) -> hickory_resolver::TokioResolver {
        self.resolver_builder().build()
    }

    fn resolver_builder(
        &self,
    ) -> hickory_resolver::ResolverBuilder<hickory_resolver::name_server::TokioConnectionProvider>
    {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
        let group =
            NameServerConfigGroup::from_ips_clear(&[self.addr.ip()], self.addr.port(), true);
        let cfg = ResolverConfig::from_parts(None, vec![], group);
        let mut b = hickory_resolver::TokioResolver::builder_with_config(
            cfg,
            hickory_resolver::name_server::TokioConnectionProvider::default(),
        );
        let opts = b.options_mut();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        b
    }

    /// Like [`DnsServer::resolver`] but validating (`validate = true`) with the trust
    /// anchors in `anchor_file` (format: see [`dnssec`]), loaded the way sealgate must:
    /// hickory-resolver 0.25 ignores `ResolverOpts::trust_anchor`, so the file is parsed
    /// and passed to `ResolverBuilder::with_trust_anchor`.
    pub fn validating_resolver(
        &self,
        anchor_file: &Path,
    ) -> Result<hickory_resolver::TokioResolver> {
        let anchors = dnssec::load_trust_anchor(anchor_file)?;
        let mut b = self.resolver_builder();
        b.options_mut().validate = true;
        b.options_mut().trust_anchor = Some(anchor_file.to_path_buf());
        Ok(b.with_trust_anchor(Arc::new(anchors)).build())
    }

    /// Writes the trust anchor (the root KSK, one `. 3600 IN DNSKEY 257 3 13 <base64>`
    /// line; see [`dnssec`]) to `dir/trust-anchor.key` and returns its path, for
    /// sealgate's `[dns] trust_anchor`.
    pub fn write_trust_anchor(&self, dir: &Path) -> PathBuf {
        let path = dir.join("trust-anchor.key");
        std::fs::write(&path, self.zone.trust_anchor_text()).expect("writing trust anchor");
        path
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, zone: Zone, stats: Arc<Mutex<Stats>>) {
    let mut children = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        while children.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                // e.g. ICMP port unreachable reported on Linux; keep serving
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let req = buf[..n].to_vec();
        let (sock, zone, stats) = (sock.clone(), zone.clone(), stats.clone());
        children.spawn(async move {
            if let Some(resp) = handle(&req, false, &zone, &stats).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, zone: Zone, stats: Arc<Mutex<Stats>>) {
    let mut children = JoinSet::new();
    loop {
        while children.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let (zone, stats) = (zone.clone(), stats.clone());
        children.spawn(async move {
            let _ = serve_tcp_conn(stream, zone, stats).await;
        });
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Zone, stats: Arc<Mutex<Stats>>) -> Result<()> {
    loop {
        let len = match stream.read_u16().await {
            Ok(l) => l as usize,
            Err(_) => return Ok(()),
        };
        let mut req = vec![0u8; len];
        stream.read_exact(&mut req).await?;
        if let Some(resp) = handle(&req, true, &zone, &stats).await {
            let mut out = Vec::with_capacity(resp.len() + 2);
            out.extend_from_slice(&(resp.len() as u16).to_be_bytes());
            out.extend_from_slice(&resp);
            stream.write_all(&out).await?;
        }
    }
}

/// Handles one wire-format query; `None` means "send nothing".
async fn handle(req: &[u8], tcp: bool, zone: &Zone, stats: &Mutex<Stats>) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(req) {
        Ok(m) => m,
        Err(_) => {
            if req.len() < 12 {
                return None;
            }
            let id = u16::from_be_bytes([req[0], req[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let mut resp = Message::new();
    resp.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_authoritative(true)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(msg.checking_disabled());
    resp.add_queries(msg.queries().iter().cloned());
    let edns = msg.extensions().is_some();
    let dnssec_ok = msg
        .extensions()
        .as_ref()
        .is_some_and(|e| e.flags().dnssec_ok);
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232)
            .set_version(0)
            .set_dnssec_ok(dnssec_ok);
        resp.set_edns(e);
    }
    if msg.op_code() != OpCode::Query {
        resp.set_response_code(ResponseCode::NotImp);
        return resp.to_vec().ok();
    }
    if msg.queries().len() != 1 {
        resp.set_response_code(ResponseCode::FormErr);
        return resp.to_vec().ok();
    }
    let q = &msg.queries()[0];
    let qname = q.name().to_lowercase();
    let mut qname_fqdn = qname.clone();
    qname_fqdn.set_fqdn(true);
    let qtype = q.query_type();
    stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .log
        .push(QueryLog {
            name: qname_fqdn.to_ascii(),
            rtype: qtype,
            tcp,
        });

    match zone.behaviour(&qname_fqdn, qtype) {
        Behaviour::Normal => {}
        Behaviour::ServFail => {
            resp.set_response_code(ResponseCode::ServFail);
            return resp.to_vec().ok();
        }
        Behaviour::Refused => {
            resp.set_response_code(ResponseCode::Refused);
            return resp.to_vec().ok();
        }
        Behaviour::Timeout => return None,
        Behaviour::Delay(d) => tokio::time::sleep(d).await,
        Behaviour::TruncateUdp => {
            if !tcp {
                return resp.truncate().to_vec().ok();
            }
        }
    }

    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        resp.set_response_code(ResponseCode::Refused);
        return resp.to_vec().ok();
    }

    let (rcode, answers, authority) = zone.lookup(&qname_fqdn, qtype, dnssec_ok);
    resp.set_response_code(rcode);
    resp.add_answers(answers);
    resp.add_name_servers(authority);
    let bytes = resp.to_vec().ok()?;
    if tcp {
        return Some(bytes);
    }
    let limit = if edns {
        (msg.max_payload() as usize).clamp(512, 1232)
    } else {
        512
    };
    if bytes.len() > limit {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// Like [`build_query`] with EDNS and the DO bit (asks for DNSSEC records).
pub fn build_query_dnssec(owner: &str, rtype: RecordType) -> Message {
    let mut m = build_query(owner, rtype, true);
    if let Some(e) = m.extensions_mut().as_mut() {
        e.set_dnssec_ok(true);
    }
    m
}

/// Builds a query message (RD set, random-ish id) for `owner`/`rtype`, optionally with EDNS.
pub fn build_query(owner: &str, rtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new();
    m.set_id(fastrand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(hickory_proto::op::Query::query(name(owner), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232).set_version(0);
        m.set_edns(e);
    }
    m
}

fn fastrand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0x1234);
    NEXT.fetch_add(0x3b1, Ordering::Relaxed)
}

/// Sends `query` over UDP to `server` and decodes the answer (2 s timeout).
pub async fn query_udp(server: SocketAddr, query: &Message) -> Result<Message> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    sock.send_to(&query.to_vec()?, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .context("UDP DNS query timed out")??;
    Ok(Message::from_vec(&buf[..n])?)
}

/// Sends `query` over TCP to `server` and decodes the answer (2 s timeout).
pub async fn query_tcp(server: SocketAddr, query: &Message) -> Result<Message> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = TcpStream::connect(server).await?;
        let bytes = query.to_vec()?;
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        s.write_all(&out).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok(Message::from_vec(&buf)?)
    })
    .await
    .context("TCP DNS query timed out")?
}
