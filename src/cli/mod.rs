//! The `sealgate` subcommands other than `serve`: configuration checks,
//! probes, queue and audit tools, key and password helpers.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::audit;
use crate::config::{ConfigProblem, Settings};
use crate::queue::control::{self, ControlError, Reply, Request};
use crate::queue::{QueueId, QueuedMessage, Spool, SpoolKey};

/// Errors of the command-line tools.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Spool(#[from] crate::queue::SpoolError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("{0}")]
    Other(String),
}

/// `check-config` (and `serve` before it starts): validates the config and
/// every file it names, the policy files included, and reports every
/// problem of all of them at once, each with file, line and key.
pub fn check_config(path: &Path) -> Result<Settings, CliError> {
    let (settings, mut problems) = Settings::load_all(path);
    if let Some(s) = &settings {
        problems.extend(check_named_files(s));
        // The config file's problems in line order, then the policy files'
        // (already in order; a stable sort keeps it).
        problems.sort_by_key(|p| match p.file == s.source {
            true => (false, p.line, p.column),
            false => (true, None, None),
        });
    }
    match settings {
        Some(s) if problems.is_empty() => Ok(s),
        _ => Err(crate::config::ConfigError(problems).into()),
    }
}

/// What loading the settings cannot see: the contents of the files they
/// name. A file already reported missing or unreadable is not opened again.
fn check_named_files(s: &Settings) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if let Err(e) = SpoolKey::load(&s.server.spool_key_file) {
        problems.push(s.origins.problem("server.spool_key_file", 0, e.to_string()));
    }
    let client_certs = match crate::inbound::connector::Connectors::load(&s.relay.connectors) {
        Ok(c) => c.client_verifier(),
        Err(e) => {
            problems.push(s.origins.problem("relay.connectors", 0, e.to_string()));
            None
        }
    };
    if let Some(t) = &s.server.tls
        && t.cert.is_file()
        && t.key.is_file()
        && let Err(e) = crate::inbound::tls_acceptor(&t.cert, &t.key, client_certs)
    {
        problems.push(s.origins.problem("server.tls.cert", 0, e.to_string()));
    }
    if let Some(p) = &s.portal
        && p.master_key_file.is_file()
    {
        match SpoolKey::load(&p.master_key_file) {
            Err(e) => problems.push(
                s.origins
                    .problem("portal.master_key_file", 0, e.to_string()),
            ),
            Ok(master) => {
                // The same file, or a copy of (a key of) it.
                if let Ok(spool) = SpoolKey::load(&s.server.spool_key_file)
                    && crate::portal::shares_a_key(master.raw_keys(), spool.raw_keys())
                {
                    problems.push(s.origins.problem(
                        "portal.master_key_file",
                        0,
                        crate::portal::SHARED_WITH_SPOOL,
                    ));
                }
            }
        }
    }
    for (key, nth, e) in crate::encrypt::prepare::unusable_key_files(s) {
        problems.push(s.origins.problem(key, nth, e.to_string()));
    }
    for (i, ca) in s.tls.extra_ca.iter().enumerate() {
        if ca.is_file()
            && let Err(e) = crate::net::tls::TlsClients::new(std::slice::from_ref(ca))
        {
            problems.push(s.origins.problem("tls.extra_ca", i, e.to_string()));
        }
    }
    // Offline: the syntax, owner names and flags; DS records are matched
    // against the root keys only when the daemon starts.
    if let Some(path) = &s.dns.trust_anchor
        && path.is_file()
        && let Err(errors) = crate::net::dane::TrustAnchorFile::load(path)
    {
        for e in errors {
            problems.push(s.origins.problem("dns.trust_anchor", 0, e));
        }
    }
    match crate::policy::Policy::load(&s.policy.files) {
        Ok(_) => {}
        Err(crate::policy::PolicyError::Invalid(p)) => problems.extend(p),
    }
    problems
}

/// `queue list`: from the daemon, or straight from the spool folder.
/// Streamed both ways: each message is written as it arrives, so a large
/// queue is never held in memory.
pub async fn queue_list(
    settings: &Settings,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut listing = Listing::new(out, json);
    let asked = control::list(&settings.server.control_socket, |m| {
        listing.item(&m.message, m.in_flight)
    })
    .await;
    match asked {
        Ok(Reply::Ok { .. }) => {}
        Ok(Reply::Error { detail }) => return Err(CliError::Other(detail)),
        Err(ControlError::NotRunning(_)) => list_spool(settings, &mut listing)?,
        Err(e) => return Err(e.into()),
    }
    listing.finish().map_err(|e| CliError::Other(e.to_string()))
}

/// Writes `queue list` one message at a time, as text or as the JSON
/// array `serde_json::to_string_pretty` would make of them all.
struct Listing<'a> {
    out: &'a mut dyn Write,
    json: bool,
    count: usize,
}

impl<'a> Listing<'a> {
    fn new(out: &'a mut dyn Write, json: bool) -> Listing<'a> {
        Listing {
            out,
            json,
            count: 0,
        }
    }

    fn item(&mut self, m: &QueuedMessage, in_flight: bool) -> std::io::Result<()> {
        self.count += 1;
        if self.json {
            let v = serde_json::json!({ "message": m, "in_flight": in_flight });
            let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
            let sep = if self.count == 1 { "[\n" } else { ",\n" };
            self.out.write_all(sep.as_bytes())?;
            // Pretty JSON puts no raw newline inside strings, so indenting
            // every line nests the element as the array printer would.
            for (i, line) in text.lines().enumerate() {
                if i > 0 {
                    self.out.write_all(b"\n")?;
                }
                write!(self.out, "  {line}")?;
            }
            return Ok(());
        }
        write_text(self.out, m, in_flight)
    }

    fn finish(self) -> std::io::Result<()> {
        match (self.json, self.count) {
            (true, 0) => writeln!(self.out, "[]"),
            (true, _) => writeln!(self.out, "\n]"),
            (false, 0) => writeln!(self.out, "Mail queue is empty"),
            (false, n) => writeln!(self.out, "-- {n} message(s)"),
        }
    }
}

fn write_text(out: &mut dyn Write, m: &QueuedMessage, in_flight: bool) -> std::io::Result<()> {
    let sender = if m.sender.is_empty() {
        "<>".to_string()
    } else {
        m.sender.clone()
    };
    writeln!(
        out,
        "{}{}  {:>9}  {}  {}",
        m.id,
        if in_flight { "*" } else { " " },
        m.size,
        m.received_at.format("%Y-%m-%d %H:%M:%S"),
        sender
    )?;
    for r in &m.recipients {
        let next = r
            .next_attempt
            .map(|t| format!(" next attempt {}", t.format("%H:%M:%S")))
            .unwrap_or_default();
        writeln!(
            out,
            "    {:<10} {} (attempts {}){}",
            format!("{:?}", r.status).to_lowercase(),
            r.address,
            r.attempts,
            next
        )?;
        if let Some(e) = &r.last_error {
            if !r.status.is_final() || r.status == crate::queue::RecipientStatus::Bounced {
                writeln!(out, "        {e}")?;
            }
        }
    }
    Ok(())
}

/// Lists the spool folder itself (no daemon running), one envelope at a
/// time.
fn list_spool(settings: &Settings, listing: &mut Listing<'_>) -> Result<(), CliError> {
    if !settings.server.spool_dir.is_dir() {
        return Err(CliError::Other(format!(
            "no sealgate daemon is listening on {} and the spool folder {} does not exist",
            settings.server.control_socket.display(),
            settings.server.spool_dir.display()
        )));
    }
    let key = SpoolKey::load(&settings.server.spool_key_file)?;
    let spool = Spool::open(&settings.server.spool_dir, key)?;
    // No lock: listing only reads, and must never stop a daemon from
    // starting (a listing piped into a pager can take long).
    let mut failed: Option<CliError> = None;
    spool.walk_envelopes(|id, _| {
        let written = spool
            .read_envelope(&id)
            .map_err(CliError::from)
            .and_then(|m| {
                listing
                    .item(&m, false)
                    .map_err(|e| CliError::Other(e.to_string()))
            });
        match written {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// `queue flush`.
pub async fn queue_flush(settings: &Settings) -> Result<String, CliError> {
    match control::call(&settings.server.control_socket, &Request::Flush).await {
        Ok(Reply::Ok { detail, .. }) => Ok(detail),
        Ok(Reply::Error { detail }) => Err(CliError::Other(detail)),
        Err(ControlError::NotRunning(p)) => Err(CliError::Other(format!(
            "no sealgate daemon is listening on {}; queued mail is tried as soon as `sealgate serve` starts",
            p.display()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `queue remove ID...`.
pub async fn queue_remove(settings: &Settings, ids: &[String]) -> Result<String, CliError> {
    let mut done = Vec::new();
    for id in ids {
        let qid = QueueId::parse(id)
            .ok_or_else(|| CliError::Other(format!("`{id}` is not a queue id")))?;
        match control::call(
            &settings.server.control_socket,
            &Request::Remove { id: qid.0.clone() },
        )
        .await
        {
            Ok(Reply::Ok { detail, .. }) => done.push(detail),
            Ok(Reply::Error { detail }) => return Err(CliError::Other(detail)),
            Err(ControlError::NotRunning(_)) => {
                // No daemon: nobody else touches the spool, edit it directly.
                let key = SpoolKey::load(&settings.server.spool_key_file)?;
                let spool = Spool::open(&settings.server.spool_dir, key)?;
                // Not answering on the socket is not proof that no daemon
                // runs: the spool lock is.
                let _lock = spool.lock()?;
                if !spool.has_envelope(&qid) {
                    return Err(CliError::Other(format!("no message {qid} in the queue")));
                }
                spool_remove(&spool, &qid).await?;
                done.push(format!(
                    "removed {qid} (from the spool folder; no daemon running)"
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done.join("\n"))
}

async fn spool_remove(spool: &Spool, id: &QueueId) -> Result<(), CliError> {
    spool.remove(id).await.map_err(CliError::from)
}

/// `reload`: asks the daemon to re-read its policy.
pub async fn reload(settings: &Settings) -> Result<String, CliError> {
    match control::call(&settings.server.control_socket, &Request::Reload).await? {
        Reply::Ok { detail, .. } => Ok(detail),
        Reply::Error { detail } => Err(CliError::Other(detail)),
    }
}

/// `audit verify`.
pub async fn audit_verify(settings: &Settings, out: &mut dyn Write) -> Result<bool, CliError> {
    let report = audit::verify(&settings.audit.database_url).await?;
    let io = |e: std::io::Error| CliError::Other(e.to_string());
    writeln!(out, "{report}").map_err(io)?;
    Ok(report.is_intact())
}

/// `audit check`: lists the journal lines set aside as unreadable. Returns
/// whether there are none.
pub fn audit_check(settings: &Settings, out: &mut dyn Write) -> Result<bool, CliError> {
    let io = |e: std::io::Error| CliError::Other(e.to_string());
    let dir = &settings.audit.journal_dir;
    let q = audit::read_quarantine(dir)?;
    let n = q.entries.len();
    if n == 0 && q.unreadable == 0 {
        writeln!(out, "audit journal {}: no quarantined lines", dir.display()).map_err(io)?;
        return Ok(true);
    }
    writeln!(
        out,
        "audit journal {}: {n} quarantined line{} in {}",
        dir.display(),
        if n == 1 { "" } else { "s" },
        q.path.display()
    )
    .map_err(io)?;
    for e in &q.entries {
        writeln!(
            out,
            "  {} line {} (byte {}, {} bytes, sha256 {}), set aside {}: {}",
            e.segment, e.line, e.offset, e.bytes, e.sha256, e.quarantined_at, e.reason
        )
        .map_err(io)?;
    }
    if q.unreadable > 0 {
        writeln!(
            out,
            "  and {} line(s) of the quarantine file itself that cannot be read",
            q.unreadable
        )
        .map_err(io)?;
    }
    Ok(false)
}

/// `audit export`.
pub async fn audit_export(
    settings: &Settings,
    format: audit::ExportFormat,
    since: Option<DateTime<Utc>>,
    out: &mut (dyn Write + Send),
) -> Result<audit::ExportSummary, CliError> {
    Ok(audit::export(&settings.audit.database_url, format, since, out).await?)
}

/// `probe`: what would happen to each recipient, and why.
pub async fn probe(
    settings: Settings,
    sender: &str,
    message: Option<&Path>,
    addresses: &[String],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // The same canonical form the listener gives addresses, so the probe
    // answers for the address the policy will actually see.
    let rules = crate::inbound::command::AddressRules {
        allow_percent_hack: settings.relay.allow_percent_hack,
    };
    let canonical = |a: &str, is_sender: bool| {
        crate::inbound::command::parse_address(a, is_sender, rules)
            .map(|m| m.to_string())
            .map_err(|r| CliError::Other(format!("{a}: {} {}", r.enhanced, r.text)))
    };
    let sender = if sender.is_empty() {
        String::new()
    } else {
        canonical(sender, true)?
    };
    let addresses = addresses
        .iter()
        .map(|a| canonical(a, false))
        .collect::<Result<Vec<String>, CliError>>()?;
    let settings = Arc::new(settings);
    let deliverer = crate::outbound::Deliverer::new(settings.clone()).await?;
    let encryptors = crate::encrypt::prepare::Encryptors::load(&settings)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let keyring = crate::dispatch::open_keyring(&settings, &deliverer).await;
    let engine =
        crate::dispatch::Engine::new(&settings, deliverer.clone(), Arc::new(encryptors), keyring)?;
    let policy = engine.current();
    let (facts, size) = match message {
        Some(path) => {
            let content = std::fs::read(path)
                .map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?;
            let limit = policy.max_scan_size() as usize;
            let truncated = content.len() > limit;
            let size = content.len() as u64;
            let mut content = content;
            content.truncate(limit);
            (
                crate::policy::facts::MessageFacts::scan(
                    content,
                    truncated,
                    crate::policy::facts::ScanLimits::default(),
                )
                .await,
                size,
            )
        }
        None => (crate::policy::facts::MessageFacts::default(), 0),
    };
    let envelope = crate::policy::Envelope {
        sender,
        client_ip: None,
        auth_user: None,
        size,
        requiretls: false,
    };
    let rcpts: Vec<(usize, String, bool)> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (i, a.clone(), false))
        .collect();
    let decisions = engine.decide_facts(&policy, envelope, facts, &rcpts).await;
    let mut results = Vec::new();
    for (i, decision) in decisions {
        let addr = &addresses[i];
        let route = deliverer.route_for(&crate::queue::domain_of(addr)).await;
        let route_json = match &route {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let domain = crate::queue::domain_of(addr);
        let rua: Vec<String> = match deliverer
            .resolver()
            .txt_lookup(format!("_smtp._tls.{domain}."))
            .await
        {
            Ok(l) => crate::outbound::tlsrpt::parse_rua(
                &l.iter()
                    .map(|t| {
                        t.txt_data()
                            .iter()
                            .map(|d| String::from_utf8_lossy(d).into_owned())
                            .collect()
                    })
                    .collect::<Vec<String>>(),
            ),
            Err(_) => Vec::new(),
        };
        results.push(serde_json::json!({ "recipient": addr, "decision": decision, "route": route_json, "tls_rpt": rua }));
    }
    let io = |e: std::io::Error| CliError::Other(e.to_string());
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&results).map_err(|e| CliError::Other(e.to_string()))?
        )
        .map_err(io)?;
        return Ok(());
    }
    for r in &results {
        let d = &r["decision"];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        writeln!(out, "{}", s(&r["recipient"])).map_err(io)?;
        writeln!(out, "  action:         {}", s(&d["action"])).map_err(io)?;
        if d["action"] == "deliver" {
            writeln!(out, "  method:         {}", s(&d["method"])).map_err(io)?;
            writeln!(out, "  tls:            {}", s(&d["tls"])).map_err(io)?;
        }
        if !s(&d["reason"]).is_empty() {
            writeln!(out, "  reason:         {}", s(&d["reason"])).map_err(io)?;
        }
        writeln!(out, "  rule:           {}", s(&d["rule"])).map_err(io)?;
        writeln!(out, "  policy version: {}", s(&d["policy_version"])).map_err(io)?;
        let ex = &d["explanation"];
        let methods: Vec<String> = ex["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        writeln!(
            out,
            "  method order:   {} (TLS floor {})",
            methods.join(", "),
            s(&ex["min_tls"])
        )
        .map_err(io)?;
        for m in ex["matched"].as_array().into_iter().flatten() {
            writeln!(out, "  matched:        {}", s(m)).map_err(io)?;
        }
        for det in ex["detectors"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  detector:       {} ({} finding(s))",
                s(&det[0]),
                det[1]
            )
            .map_err(io)?;
        }
        for sk in ex["skipped"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  skipped:        {}: {}",
                s(&sk["method"]),
                s(&sk["reason"])
            )
            .map_err(io)?;
        }
        for p in ex["probes"].as_array().into_iter().flatten() {
            let res = if let Some(e) = p["result"].get("error") {
                format!("error: {}", s(e))
            } else {
                p["result"]["capabilities"].to_string()
            };
            writeln!(out, "  probe {:<9} {res}", s(&p["probe"])).map_err(io)?;
            if !p["evidence"].is_null() {
                writeln!(out, "    evidence:     {}", p["evidence"]).map_err(io)?;
            }
        }
        for m in ex["monitors"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  monitor rule {} would: {} {} {}",
                s(&m["rule"]),
                s(&m["action"]),
                s(&m["method"]),
                s(&m["tls"])
            )
            .map_err(io)?;
        }
        let rua: Vec<String> = r["tls_rpt"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        writeln!(
            out,
            "  tls-rpt:        {}",
            if rua.is_empty() {
                "(none)".to_string()
            } else {
                rua.join(", ")
            }
        )
        .map_err(io)?;
        match r["route"].get("error") {
            Some(e) => writeln!(out, "  route:          error: {}", s(e)).map_err(io)?,
            None => {
                writeln!(out, "  route:          {}", s(&r["route"]["kind"])).map_err(io)?;
                for hop in r["route"]["hops"].as_array().into_iter().flatten() {
                    let addrs: Vec<String> = hop["addrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    writeln!(
                        out,
                        "    {:>5} {} {}",
                        hop["preference"],
                        s(&hop["name"]),
                        addrs.join(" ")
                    )
                    .map_err(io)?;
                }
            }
        }
    }
    Ok(())
}

/// `queue release ID...`: releases held recipients.
pub async fn queue_release(settings: &Settings, ids: &[String]) -> Result<String, CliError> {
    let mut done = Vec::new();
    for id in ids {
        match control::call(
            &settings.server.control_socket,
            &Request::Release { id: id.clone() },
        )
        .await?
        {
            Reply::Ok { detail, .. } => done.push(detail),
            Reply::Error { detail } => return Err(CliError::Other(detail)),
        }
    }
    Ok(done.join("\n"))
}

/// `sealgate portal revoke ID`: what was done, for the operator.
pub async fn portal_revoke(settings: &Settings, id: &str) -> Result<String, CliError> {
    if settings.portal.is_none() {
        return Err(CliError::Other(
            "the configuration has no [portal] section: nothing is stored".into(),
        ));
    }
    let id = id.trim().to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::Other(format!(
            "`{id}` is not a portal message id (32 hexadecimal characters)"
        )));
    }
    // No master key needed: revoking destroys a key, it opens none.
    let store = crate::portal::PortalStore::open_keyless(&settings.audit.database_url)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    match store.revoke(&id).await {
        Ok(true) => Ok(format!(
            "portal message {id} revoked: its key is destroyed and its content deleted"
        )),
        Ok(false) => Err(CliError::Other(format!(
            "no readable portal message {id} (unknown, expired or already revoked)"
        ))),
        Err(e) => Err(CliError::Other(e.to_string())),
    }
}

/// `keys import|list|remove|trust`.
pub async fn keys(
    settings: &Settings,
    action: KeysAction,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let keyring = crate::probe::keys::Keyring::open(
        &settings.audit.database_url,
        None,
        None,
        settings.probe.timeout,
    )
    .await
    .map_err(|e| CliError::Other(e.to_string()))?;
    let io = |e: std::io::Error| CliError::Other(e.to_string());
    let err = |e: crate::probe::keys::KeyError| CliError::Other(e.to_string());
    match action {
        KeysAction::Import(path) => {
            let data = std::fs::read(&path)
                .map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?;
            for k in keyring.import(&data).await.map_err(err)? {
                match &k.unusable {
                    None => writeln!(out, "imported {} for {}", k.fingerprint, k.address),
                    Some(why) => writeln!(
                        out,
                        "imported {} for {}, but it cannot be used to encrypt: {why} (stored, never used; import a valid key for {})",
                        k.fingerprint, k.address, k.address
                    ),
                }
                .map_err(io)?;
            }
        }
        KeysAction::List => {
            for k in keyring.list().await.map_err(err)? {
                writeln!(
                    out,
                    "{}  {}  {}  {}",
                    k.fingerprint, k.address, k.source, k.added_at
                )
                .map_err(io)?;
            }
        }
        KeysAction::Remove(fpr) => {
            let n = keyring.remove(&fpr).await.map_err(err)?;
            if n == 0 {
                return Err(CliError::Other(format!("no key {fpr} in the store")));
            }
            writeln!(out, "removed {fpr}").map_err(io)?;
        }
        KeysAction::Trust(addr, fpr) => {
            keyring.trust(&addr, &fpr, "operator").await.map_err(err)?;
            writeln!(out, "{fpr} is now the confirmed key for {addr}").map_err(io)?;
        }
    }
    Ok(())
}

/// What `keys` does.
pub enum KeysAction {
    Import(std::path::PathBuf),
    List,
    Remove(String),
    Trust(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_json_listing_is_the_array_printed_at_once() {
        let mut msgs = vec![
            QueuedMessage::for_test("a@example.test", &["b@example.test"]),
            QueuedMessage::for_test("", &["c@example.test", "d@example.test"]),
            QueuedMessage::for_test("e@example.test", &[]),
        ];
        msgs[1].recipients[0].last_error = Some("451 4.3.0 \"later\"\nagain".into());
        for n in 0..=msgs.len() {
            let mut out = Vec::new();
            let mut l = Listing::new(&mut out, true);
            for (i, m) in msgs[..n].iter().enumerate() {
                l.item(m, i == 1).unwrap();
            }
            l.finish().unwrap();
            let whole: Vec<_> = msgs[..n]
                .iter()
                .enumerate()
                .map(|(i, m)| serde_json::json!({ "message": m, "in_flight": i == 1 }))
                .collect();
            let want = format!("{}\n", serde_json::to_string_pretty(&whole).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), want, "{n} message(s)");
        }
    }

    #[test]
    fn a_text_listing_counts_what_it_wrote() {
        let m = QueuedMessage::for_test("", &["b@example.test"]);
        let mut out = Vec::new();
        Listing::new(&mut out, false).finish().unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "Mail queue is empty\n");
        let mut out = Vec::new();
        let mut l = Listing::new(&mut out, false);
        l.item(&m, true).unwrap();
        l.item(&m, false).unwrap();
        l.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("{}*", m.id)), "{text}");
        assert!(text.contains("  <>\n"), "{text}");
        assert!(text.ends_with("-- 2 message(s)\n"), "{text}");
    }
}
