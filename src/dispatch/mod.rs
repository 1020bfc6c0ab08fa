//! One delivery attempt of one message, in data-path order: the policy
//! decides for every due recipient (`engine`), the recipients to deliver
//! are grouped by destination; each group is planned (`outbound`: route,
//! MTA-STS, DANE), its message prepared (`encrypt`) and sent
//! (`outbound`); every outcome becomes an
//! audit event (`audit`), and the queue applies the outcomes (`queue`).
//! The scheduler hands due messages to attempts, a bounded number at once.
//!
//! `server` only wires this to the other stages and tasks.

mod engine;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, watch};

pub use self::engine::{Engine, open_keyring};
use crate::audit::{AuditEvent, Auditor};
use crate::encrypt::prepare::{Encryptors, Unprepared};
use crate::outbound::{Deliverer, Group, RecipientReport};
use crate::policy::{Action, Decision, Method, TlsRequirement};
use crate::queue::{Queue, QueuedMessage, RecipientOutcome, RecipientStatus, Spool, Verdict};

/// Hands due messages to delivery, at most `queue.max_active` at once.
pub async fn schedule(
    queue: Queue,
    deliverer: Arc<Deliverer>,
    policy: Engine,
    auditor: Auditor,
    mut stop: watch::Receiver<bool>,
) {
    let active = Arc::new(Semaphore::new(queue.settings().max_active));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = active.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let Some(msg) = queue.next_due(&mut stop).await else {
            break;
        };
        let queue_for_release = queue.clone();
        let (q, d, p, a) = (
            queue.clone(),
            deliverer.clone(),
            policy.clone(),
            auditor.clone(),
        );
        running.spawn(async move {
            let id = msg.id.clone();
            // A bug in one delivery must not strand the message in flight.
            let task = tokio::spawn(async move { attempt(&q, &d, &p, &a, msg).await });
            if let Err(e) = task.await {
                tracing::error!(queue_id = %id, error = %e, "delivery task failed; the message stays queued and is tried again after a backoff");
                queue_for_release.release_after_failure(&id);
            }
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    // Deliveries in progress finish (bounded); what they do not finish
    // stays in the spool and is tried again at the next start.
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        running.abort_all();
    }
}

/// The recipients in `work` (index into `msg.recipients`, decision)
/// through the encrypt and outbound stages, one report per recipient:
/// grouped by destination, TLS requirement and copy (recipients whose
/// copy differs cannot share a transaction), each group planned
/// (`outbound`), its message prepared (`encrypt`), then sent (`outbound`).
async fn deliver(
    deliverer: &Deliverer,
    encryptors: &Encryptors,
    msg: &QueuedMessage,
    spool: &Spool,
    work: Vec<(usize, Decision)>,
) -> Vec<RecipientReport> {
    type Key = (String, TlsRequirement, Option<String>, Method);
    let mut groups: HashMap<Key, Vec<(usize, Decision)>> = HashMap::new();
    for (index, decision) in work {
        let key = (
            deliverer.destination(msg, index),
            decision.tls,
            decision.strip_tag.clone(),
            decision.method,
        );
        groups.entry(key).or_default().push((index, decision));
    }
    let jobs = groups.into_iter().map(|((dest, ..), members)| async move {
        let planned = match deliverer.plan_group(msg, Group { dest, members }).await {
            Ok(p) => p,
            Err(reports) => return reports,
        };
        // What the group gets (end-to-end encryption: one copy encrypted
        // to every member's key).
        let strip_tag = planned
            .members()
            .first()
            .and_then(|m| m.1.strip_tag.clone());
        match encryptors.prepare(msg, planned.members(), strip_tag.as_deref()) {
            Ok(prepared) => deliverer.send_group(msg, spool, planned, prepared).await,
            Err(Unprepared::Held(reason)) => planned.refuse(RecipientOutcome {
                verdict: Verdict::Held,
                reply: reason,
                enhanced: Some("4.7.0".into()),
                remote: None,
            }),
            Err(Unprepared::Later(reason)) => {
                planned.refuse(crate::outbound::classify::local(reason))
            }
        }
    });
    futures_util::future::join_all(jobs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One delivery attempt of one message: decide, deliver, audit, apply.
pub async fn attempt(
    queue: &Queue,
    deliverer: &Deliverer,
    engine: &Engine,
    auditor: &Auditor,
    msg: QueuedMessage,
) {
    let now = Utc::now();
    let due: Vec<(usize, String, bool)> = msg
        .open_recipients()
        .filter(|(_, r)| r.status != RecipientStatus::Held)
        .filter(|(_, r)| r.next_attempt.is_none_or(|t| t <= now))
        .map(|(i, r)| (i, r.address.clone(), r.released))
        .collect();
    if due.is_empty() {
        if queue.needs_persist(&msg.id) {
            // Outcomes kept in memory after a failed write: write them now.
            if let Err(e) = queue.complete(msg.clone(), &[]).await {
                tracing::error!(queue_id = %msg.id, error = %e, "cannot write the queue state yet; tried again after a backoff");
            }
        } else {
            queue.release(&msg.id);
        }
        return;
    }
    let decisions = engine.decide(&msg, queue.spool(), &due).await;
    let mut work = Vec::new();
    let mut reports = Vec::new();
    for (index, decision) in decisions {
        let outcome = match decision.action {
            Action::Deliver => {
                work.push((index, decision));
                continue;
            }
            Action::Reject => RecipientOutcome {
                verdict: Verdict::Permanent,
                reply: format!("rejected by policy: {}", decision.reason),
                enhanced: Some("5.7.1".into()),
                remote: None,
            },
            Action::Hold => RecipientOutcome {
                verdict: Verdict::Held,
                reply: decision.reason.clone(),
                enhanced: Some("4.7.0".into()),
                remote: None,
            },
            Action::Wait => RecipientOutcome {
                verdict: Verdict::Temporary,
                reply: decision.reason.clone(),
                enhanced: Some("4.7.5".into()),
                remote: None,
            },
        };
        tracing::info!(queue_id = %msg.id, recipient_index = index, rule = %decision.rule, action = ?decision.action, "policy decision");
        reports.push(RecipientReport {
            index,
            decision,
            outcome,
            evidence: Default::default(),
        });
    }
    let mut ticket = None;
    if !work.is_empty() {
        let rcpts = work
            .iter()
            .map(|(i, d)| crate::queue::attempts::AttemptRecipient {
                index: *i,
                address: msg
                    .recipients
                    .get(*i)
                    .map(|r| r.address.clone())
                    .unwrap_or_default(),
                method: d.method.as_str().to_string(),
                tls: d.tls.as_str().to_string(),
                rule: d.rule.clone(),
                policy_version: d.policy_version.clone(),
            })
            .collect();
        match queue.begin_attempt(&msg, rcpts).await {
            Ok(t) => ticket = Some(t),
            Err(e) => {
                tracing::error!(queue_id = %msg.id, error = %e, "cannot log the delivery attempt; nothing was sent, the message waits and is tried again after a backoff");
                queue.release_after_failure(&msg.id);
                return;
            }
        }
        reports.extend(deliver(deliverer, engine.encryptors(), &msg, queue.spool(), work).await);
    }
    let settled = queue.settle(
        &msg,
        reports
            .iter()
            .map(|r| (r.index, r.outcome.clone()))
            .collect(),
    );
    let mut events = reports
        .iter()
        .zip(&settled)
        .map(|(report, (_, outcome))| audit_event(&msg, report, outcome))
        .collect::<std::collections::VecDeque<_>>();
    while let Some(event) = events.front() {
        if let Err(e) = auditor.record(event.clone()).await {
            // The outcomes are real (a remote may have said 250): keep them
            // in memory so nobody gets the message twice, and journal the
            // rest as soon as the journal takes them.
            tracing::error!(queue_id = %msg.id, error = %e, "cannot journal the audit event; the outcome is kept in memory and journaled when possible");
            queue.keep_outcomes_unsaved(msg, &settled);
            tokio::spawn(journal_later(
                queue.clone(),
                auditor.clone(),
                events,
                ticket,
            ));
            return;
        }
        events.pop_front();
    }
    if let Err(e) = queue.complete(msg.clone(), &settled).await {
        // The state stays in memory and is written after a backoff; the
        // attempt itself is fully audited.
        tracing::error!(queue_id = %msg.id, error = %e, "cannot update the spool after delivery; the state is kept in memory and written after a backoff");
    }
    if let Some(t) = ticket {
        queue.finish_attempt(t);
    }
}

/// Journals audit events that the journal refused, retrying with a growing
/// pause; the attempt is done once they are in. If the daemon stops first,
/// the attempt log turns the attempt into "unknown" rows at the next start.
async fn journal_later(
    queue: Queue,
    auditor: Auditor,
    mut events: std::collections::VecDeque<AuditEvent>,
    ticket: Option<crate::queue::AttemptTicket>,
) {
    let mut pause = Duration::from_secs(1);
    while let Some(event) = events.front() {
        match auditor.record(event.clone()).await {
            Ok(()) => {
                events.pop_front();
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
    if let Some(t) = ticket {
        queue.finish_attempt(t);
    }
}

/// Records, for each attempt whose audit events a crash lost, that its
/// recipients may or may not have received the message (those still queued
/// are delivered again: at least once). Then the old attempt log can go.
pub async fn reconcile(queue: &Queue, auditor: &Auditor, unresolved: &[crate::queue::Unresolved]) {
    let mut recipients = 0;
    for attempt in unresolved {
        for r in &attempt.rcpts {
            let event = AuditEvent {
                event_id: AuditEvent::new_id(),
                timestamp: Utc::now(),
                queue_id: attempt.id.0.clone(),
                message_id: attempt.message_id.clone(),
                sender: attempt.sender.clone(),
                recipient: r.address.clone(),
                outcome: "unknown".into(),
                method: r.method.clone(),
                tls_requirement: r.tls.clone(),
                policy_rule: r.rule.clone(),
                policy_version: r.policy_version.clone(),
                remote_host: None,
                remote_ip: None,
                tls_version: None,
                tls_cipher: None,
                smtp_reply: Some(
                    "delivered or not known: sealgate stopped after this attempt began and before its outcome was journaled".into(),
                ),
                body_sha256: None,
                evidence: serde_json::json!({
                    "attempt": attempt.attempt,
                    "attempt_started": attempt.at.to_rfc3339(),
                    "still_queued": queue.get(&attempt.id).is_some(),
                }),
            };
            if let Err(e) = auditor.record(event).await {
                tracing::error!(error = %e, "cannot journal an interrupted delivery attempt; the attempt log is kept and read again at the next start");
                return;
            }
            recipients += 1;
        }
    }
    if recipients > 0 {
        tracing::warn!(
            recipients,
            "delivery attempts interrupted by a stop were recorded as delivered-or-not-known; recipients still queued are tried again"
        );
    }
    if let Err(e) = queue.forget_attempts_before_start() {
        tracing::warn!(error = %e, "cannot remove the old attempt log; its attempts are reported again at the next start");
    }
}

fn audit_event(
    msg: &QueuedMessage,
    report: &RecipientReport,
    outcome: &crate::queue::RecipientOutcome,
) -> AuditEvent {
    let ev = &report.evidence;
    let method = if ev.method.is_empty() {
        report.decision.method.as_str().to_string()
    } else {
        ev.method.clone()
    };
    AuditEvent {
        event_id: AuditEvent::new_id(),
        timestamp: Utc::now(),
        queue_id: msg.id.0.clone(),
        message_id: msg.message_id.clone(),
        sender: msg.sender.clone(),
        recipient: msg
            .recipients
            .get(report.index)
            .map(|r| r.address.clone())
            .unwrap_or_default(),
        outcome: match outcome.verdict {
            Verdict::Delivered => "delivered",
            Verdict::Temporary => "deferred",
            Verdict::Permanent => "bounced",
            Verdict::Held => "held",
        }
        .into(),
        method,
        tls_requirement: report.decision.tls.as_str().into(),
        policy_rule: report.decision.rule.clone(),
        policy_version: report.decision.policy_version.clone(),
        remote_host: ev.remote_host.clone(),
        remote_ip: ev.remote_ip.clone(),
        tls_version: ev.tls.as_ref().map(|t| t.version.clone()),
        tls_cipher: ev.tls.as_ref().map(|t| t.cipher.clone()),
        smtp_reply: Some(outcome.reply.clone()),
        body_sha256: ev.body_sha256.clone(),
        evidence: serde_json::json!({
            "decision": report.decision,
            "attempt": ev,
            "status": outcome.enhanced,
            "cert_verified": ev.tls.as_ref().map(|t| t.cert_verified),
        }),
    }
}
