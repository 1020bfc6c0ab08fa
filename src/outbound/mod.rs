//! Outbound: sends a prepared message to a group of recipients' mail hosts
//! (or the smarthost) and returns one outcome per recipient, with evidence.
//! It names no method: what the bytes are is the encrypt stage's business.
//!
//! A group (recipients of one message that share a destination, a TLS
//! requirement and a copy, see `dispatch`) is planned before any
//! connection (`plan_group`: route, MTA-STS, DANE, smarthost), then sent
//! host after host (`send_group`: connect and STARTTLS as the plan
//! requires, the transaction, the replies classified). `dispatch` runs the
//! groups of a message concurrently, so a slow domain never holds up the
//! others. Connections are kept for reuse for `delivery.idle_timeout`.

pub mod classify;
pub mod client;
mod dial;
mod plan;
pub mod tlsrpt;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use self::client::{ClientError, Connection, DotStuffer, SmtpReply, Timeouts};
use self::plan::Plan;
use crate::config::{Settings, SmarthostTls};
use crate::encrypt::prepare::{Prepared, Recipe};
use crate::net::dane::{Dane, HostTlsa, Tlsa};
use crate::net::mta_sts::MtaSts;
use crate::net::route::{self, Hop, Route, RouteKind};
use crate::net::tls;
pub use crate::net::tls::TlsEvidence;
use crate::policy::{Decision, TlsRequirement};
use crate::queue::{QueuedMessage, RecipientOutcome, Spool, Verdict};

/// The evidence of one delivery attempt for one recipient.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AttemptEvidence {
    /// `tls` or `plaintext` (how the bytes travelled).
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteKind>,
    /// MX (or smarthost) names in the order tried.
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsEvidence>,
    /// STARTTLS was offered but the handshake failed, so (opportunistic
    /// only) the message went in plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_failure: Option<String>,
    /// Failures on hosts tried before the one that answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_failures: Vec<String>,
    /// End-to-end encryption applied (method, key fingerprints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<serde_json::Value>,
    /// The MTA-STS policy enforced on this hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<serde_json::Value>,
    /// The hosts came from the DNSSEC-validated MX RRset only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dnssec_mx: bool,
    /// The TLS requirement enforced on the hop (the decision's, raised by
    /// a destination's valid MTA-STS enforce policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_enforced: Option<TlsRequirement>,
    /// SHA-256 of the content sent in DATA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// The result for one recipient.
#[derive(Debug, Clone)]
pub struct RecipientReport {
    pub index: usize,
    pub decision: Decision,
    pub outcome: RecipientOutcome,
    pub evidence: AttemptEvidence,
}

/// Errors setting delivery up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Resolver(#[from] route::ResolverSetupError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("DANE: {0}")]
    Dane(String),
    #[error("delivery.smarthost_auth.password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    addr: SocketAddr,
    tls: TlsRequirement,
}

/// The delivery engine.
pub struct Deliverer {
    settings: Arc<Settings>,
    mta_sts: Arc<MtaSts>,
    dane: Arc<Dane>,
    tlsrpt: Arc<tlsrpt::TlsReporter>,
    resolver: hickory_resolver::TokioResolver,
    tls: tls::TlsClients,
    smarthost_password: Option<String>,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Mutex<HashMap<PoolKey, Vec<(Instant, Connection)>>>,
}

/// A connection ready for MAIL FROM, with what we learned setting it up.
struct Ready {
    conn: Connection,
    tls: Option<TlsEvidence>,
    tls_failure: Option<String>,
    reused: bool,
}

/// What a smarthost's TLSA records say for one delivery.
enum HopTlsa {
    Usable(Vec<Tlsa>),
    /// Secure but unusable: TLS is mandatory (RFC 7672 section 2.2).
    Unusable,
    None,
}

/// How a transaction on one host ended.
enum TxEnd {
    /// Per-recipient outcomes; the connection can be reused if `Some`.
    Done(
        Vec<(usize, RecipientOutcome)>,
        Option<String>,
        Option<Connection>,
    ),
    /// Nothing decided on this host (4xx to MAIL, connection lost): try
    /// the next one.
    NextHost(RecipientOutcome),
    /// The connection was dead at MAIL FROM (end of stream, reset, broken
    /// pipe, or `421`): nothing of the message was sent. On a pooled
    /// connection that is the remote's idle close, not a failure of the
    /// host, and a fresh connection is tried at once.
    Stale(RecipientOutcome),
}

/// Recipients of one message that share a destination, a TLS requirement
/// and a copy of the content: one transaction carries them.
pub struct Group {
    /// The recipient domain, or `smarthost:HOST`
    /// (`Deliverer::destination`).
    pub dest: String,
    /// Index into the message's recipients, with its decision.
    pub members: Vec<(usize, Decision)>,
}

impl Group {
    /// The recipient domain (the smarthost's name on a smarthost route).
    fn domain(&self) -> &str {
        self.dest.strip_prefix("smarthost:").unwrap_or(&self.dest)
    }
}

/// A group whose delivery is planned (route and checks done, nothing
/// connected yet): next comes its prepared message.
pub struct Planned {
    group: Group,
    plan: Plan,
    evidence: AttemptEvidence,
}

impl Planned {
    /// The recipients (index, decision).
    pub fn members(&self) -> &[(usize, Decision)] {
        &self.group.members
    }

    /// Reports `outcome` for every member without sending (the content
    /// could not be prepared).
    pub fn refuse(self, outcome: RecipientOutcome) -> Vec<RecipientReport> {
        reports(&self.group.members, &|_| outcome.clone(), &self.evidence)
    }
}

/// Why the server behind `conn` cannot take `msg` at all, if it cannot:
/// it lacks SMTPUTF8 the message needs, or announces a SIZE below it.
fn refusal_before_mail(conn: &Connection, msg: &QueuedMessage) -> Option<RecipientOutcome> {
    let host = &conn.host;
    if msg.smtputf8 && !conn.ext.smtputf8 {
        return Some(classify::refuse(
            host,
            "5.6.7",
            format!("{host} does not support SMTPUTF8, which this message needs"),
        ));
    }
    match conn.ext.size {
        Some(max) if msg.size > max => Some(classify::refuse(
            host,
            "5.3.4",
            format!(
                "{host} accepts at most {max} bytes; the message has {}",
                msg.size
            ),
        )),
        _ => None,
    }
}

/// What `send_group` sends, to which group, under which plan.
struct Sending<'a> {
    msg: &'a QueuedMessage,
    spool: &'a Spool,
    domain: &'a str,
    plan: &'a Plan,
    indices: &'a [usize],
    requiretls: bool,
    recipe: &'a Recipe,
}

/// What one address of the route did with a group's transaction.
enum AtAddress {
    /// The transaction ran: each recipient's outcome, and the attempt's
    /// evidence.
    Done(HashMap<usize, RecipientOutcome>, AttemptEvidence),
    /// The next address is tried: why (for the evidence), and the outcome
    /// if none is left.
    Next(String, RecipientOutcome),
}

/// One report per member, each with its outcome and the evidence.
fn reports(
    members: &[(usize, Decision)],
    out: &dyn Fn(usize) -> RecipientOutcome,
    ev: &AttemptEvidence,
) -> Vec<RecipientReport> {
    members
        .iter()
        .map(|(i, d)| RecipientReport {
            index: *i,
            decision: d.clone(),
            outcome: out(*i),
            evidence: ev.clone(),
        })
        .collect()
}

impl Deliverer {
    /// Builds the resolver, TLS trust and limits from the settings (async:
    /// a DS trust anchor needs the root DNSKEY RRset fetched first).
    pub async fn new(settings: Arc<Settings>) -> Result<Arc<Deliverer>, OutboundError> {
        let resolver = route::resolver(&settings.dns)?;
        let tls = tls::TlsClients::new(&settings.tls.extra_ca)?;
        let smarthost_password = match &settings.delivery.smarthost_auth {
            Some(a) => {
                let text = std::fs::read_to_string(&a.password_file).map_err(|source| {
                    OutboundError::Password {
                        path: a.password_file.display().to_string(),
                        source,
                    }
                })?;
                Some(text.lines().next().unwrap_or("").to_string())
            }
            None => None,
        };
        let global = Arc::new(Semaphore::new(settings.delivery.max_connections));
        let mta_sts = Arc::new(MtaSts::new(
            resolver.clone(),
            tls.verified.clone(),
            settings.server.spool_dir.join("mta-sts"),
            settings.probe.timeout,
        ));
        let tlsrpt = Arc::new(tlsrpt::TlsReporter::new(
            settings.server.spool_dir.join("tls-report"),
            settings.tls_report.period.as_secs(),
        ));
        let dane = Arc::new(
            Dane::new(&settings.dns, settings.delivery.port)
                .await
                .map_err(OutboundError::Dane)?,
        );
        Ok(Arc::new(Deliverer {
            settings,
            mta_sts,
            dane,
            tlsrpt,
            resolver,
            tls,
            smarthost_password,
            global,
            per_host: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
        }))
    }

    /// The resolver every lookup goes through (for `probe`).
    pub fn resolver(&self) -> &hickory_resolver::TokioResolver {
        &self.resolver
    }

    /// Where mail for `domain` goes when the decision rests on DNSSEC:
    /// the validated MX set only (`require_secure`: it must be signed).
    pub async fn validated_route_for(
        &self,
        domain: &str,
        require_secure: bool,
    ) -> Result<Route, route::RouteError> {
        let fut = route::validated_mx_route(
            &self.dane,
            domain,
            self.settings.delivery.port,
            require_secure,
        );
        tokio::time::timeout(route::ROUTE_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(route::RouteError::Temporary(format!(
                    "validated DNS lookups for {domain} timed out"
                )))
            })
    }

    /// Whether everything goes through `[delivery] smarthost`.
    pub fn uses_smarthost(&self) -> bool {
        self.settings.delivery.smarthost.is_some()
    }

    /// The configured `[delivery] smarthost`, `(host, port)`.
    pub fn smarthost(&self) -> Option<(&str, u16)> {
        self.settings
            .delivery
            .smarthost
            .as_ref()
            .map(|(h, p)| (h.as_str(), *p))
    }

    /// Connects to the smarthost as delivery would (STARTTLS when offered,
    /// authenticated by `tlsa` when given, AUTH when configured), then
    /// QUITs: what the smarthost probe reports. `Ok((host, None))` means
    /// the smarthost took the connection without TLS.
    pub async fn check_smarthost(
        &self,
        tlsa: Option<&[Tlsa]>,
    ) -> Result<(String, Option<TlsEvidence>), String> {
        let route = self.route_for("").await.map_err(|e| e.to_string())?;
        let requirement = if tlsa.is_some() {
            TlsRequirement::Dane
        } else {
            TlsRequirement::Opportunistic
        };
        let mut failures = Vec::new();
        for hop in &route.hops {
            for addr in &hop.addrs {
                let dane = tlsa.map(|t| (t, hop.name.as_str()));
                match self
                    .open(hop, *addr, requirement, route.kind, true, dane)
                    .await
                {
                    Ok(r) => {
                        tokio::spawn(r.conn.quit());
                        return Ok((format!("{} [{}]", hop.name, addr.ip()), r.tls));
                    }
                    Err((o, _)) => failures.push(o.reply),
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Where mail for `domain` would go.
    pub async fn route_for(&self, domain: &str) -> Result<Route, route::RouteError> {
        let fut = async {
            match &self.settings.delivery.smarthost {
                Some((host, port)) => route::smarthost_route(&self.resolver, host, *port).await,
                None => route::mx_route(&self.resolver, domain, self.settings.delivery.port).await,
            }
        };
        tokio::time::timeout(route::ROUTE_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(route::RouteError::Temporary(format!(
                    "DNS lookups for {domain} timed out"
                )))
            })
    }

    /// Where recipient `index` of `msg` goes: its domain, or
    /// `smarthost:HOST` when every message goes through the smarthost.
    /// Recipients of one destination, TLS requirement and copy share a
    /// transaction (see `dispatch`).
    pub fn destination(&self, msg: &QueuedMessage, index: usize) -> String {
        match &self.settings.delivery.smarthost {
            Some((h, _)) => format!("smarthost:{h}"),
            None => msg
                .recipients
                .get(index)
                .map(|r| r.domain())
                .unwrap_or_default(),
        }
    }

    /// Plans the delivery of `group` before any connection: the route and
    /// the checks of MTA-STS, DANE and the smarthost. A group that cannot
    /// go now gets its reports.
    pub async fn plan_group(
        &self,
        msg: &QueuedMessage,
        group: Group,
    ) -> Result<Planned, Vec<RecipientReport>> {
        let domain = group.domain().to_string();
        let mut evidence = AttemptEvidence::default();
        match self.plan(msg, &domain, &group.members, &mut evidence).await {
            Ok(plan) => Ok(Planned {
                group,
                plan,
                evidence,
            }),
            Err(o) => Err(reports(&group.members, &|_| o.clone(), &evidence)),
        }
    }

    /// Sends the prepared message of a planned group, host after host of
    /// its route, and reports every member's outcome.
    pub async fn send_group(
        &self,
        msg: &QueuedMessage,
        spool: &Spool,
        planned: Planned,
        prepared: Prepared,
    ) -> Vec<RecipientReport> {
        let Planned {
            group,
            plan,
            mut evidence,
        } = planned;
        evidence.encryption = prepared.evidence;
        let domain = group.domain().to_string();
        let members = group.members;
        let indices: Vec<usize> = members.iter().map(|m| m.0).collect();
        let sending = Sending {
            msg,
            spool,
            domain: &domain,
            plan: &plan,
            indices: &indices,
            requiretls: members.iter().any(|m| m.1.requiretls),
            recipe: &prepared.recipe,
        };
        let mut last_failure = classify::local(format!("no host for {domain} could be reached"));
        for hop in &plan.route.hops {
            for addr in &hop.addrs {
                match self.at_address(&sending, hop, *addr, &evidence).await {
                    AtAddress::Done(by_idx, attempt) => {
                        log_attempt(&msg.id, hop, addr, &attempt, &by_idx);
                        let fallback = last_failure.clone();
                        return reports(
                            &members,
                            &|i| by_idx.get(&i).cloned().unwrap_or_else(|| fallback.clone()),
                            &attempt,
                        );
                    }
                    AtAddress::Next(note, o) => {
                        evidence.earlier_failures.push(note);
                        last_failure = o;
                    }
                }
            }
        }
        tracing::info!(queue_id = %msg.id, domain = %domain, error = %last_failure.reply, "delivery deferred: no host accepted the transaction");
        reports(&members, &|_| last_failure.clone(), &evidence)
    }

    /// The group's transaction at one address of its route: connected and
    /// TLS started as the plan requires, then the transaction.
    async fn at_address(
        &self,
        s: &Sending<'_>,
        hop: &Hop,
        addr: SocketAddr,
        evidence: &AttemptEvidence,
    ) -> AtAddress {
        let permit = self.permits(&hop.name).await;
        // A pooled connection that turns out dead at MAIL FROM is replaced
        // by one fresh connection; only a failure of that one counts
        // against the host.
        let mut pooled = true;
        loop {
            let ready = match self
                .ready_counted(s.domain, s.plan, hop, addr, pooled, s.requiretls)
                .await
            {
                Ok(r) => r,
                Err(o) => {
                    return AtAddress::Next(
                        format!("{} [{}]: {}", hop.name, addr.ip(), o.reply),
                        o,
                    );
                }
            };
            let mut attempt = evidence.clone();
            attempt.remote_host = Some(hop.name.clone());
            attempt.remote_ip = Some(addr.ip().to_string());
            attempt.method = if ready.tls.is_some() {
                "tls".into()
            } else {
                "plaintext".into()
            };
            attempt.tls = ready.tls.clone();
            attempt.tls_failure = ready.tls_failure.clone();
            let reused = ready.reused;
            let key = PoolKey {
                host: hop.name.clone(),
                addr,
                tls: s.plan.requirement,
            };
            match self
                .transaction(
                    ready.conn,
                    s.msg,
                    s.spool,
                    s.indices,
                    s.requiretls,
                    s.recipe,
                )
                .await
            {
                TxEnd::Done(outcomes, sha, conn) => {
                    if let Some(conn) = conn {
                        self.put_back(key, conn);
                    }
                    drop(permit);
                    attempt.body_sha256 = sha;
                    return AtAddress::Done(outcomes.into_iter().collect(), attempt);
                }
                TxEnd::Stale(o) if reused => {
                    tracing::debug!(
                        queue_id = %s.msg.id,
                        host = %hop.name,
                        ip = %addr.ip(),
                        reply = %o.reply,
                        "pooled connection was closed by the remote; opening a new one"
                    );
                    pooled = false;
                }
                TxEnd::NextHost(o) | TxEnd::Stale(o) => {
                    drop(permit);
                    let note = format!(
                        "{} [{}]{}: {}",
                        hop.name,
                        addr.ip(),
                        if reused { " (reused connection)" } else { "" },
                        o.reply
                    );
                    return AtAddress::Next(note, o);
                }
            }
        }
    }

    /// A connection to `hop` at `addr` as the plan requires (pooled when
    /// `pooled` and one is idle), each new session counted for TLS-RPT;
    /// under REQUIRETLS a failed TLS session says so (RFC 8689 section 5).
    async fn ready_counted(
        &self,
        domain: &str,
        plan: &Plan,
        hop: &Hop,
        addr: SocketAddr,
        pooled: bool,
        requiretls: bool,
    ) -> Result<Ready, RecipientOutcome> {
        let smarthost = self.uses_smarthost();
        let dane = plan
            .dane_hosts
            .get(&hop.name)
            .map(|t| (t.as_slice(), domain));
        let ip = addr.ip().to_string();
        match self
            .ready(hop, addr, plan.requirement, plan.route.kind, dane, pooled)
            .await
        {
            Ok(r) => {
                if !smarthost && !r.reused {
                    let applied = plan.applied_for(&hop.name);
                    let sts = match &applied {
                        tlsrpt::AppliedPolicy::Sts(p) => Some(*p),
                        _ => None,
                    };
                    let result = session_result(&r, sts, &hop.name);
                    self.tlsrpt.record(domain, &applied, &hop.name, &ip, result);
                }
                Ok(r)
            }
            Err(mut o) => {
                if !smarthost && o.enhanced.as_deref() == Some("4.7.5") {
                    let kind = tlsrpt::result_type(&o.reply);
                    self.tlsrpt.record(
                        domain,
                        &plan.applied_for(&hop.name),
                        &hop.name,
                        &ip,
                        tlsrpt::SessionResult::Failure(kind),
                    );
                    if requiretls {
                        // RFC 8689 section 5: no TLS-protected session
                        // could be set up.
                        o.enhanced = Some("4.7.10".into());
                        o.reply = format!("encryption needed (REQUIRETLS): {}", o.reply);
                    }
                }
                Err(o)
            }
        }
    }

    async fn permits(
        &self,
        host: &str,
    ) -> (
        tokio::sync::OwnedSemaphorePermit,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let per_host = {
            let mut m = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(host.to_string())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        self.settings.delivery.max_connections_per_host,
                    ))
                })
                .clone()
        };
        let host_permit = per_host.acquire_owned().await.ok();
        // The semaphores are never closed, so acquire cannot fail; if it
        // somehow did, proceed without the limit rather than lose mail.
        let global = match self.global.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => Arc::new(Semaphore::new(1))
                .acquire_owned()
                .await
                .unwrap_or_else(|_| unreachable!()),
        };
        (global, host_permit)
    }

    fn take_pooled(&self, key: &PoolKey) -> Option<Connection> {
        let idle = self.settings.delivery.idle_timeout;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        while let Some((since, mut conn)) = list.pop() {
            if since.elapsed() >= idle {
                tokio::spawn(conn.quit());
            } else if conn.idle_usable() {
                return Some(conn);
            } else {
                // Closed by the remote (its idle timeout, a restart): not
                // a failure, just gone.
                tracing::debug!(host = %key.host, ip = %key.addr.ip(), "pooled connection closed by the remote; dropped");
            }
        }
        None
    }

    fn put_back(&self, key: PoolKey, conn: Connection) {
        let max = self.settings.delivery.max_connections_per_host;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.entry(key).or_default();
        if list.len() < max {
            list.push((Instant::now(), conn));
        } else {
            tokio::spawn(conn.quit());
        }
    }

    /// Closes idle connections past `idle_timeout`; run periodically.
    pub fn reap_idle(&self) {
        let idle = self.settings.delivery.idle_timeout;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        for list in pool.values_mut() {
            let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(t, _)| t.elapsed() < idle);
            *list = keep;
            for (_, c) in stale {
                tokio::spawn(c.quit());
            }
        }
        pool.retain(|_, l| !l.is_empty());
    }

    /// Connection timeouts from `[delivery]`.
    pub fn timeouts(&self) -> Timeouts {
        let d = &self.settings.delivery;
        Timeouts {
            connect: d.connect_timeout,
            command: d.command_timeout,
            data: d.data_timeout,
        }
    }

    /// A connection ready for MAIL FROM: from the pool (if `pooled`), or
    /// new with EHLO, STARTTLS as the requirement says, and AUTH for a
    /// smarthost.
    async fn ready(
        &self,
        hop: &Hop,
        addr: SocketAddr,
        requirement: TlsRequirement,
        kind: RouteKind,
        dane: Option<(&[Tlsa], &str)>,
        pooled: bool,
    ) -> Result<Ready, RecipientOutcome> {
        let key = PoolKey {
            host: hop.name.clone(),
            addr,
            tls: requirement,
        };
        if let Some(conn) = pooled.then(|| self.take_pooled(&key)).flatten() {
            let tls = conn.tls.as_ref().map(|t| self.tls_evidence(t, &hop.name));
            return Ok(Ready {
                conn,
                tls,
                tls_failure: None,
                reused: true,
            });
        }
        match self.open(hop, addr, requirement, kind, true, dane).await {
            Ok(r) => Ok(r),
            // Opportunistic TLS whose handshake failed: plaintext is still
            // better than not delivering (RFC 7435), and the evidence says so.
            Err((o, true))
                if requirement == TlsRequirement::Opportunistic && kind != RouteKind::Smarthost =>
            {
                let mut r = self
                    .open(hop, addr, requirement, kind, false, None)
                    .await
                    .map_err(|(o, _)| o)?;
                r.tls_failure = Some(o.reply);
                Ok(r)
            }
            Err((o, _)) => Err(o),
        }
    }

    /// Opens a new connection; the flag in the error says whether it was
    /// the TLS handshake that failed.
    async fn open(
        &self,
        hop: &Hop,
        addr: SocketAddr,
        requirement: TlsRequirement,
        kind: RouteKind,
        try_tls: bool,
        dane: Option<(&[Tlsa], &str)>,
    ) -> Result<Ready, (RecipientOutcome, bool)> {
        let host = hop.name.as_str();
        if requirement == TlsRequirement::Dane && dane.is_none() {
            // Never WebPKI in place of the TLSA records a decision needs.
            return Err((
                classify::local(format!("no TLSA records to authenticate {host} by")),
                false,
            ));
        }
        let mut conn = self.greeted(host, addr).await?;
        let needs_tls = requirement > TlsRequirement::Opportunistic
            || (kind == RouteKind::Smarthost && self.smarthost_password.is_some());
        let tls = if conn.ext.starttls && try_tls {
            self.start_tls(&mut conn, requirement, needs_tls, dane)
                .await?
        } else if needs_tls {
            let o = RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!("{host} does not offer STARTTLS, which this hop requires"),
                enhanced: Some("4.7.5".into()),
                remote: Some(host.to_string()),
            };
            return Err((o, false));
        } else {
            None
        };
        if kind == RouteKind::Smarthost {
            self.authenticate(&mut conn, tls.as_ref()).await?;
        }
        Ok(Ready {
            conn,
            tls,
            tls_failure: None,
            reused: false,
        })
    }

    /// A new connection to `host` at `addr`, greeted and EHLO answered.
    async fn greeted(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Connection, (RecipientOutcome, bool)> {
        let fail = |e: ClientError| (classify::client_error(host, &e), e.is_tls());
        let mut conn = match Connection::connect(host, addr, self.timeouts())
            .await
            .map_err(fail)?
        {
            Ok(c) => c,
            Err(greeting) => {
                let mut o = classify::reply(host, &greeting);
                // A refusing greeting is about this host, not the recipient.
                o.verdict = Verdict::Temporary;
                return Err((o, false));
            }
        };
        let r = conn.ehlo(self.helo_name()).await.map_err(fail)?;
        if r.code != 250 {
            let mut o = classify::reply(host, &r);
            o.verdict = Verdict::Temporary;
            return Err((o, false));
        }
        Ok(conn)
    }

    /// STARTTLS as `requirement` asks (the TLSA records when given, else
    /// the verified or the opportunistic configuration), then EHLO again:
    /// what the session showed, or `None` when the server refused
    /// STARTTLS and the hop does not need TLS.
    async fn start_tls(
        &self,
        conn: &mut Connection,
        requirement: TlsRequirement,
        needs_tls: bool,
        dane: Option<(&[Tlsa], &str)>,
    ) -> Result<Option<TlsEvidence>, (RecipientOutcome, bool)> {
        let host = conn.host.clone();
        let host = host.as_str();
        let fail = |e: ClientError| (classify::client_error(host, &e), e.is_tls());
        let matched = Arc::new(std::sync::Mutex::new(None));
        let config = match dane {
            Some((tlsa, domain)) => self
                .dane
                .client_config(
                    tlsa.to_vec(),
                    vec![host.to_string(), domain.to_string()],
                    matched.clone(),
                )
                .map_err(|e| (classify::local(format!("DANE setup: {e}")), false))?,
            // `encrypted`: TLS is mandatory but the certificate is not
            // authenticated (RFC 7672 section 2.2).
            None if requirement >= TlsRequirement::Verified => self.tls.verified.clone(),
            None => self.tls.opportunistic.clone(),
        };
        match conn.starttls(config, host).await.map_err(fail)? {
            Ok(()) => {
                let r = conn.ehlo(self.helo_name()).await.map_err(fail)?;
                if r.code != 250 {
                    return Err((classify::reply(host, &r), false));
                }
                let mut tls = conn.tls.as_ref().map(|t| self.tls_evidence(t, host));
                if let (Some(t), Some(m)) = (
                    tls.as_mut(),
                    matched.lock().unwrap_or_else(|p| p.into_inner()).as_ref(),
                ) {
                    t.dane_match = Some(m.describe());
                }
                Ok(tls)
            }
            Err(refused) if !needs_tls => {
                tracing::debug!(host, reply = %refused.one_line(), "STARTTLS refused; continuing without TLS");
                Ok(None)
            }
            Err(refused) => {
                let mut o = classify::reply(host, &refused);
                o.verdict = Verdict::Temporary;
                Err((o, false))
            }
        }
    }

    /// AUTH to the smarthost when credentials are configured, and only to
    /// a smarthost that proved its name (certificate verified, or DANE):
    /// TLS alone would hand them to whoever sits on the path with any
    /// certificate.
    async fn authenticate(
        &self,
        conn: &mut Connection,
        tls: Option<&TlsEvidence>,
    ) -> Result<(), (RecipientOutcome, bool)> {
        let (Some(auth), Some(pw)) = (
            &self.settings.delivery.smarthost_auth,
            &self.smarthost_password,
        ) else {
            return Ok(());
        };
        let host = conn.host.clone();
        let authenticated = tls.is_some_and(|t| t.cert_verified || t.dane_match.is_some());
        if !authenticated {
            let o = RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!(
                    "smarthost {host} was not authenticated (its certificate did not verify for its name), so our credentials were not sent"
                ),
                enhanced: Some("4.7.5".into()),
                remote: Some(host),
            };
            return Err((o, false));
        }
        let r = conn
            .auth(&auth.username, pw)
            .await
            .map_err(|e| (classify::client_error(&host, &e), e.is_tls()))?;
        if r.code != 235 {
            // Wrong credentials are a configuration problem: keep the mail.
            let o = RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!("smarthost {host} refused our credentials: {}", r.one_line()),
                enhanced: Some("4.7.8".into()),
                remote: Some(host),
            };
            return Err((o, false));
        }
        Ok(())
    }

    /// The TLSA answers for `hops`, in order, looked up concurrently and
    /// all within one route timeout (a host whose lookup is still running
    /// then counts as failed, so it is skipped, never used without DANE).
    async fn tlsa_of_hops(&self, hops: &[Hop]) -> Vec<Result<HostTlsa, String>> {
        let lookups = futures_util::future::join_all(hops.iter().map(|h| self.dane.tlsa(&h.name)));
        match tokio::time::timeout(route::ROUTE_TIMEOUT, lookups).await {
            Ok(answers) => answers,
            Err(_) => hops
                .iter()
                .map(|_| {
                    Err(format!(
                        "the TLSA lookups did not finish within {}s",
                        route::ROUTE_TIMEOUT.as_secs()
                    ))
                })
                .collect(),
        }
    }

    /// What the TLSA records of the smarthost `host` say, or why the
    /// delivery must wait: they cannot be validated, or `requirement` is
    /// `dane` and they are not usable.
    async fn smarthost_tlsa(
        &self,
        host: &str,
        requirement: TlsRequirement,
    ) -> Result<HopTlsa, String> {
        let port = self.smarthost().map(|(_, p)| p).unwrap_or(25);
        match self.dane.tlsa_at(host, port).await {
            Ok(HostTlsa::Usable { usable, .. }) => Ok(HopTlsa::Usable(usable)),
            Ok(_) if requirement == TlsRequirement::Dane => Err(format!(
                "the smarthost {host} does not publish usable TLSA records, which the decision requires; waiting"
            )),
            Ok(HostTlsa::Unusable(_)) => Ok(HopTlsa::Unusable),
            Ok(HostTlsa::None) => Ok(HopTlsa::None),
            Err(e) => Err(format!(
                "the TLSA records of the smarthost {host} cannot be validated ({e}); waiting"
            )),
        }
    }

    /// `[delivery] smarthost_min_tls` as a requirement.
    pub fn smarthost_floor(&self) -> TlsRequirement {
        match self.settings.delivery.smarthost_min_tls {
            SmarthostTls::Opportunistic => TlsRequirement::Opportunistic,
            SmarthostTls::Encrypted => TlsRequirement::Encrypted,
            SmarthostTls::Verified => TlsRequirement::Verified,
            SmarthostTls::Dane => TlsRequirement::Dane,
        }
    }

    /// The validating resolver and TLSA checks (shared with the DANE probe).
    pub fn dane(&self) -> Arc<Dane> {
        self.dane.clone()
    }

    /// The TLS session counter (RFC 8460).
    pub fn tls_reporter(&self) -> Arc<tlsrpt::TlsReporter> {
        self.tlsrpt.clone()
    }

    /// The MTA-STS policy cache (shared with its probe).
    pub fn mta_sts(&self) -> Arc<MtaSts> {
        self.mta_sts.clone()
    }

    /// The TLS client configurations (for probes).
    pub fn tls_clients(&self) -> &tls::TlsClients {
        &self.tls
    }

    /// The name we send in EHLO.
    pub fn helo_name(&self) -> &str {
        &self.settings.delivery.helo_name
    }

    /// What a negotiated TLS session proves for `host`.
    pub fn tls_evidence(&self, t: &client::TlsFacts, host: &str) -> TlsEvidence {
        let chain: Vec<rustls_pki_types::CertificateDer<'_>> = t
            .chain
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.as_slice()))
            .collect();
        let check = self.tls.check(&chain, host);
        TlsEvidence {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            cert_verified: check.is_ok(),
            cert_error: check.err(),
            peer_cert_sha256: t.peer_cert_sha256.clone(),
            dane_match: None,
        }
    }

    /// One mail transaction for `indices` on `conn`.
    async fn transaction(
        &self,
        mut conn: Connection,
        msg: &QueuedMessage,
        spool: &Spool,
        indices: &[usize],
        requiretls: bool,
        recipe: &Recipe,
    ) -> TxEnd {
        let host = conn.host.clone();
        if let Some(o) = refusal_before_mail(&conn, msg) {
            return TxEnd::Done(
                indices.iter().map(|&i| (i, o.clone())).collect(),
                None,
                Some(conn),
            );
        }
        let mail = match mail_command(&conn, msg, requiretls) {
            Ok(m) => m,
            Err(o) => {
                tokio::spawn(conn.quit());
                return TxEnd::NextHost(o);
            }
        };
        let rcpts: Vec<String> = indices
            .iter()
            .map(|&i| {
                format!(
                    "RCPT TO:<{}>",
                    msg.recipients
                        .get(i)
                        .map(|r| r.address.as_str())
                        .unwrap_or("")
                )
            })
            .collect();
        let (mail_reply, rcpt_replies) = match envelope(&mut conn, &mail, &rcpts).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        if !mail_reply.is_positive() {
            let o = classify::reply(&host, &mail_reply);
            let conn = self.reset(conn).await;
            if o.verdict == Verdict::Temporary {
                return TxEnd::NextHost(o);
            }
            return TxEnd::Done(
                indices.iter().map(|&i| (i, o.clone())).collect(),
                None,
                conn,
            );
        }
        let mut outcomes: Vec<(usize, RecipientOutcome)> = Vec::new();
        let mut accepted = Vec::new();
        for (&i, r) in indices.iter().zip(&rcpt_replies) {
            if r.is_positive() {
                accepted.push(i);
            } else {
                outcomes.push((i, classify::reply(&host, r)));
            }
        }
        if accepted.is_empty() {
            let conn = self.reset(conn).await;
            return TxEnd::Done(outcomes, None, conn);
        }
        self.data(conn, msg, spool, recipe, &accepted, outcomes)
            .await
    }

    /// DATA, the content and the reply after it, for the `accepted`
    /// recipients (added to `outcomes`).
    async fn data(
        &self,
        mut conn: Connection,
        msg: &QueuedMessage,
        spool: &Spool,
        recipe: &Recipe,
        accepted: &[usize],
        mut outcomes: Vec<(usize, RecipientOutcome)>,
    ) -> TxEnd {
        let host = conn.host.clone();
        let next_host = |e: ClientError| next_host(&host, e);
        let data_reply = match conn.command("DATA", "the DATA reply").await {
            Ok(r) => r,
            Err(e) => return next_host(e),
        };
        if data_reply.code != 354 {
            let o = classify::reply(&host, &data_reply);
            let conn = self.reset(conn).await;
            outcomes.extend(accepted.iter().map(|&i| (i, o.clone())));
            return TxEnd::Done(outcomes, None, conn);
        }
        let sent = self.send_content(&mut conn, msg, spool, recipe).await;
        let sha = match sent {
            Ok(sha) => sha,
            Err(SendError::Client(e)) => return next_host(e),
            Err(SendError::Spool(reason)) => {
                // We cannot finish the data: drop the connection so the
                // remote discards the partial message.
                tracing::error!(queue_id = %msg.id, error = %reason, "cannot read the message from the spool");
                outcomes.extend(
                    accepted
                        .iter()
                        .map(|&i| (i, classify::local(reason.clone()))),
                );
                return TxEnd::Done(outcomes, None, None);
            }
        };
        let final_reply = match conn
            .read_reply(conn.timeouts().data, "the reply after the message data")
            .await
        {
            Ok(r) => r,
            Err(e) => return next_host(e),
        };
        let o = classify::reply(&host, &final_reply);
        outcomes.extend(accepted.iter().map(|&i| (i, o.clone())));
        TxEnd::Done(outcomes, Some(sha), Some(conn))
    }

    /// RSET after a failed transaction; the connection is kept only if the
    /// server answers sensibly.
    async fn reset(&self, mut conn: Connection) -> Option<Connection> {
        match conn.command("RSET", "the RSET reply").await {
            Ok(r) if r.code == 250 => Some(conn),
            _ => None,
        }
    }

    /// Writes what `recipe` makes of the spooled message, dot-stuffed,
    /// and returns the SHA-256 of the bytes as made (before stuffing).
    async fn send_content(
        &self,
        conn: &mut Connection,
        msg: &QueuedMessage,
        spool: &Spool,
        recipe: &Recipe,
    ) -> Result<String, SendError> {
        let reader = spool
            .open_content(&msg.id)
            .await
            .map_err(|e| SendError::Spool(e.to_string()))?;
        let mut content = recipe.open(reader);
        let mut stuffer = DotStuffer::default();
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut out = Vec::with_capacity(96 * 1024);
        while let Some(chunk) = content
            .next_chunk()
            .await
            .map_err(|e| SendError::Spool(e.to_string()))?
        {
            digest.update(&chunk);
            out.clear();
            stuffer.push(&chunk, &mut out);
            conn.write_all(&out).await.map_err(SendError::Client)?;
        }
        out.clear();
        stuffer.finish(&mut out);
        conn.write_all(&out).await.map_err(SendError::Client)?;
        Ok(hex::encode(digest.finish().as_ref()))
    }
}

/// The MAIL command for `msg` on `conn`, with the parameters the server
/// offers; under REQUIRETLS only over TLS to a host that offers it (RFC
/// 8689 section 4.2.1, codes of section 5), else why not.
fn mail_command(
    conn: &Connection,
    msg: &QueuedMessage,
    requiretls: bool,
) -> Result<String, RecipientOutcome> {
    let host = conn.host.clone();
    let mut mail = format!("MAIL FROM:<{}>", msg.sender);
    if conn.ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", msg.size));
    }
    if msg.body_8bit && conn.ext.eightbitmime {
        mail.push_str(" BODY=8BITMIME");
    }
    if msg.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if requiretls {
        // RFC 8689 section 4.2.1: only over TLS, to a host that offers
        // REQUIRETLS (and passes the requirement on); else QUIT and try
        // the next MX. The codes are those of section 5.
        let refused = if conn.tls.is_none() {
            Some(RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: format!("encryption needed (REQUIRETLS): no TLS session with {host}"),
                enhanced: Some("4.7.10".into()),
                remote: Some(host.clone()),
            })
        } else if !conn.ext.requiretls {
            // Said inside a TLS session that was authenticated for the
            // host: a fact about the host, not a passing failure.
            Some(classify::refuse(
                &host,
                "5.7.30",
                format!(
                    "REQUIRETLS needed: {host} does not offer REQUIRETLS, which the sender asked for"
                ),
            ))
        } else {
            None
        };
        if let Some(o) = refused {
            return Err(o);
        }
        mail.push_str(" REQUIRETLS");
    }
    Ok(mail)
}

/// Sends MAIL and the RCPTs (pipelined when the server allows) and reads
/// their replies; `Err` ends the transaction on this host.
async fn envelope(
    conn: &mut Connection,
    mail: &str,
    rcpts: &[String],
) -> Result<(SmtpReply, Vec<SmtpReply>), TxEnd> {
    let host = conn.host.clone();
    if conn.ext.pipelining {
        let mut batch = String::new();
        batch.push_str(&mail);
        batch.push_str("\r\n");
        for r in rcpts {
            batch.push_str(r);
            batch.push_str("\r\n");
        }
        if let Err(e) = conn.write_all(batch.as_bytes()).await {
            return Err(at_mail(&host, e));
        }
        let t = conn.timeouts().command;
        let mail_reply = match conn.read_reply(t, "the MAIL reply").await {
            Ok(r) => r,
            Err(e) => return Err(at_mail(&host, e)),
        };
        if mail_reply.code == 421 {
            return Err(TxEnd::Stale(classify::reply(&host, &mail_reply)));
        }
        let mut replies = Vec::new();
        for _ in rcpts {
            match conn.read_reply(t, "the RCPT reply").await {
                Ok(r) => replies.push(r),
                Err(e) => return Err(next_host(&host, e)),
            }
        }
        Ok((mail_reply, replies))
    } else {
        let mail_reply = match conn.command(&mail, "the MAIL reply").await {
            Ok(r) => r,
            Err(e) => return Err(at_mail(&host, e)),
        };
        if mail_reply.code == 421 {
            return Err(TxEnd::Stale(classify::reply(&host, &mail_reply)));
        }
        let mut replies = Vec::new();
        if mail_reply.is_positive() {
            for r in rcpts {
                match conn.command(r, "the RCPT reply").await {
                    Ok(r) => replies.push(r),
                    Err(e) => return Err(next_host(&host, e)),
                }
            }
        }
        Ok((mail_reply, replies))
    }
}

/// A lost connection before the MAIL reply carried no part of the message
/// (pipelined RCPTs at most): a retry on a new connection cannot duplicate
/// anything.
fn at_mail(host: &str, e: ClientError) -> TxEnd {
    match e {
        ClientError::Closed(_) | ClientError::Io(..) => {
            TxEnd::Stale(classify::client_error(host, &e))
        }
        e => next_host(host, e),
    }
}

fn next_host(host: &str, e: ClientError) -> TxEnd {
    TxEnd::NextHost(classify::client_error(host, &e))
}

/// The TLSA records of a host as RFC 8460 policy strings.
fn describe_all(records: &[Tlsa]) -> Vec<String> {
    records.iter().map(Tlsa::describe).collect()
}

/// What RFC 8460 counts for a new session on `host`.
fn session_result(
    r: &Ready,
    sts_policy: Option<&crate::net::mta_sts::StsPolicy>,
    host: &str,
) -> tlsrpt::SessionResult<'static> {
    match (&r.tls, &r.tls_failure) {
        (Some(t), _) if !t.cert_verified && sts_policy.is_some() => tlsrpt::SessionResult::Failure(
            tlsrpt::result_type(t.cert_error.as_deref().unwrap_or("certificate")),
        ),
        (Some(_), _) if sts_policy.is_some_and(|p| !p.matches(host)) => {
            tlsrpt::SessionResult::Failure("validation-failure")
        }
        (Some(_), _) => tlsrpt::SessionResult::Success,
        (None, Some(f)) => tlsrpt::SessionResult::Failure(tlsrpt::result_type(f)),
        (None, None) => tlsrpt::SessionResult::Failure("starttls-not-supported"),
    }
}

/// One log event per delivery attempt (ids, hosts and counts only).
fn log_attempt(
    id: &crate::queue::QueueId,
    hop: &Hop,
    addr: &SocketAddr,
    attempt: &AttemptEvidence,
    by_idx: &HashMap<usize, RecipientOutcome>,
) {
    let count = |v: Verdict| by_idx.values().filter(|o| o.verdict == v).count();
    tracing::info!(
        queue_id = %id,
        host = %hop.name,
        ip = %addr.ip(),
        tls = attempt.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
        delivered = count(Verdict::Delivered),
        deferred = count(Verdict::Temporary),
        bounced = count(Verdict::Permanent),
        "delivery attempt"
    );
}

enum SendError {
    Client(ClientError),
    Spool(String),
}

/// Formats a reply for logs and evidence.
pub fn reply_text(r: &SmtpReply) -> String {
    r.one_line()
}
