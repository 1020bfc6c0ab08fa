//! A tiny authoritative-style DNS server for tests, speaking UDP and TCP on the same
//! `127.0.0.1:<port>`, answering from a shared, mutable [`Zone`].
//!
//! The zone stores RRsets (`name -> type -> records`) so a later DNSSEC signer can walk
//! [`Zone::rrsets`] and add RRSIG/NSEC records without changing the storage.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

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
}

/// A shared, mutable table of DNS records. Cloning gives another handle to the same
/// table, so tests can change records while a [`DnsServer`] is serving it.
///
/// All `add_*` methods append to the RRset (duplicates of identical rdata are ignored)
/// and return `&Self` for chaining. Names are case-insensitive; a trailing dot is optional.
#[derive(Clone, Debug)]
pub struct Zone {
    inner: Arc<Mutex<ZoneData>>,
}

impl Default for Zone {
    fn default() -> Self {
        Self::new()
    }
}

impl Zone {
    /// An empty zone; records added get TTL 0 (nothing cached by resolvers) unless
    /// [`Zone::set_default_ttl`] is used.
    pub fn new() -> Self {
        Zone {
            inner: Arc::new(Mutex::new(ZoneData::default())),
        }
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

    /// Removes all records and behaviours.
    pub fn clear(&self) -> &Self {
        let mut z = self.lock();
        z.rrsets.clear();
        z.behaviours.clear();
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

    /// Builds the answer for one question: (rcode, answers, authority).
    fn lookup(&self, qname: &Name, qtype: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let z = self.lock();
        let mut answers: Vec<Record> = Vec::new();
        let mut current = qname.to_lowercase();
        let mut rcode = ResponseCode::NoError;
        for _ in 0..16 {
            match z.rrsets.get(&current) {
                None => {
                    let has_descendants =
                        z.rrsets.keys().any(|k| k != &current && current.zone_of(k));
                    if !has_descendants {
                        rcode = ResponseCode::NXDomain;
                    }
                    break;
                }
                Some(types) => {
                    if qtype == RecordType::ANY {
                        for rs in types.values() {
                            answers.extend(rs.iter().cloned());
                        }
                        break;
                    }
                    if let Some(rs) = types.get(&qtype) {
                        answers.extend(rs.iter().cloned());
                        break;
                    }
                    if qtype != RecordType::CNAME
                        && let Some(cn) = types.get(&RecordType::CNAME)
                        && let Some(first) = cn.first()
                    {
                        answers.extend(cn.iter().cloned());
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
        let mut authority = Vec::new();
        let nodata =
            !answers.iter().any(|r| r.record_type() == qtype) || rcode == ResponseCode::NXDomain;
        if nodata {
            // closest enclosing SOA of the final name
            let mut n = current.clone();
            loop {
                if let Some(soa) = z.rrsets.get(&n).and_then(|t| t.get(&RecordType::SOA)) {
                    authority.extend(soa.iter().cloned());
                    break;
                }
                if n.is_root() {
                    break;
                }
                n = n.base_name();
            }
        }
        (rcode, answers, authority)
    }
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
        b.build()
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
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232).set_version(0);
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

    let (rcode, answers, authority) = zone.lookup(&qname_fqdn, qtype);
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
