//! The in-memory schedule over the spool: which message is due when, which
//! are being delivered, and how delivery outcomes change recipient state.
//!
//! A small active window over a large deferred queue (as in Postfix): the
//! schedule is a time-ordered index, so a backlog of deferred mail costs
//! nothing until it is due, and new mail is due at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::attempts::{AttemptLog, AttemptTicket};
use super::spool::{Recovered, Spool, SpoolError};
use super::{QueueId, QueuedMessage, RecipientStatus};
use crate::config::QueueSettings;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("no message {0} in the queue")]
    NotFound(String),
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
}

/// How one delivery attempt ended for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The remote accepted the recipient and the message.
    Delivered,
    /// Try again later (4xx, network, DNS or TLS trouble, policy hold).
    Temporary,
    /// Will never work (5xx); bounce.
    Permanent,
    /// Quarantined by policy until an operator releases it.
    Held,
}

/// The outcome for one recipient, as the queue needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub verdict: Verdict,
    /// Remote reply or our own reason, one line.
    pub reply: String,
    /// Enhanced status code (`5.1.1`), when known.
    pub enhanced: Option<String>,
    /// The remote host it concerned, when any.
    pub remote: Option<String>,
}

impl RecipientOutcome {
    /// The outcome of a recipient whose lifetime in the queue ran out.
    pub fn expired(last: &RecipientOutcome) -> RecipientOutcome {
        RecipientOutcome {
            verdict: Verdict::Permanent,
            reply: format!("delivery time expired; last error: {}", last.reply),
            enhanced: Some("4.4.7".into()),
            remote: last.remote.clone(),
        }
    }
}

struct Slot {
    msg: QueuedMessage,
    in_flight: bool,
    /// Attempts in a row that failed on our side (journal, spool, a bug)
    /// since the state was last persisted: each backs off further.
    failures: u32,
    /// Outcomes are applied in memory but not yet on disk: write them at
    /// this time (even if no recipient is due then).
    persist_at: Option<DateTime<Utc>>,
    /// The key under which the message sits in `due`, if scheduled.
    due_key: Option<(DateTime<Utc>, QueueId)>,
}

#[derive(Default)]
struct State {
    messages: HashMap<QueueId, Slot>,
    due: BTreeSet<(DateTime<Utc>, QueueId)>,
}

impl State {
    fn schedule(&mut self, id: &QueueId) {
        let Some(slot) = self.messages.get_mut(id) else {
            return;
        };
        if let Some(key) = slot.due_key.take() {
            self.due.remove(&key);
        }
        if slot.in_flight {
            return;
        }
        let at = match (slot.msg.next_due(), slot.persist_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = at {
            let key = (at, id.clone());
            self.due.insert(key.clone());
            slot.due_key = Some(key);
        }
    }
}

struct Inner {
    spool: Spool,
    attempts: AttemptLog,
    settings: QueueSettings,
    hostname: String,
    state: Mutex<State>,
    wake: Notify,
}

/// The queue handle, cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    /// Opens the queue over `spool`, recovering every complete message.
    pub fn open(
        spool: Spool,
        settings: QueueSettings,
        hostname: String,
    ) -> Result<(Queue, Recovered), QueueError> {
        let mut recovered = spool.recover()?;
        let (attempts, unresolved) = AttemptLog::open(&spool.root().join("attempts"))?;
        recovered.unresolved = unresolved;
        let queue = Queue {
            inner: Arc::new(Inner {
                spool,
                attempts,
                settings,
                hostname,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        };
        {
            let mut st = queue.lock();
            for msg in recovered.messages.drain(..) {
                let id = msg.id.clone();
                st.messages.insert(
                    id.clone(),
                    Slot {
                        msg,
                        in_flight: false,
                        failures: 0,
                        persist_at: None,
                        due_key: None,
                    },
                );
                st.schedule(&id);
            }
        }
        Ok((queue, recovered))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed
        // in a way that loses mail (the spool is the truth), so go on.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spool under this queue.
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// The queue settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.inner.settings
    }

    /// Commits a received message (its content already fsynced): writes the
    /// envelope, which makes it durable, then schedules it at once.
    pub async fn enqueue(&self, msg: QueuedMessage) -> Result<(), QueueError> {
        self.inner.spool.write_envelope(&msg).await?;
        let id = msg.id.clone();
        {
            let mut st = self.lock();
            st.messages.insert(
                id.clone(),
                Slot {
                    msg,
                    in_flight: false,
                    failures: 0,
                    persist_at: None,
                    due_key: None,
                },
            );
            st.schedule(&id);
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Waits until a message is due and hands it out, marked in flight.
    /// Returns `None` when `stop` resolves first.
    pub async fn next_due(
        &self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<QueuedMessage> {
        loop {
            let notified = self.inner.wake.notified();
            let wait = {
                let mut st = self.lock();
                let now = Utc::now();
                match st.due.first().cloned() {
                    Some((at, id)) if at <= now => {
                        st.due.remove(&(at, id.clone()));
                        if let Some(slot) = st.messages.get_mut(&id) {
                            slot.due_key = None;
                            slot.in_flight = true;
                            return Some(slot.msg.clone());
                        }
                        continue;
                    }
                    Some((at, _)) => (at - now).to_std().unwrap_or(Duration::ZERO),
                    None => Duration::from_secs(3600),
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return None,
            }
            if *stop.borrow() {
                return None;
            }
        }
    }

    /// Applies the outcomes of one delivery attempt, persists the new state
    /// (or removes the message when every recipient is final), queues a DSN
    /// for bounced recipients, and reschedules what is left.
    ///
    /// `outcomes` must already be settled with [`Queue::settle`].
    pub async fn complete(
        &self,
        mut msg: QueuedMessage,
        outcomes: &[(usize, RecipientOutcome)],
    ) -> Result<(), QueueError> {
        self.apply(&mut msg, outcomes);
        if let Err(e) = self.persist(&mut msg).await {
            self.keep_unsaved(msg);
            return Err(e);
        }
        Ok(())
    }

    /// The state transitions of one attempt's outcomes.
    fn apply(&self, msg: &mut QueuedMessage, outcomes: &[(usize, RecipientOutcome)]) {
        let now = Utc::now();
        for (idx, out) in outcomes {
            let Some(r) = msg.recipients.get_mut(*idx) else {
                continue;
            };
            r.attempts = r.attempts.saturating_add(1);
            r.last_error = Some(out.reply.clone());
            r.last_status = out.enhanced.clone();
            r.last_remote = out.remote.clone();
            r.next_attempt = None;
            r.status = match out.verdict {
                Verdict::Delivered => {
                    r.last_error = None;
                    RecipientStatus::Delivered
                }
                Verdict::Permanent => RecipientStatus::Bounced,
                Verdict::Held => RecipientStatus::Held,
                Verdict::Temporary => {
                    r.next_attempt = Some(later(now, self.backoff(r.attempts)));
                    RecipientStatus::Deferred
                }
            };
        }
    }

    /// Writes the state (or removes a finished message), queueing DSNs
    /// first, and reschedules.
    async fn persist(&self, msg: &mut QueuedMessage) -> Result<(), QueueError> {
        self.send_dsns(msg).await?;
        let id = msg.id.clone();
        if msg.is_done() {
            self.inner.spool.remove(&id).await?;
            self.lock().messages.remove(&id);
        } else {
            self.inner.spool.write_envelope(msg).await?;
            let mut st = self.lock();
            if let Some(slot) = st.messages.get_mut(&id) {
                slot.msg = msg.clone();
                slot.in_flight = false;
                slot.failures = 0;
                slot.persist_at = None;
                st.schedule(&id);
            }
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Keeps a state that could not be written in memory, so that nobody
    /// who already has the message gets it again and no DSN is queued
    /// twice, and backs off before writing it again.
    fn keep_unsaved(&self, msg: QueuedMessage) {
        let id = msg.id.clone();
        {
            let mut st = self.lock();
            if let Some(slot) = st.messages.get_mut(&id) {
                slot.msg = msg;
            }
        }
        self.back_off(&id, true);
    }

    /// Applies an attempt's outcomes in memory only (their audit events
    /// could not be journaled yet), and backs off.
    pub fn keep_outcomes_unsaved(
        &self,
        mut msg: QueuedMessage,
        outcomes: &[(usize, RecipientOutcome)],
    ) {
        self.apply(&mut msg, outcomes);
        self.keep_unsaved(msg);
    }

    /// Whether a message has state in memory that is not on disk yet.
    pub fn needs_persist(&self, id: &QueueId) -> bool {
        self.lock()
            .messages
            .get(id)
            .is_some_and(|s| s.persist_at.is_some())
    }

    /// Returns a message to the schedule unchanged (delivery could not even
    /// start, e.g. shutdown).
    pub fn release(&self, id: &QueueId) {
        let mut st = self.lock();
        if let Some(slot) = st.messages.get_mut(id) {
            slot.in_flight = false;
        }
        st.schedule(id);
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Returns a message whose attempt failed on our side (the attempt log,
    /// the audit journal or the spool could not be written, or the
    /// delivery task failed): nothing of its state changes on disk, but it
    /// is not due again before a backoff that grows with every such
    /// failure. A failure is never a fast path.
    pub fn release_after_failure(&self, id: &QueueId) {
        self.back_off(id, false);
    }

    fn back_off(&self, id: &QueueId, unsaved: bool) {
        let now = Utc::now();
        let mut st = self.lock();
        if let Some(slot) = st.messages.get_mut(id) {
            slot.in_flight = false;
            slot.failures = slot.failures.saturating_add(1);
            let tried = slot.msg.open_recipients().map(|(_, r)| r.attempts).max();
            let at = later(
                now,
                self.backoff(tried.unwrap_or(0).saturating_add(slot.failures)),
            );
            if unsaved || slot.persist_at.is_some() {
                slot.persist_at = Some(at);
            }
            for r in slot.msg.recipients.iter_mut() {
                if !r.status.is_final() && r.status != RecipientStatus::Held {
                    r.next_attempt = Some(r.next_attempt.map_or(at, |t| t.max(at)));
                }
            }
        }
        st.schedule(id);
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Logs durably that recipients `indices` of `msg` are about to be
    /// tried; nothing may be sent unless this succeeded.
    pub async fn begin_attempt(
        &self,
        msg: &QueuedMessage,
        rcpts: Vec<super::attempts::AttemptRecipient>,
    ) -> Result<AttemptTicket, QueueError> {
        Ok(self.inner.attempts.begin(msg, rcpts).await?)
    }

    /// The attempt's outcome is in the spool ([`Queue::complete`] returned).
    pub fn finish_attempt(&self, ticket: AttemptTicket) {
        self.inner.attempts.finish(ticket);
    }

    /// The unresolved attempts found at start are in the audit trail: the
    /// attempt log written before this start can go.
    pub fn forget_attempts_before_start(&self) -> Result<(), QueueError> {
        Ok(self.inner.attempts.forget_before_start()?)
    }

    /// A copy of message `id`, if queued.
    pub fn get(&self, id: &QueueId) -> Option<QueuedMessage> {
        self.lock().messages.get(id).map(|s| s.msg.clone())
    }

    /// Turns temporary failures of recipients older than `max_age` into
    /// permanent ones (RFC 5321 section 4.5.4.1: give up, tell the sender).
    pub fn settle(
        &self,
        msg: &QueuedMessage,
        outcomes: Vec<(usize, RecipientOutcome)>,
    ) -> Vec<(usize, RecipientOutcome)> {
        let age = (Utc::now() - msg.received_at).to_std().unwrap_or_default();
        let expired = age >= self.inner.settings.max_age;
        outcomes
            .into_iter()
            .map(|(i, o)| {
                if expired && o.verdict == Verdict::Temporary {
                    (i, RecipientOutcome::expired(&o))
                } else {
                    (i, o)
                }
            })
            .collect()
    }

    /// Delay before attempt `attempts + 1`: exponential from `retry_base`,
    /// capped at `retry_max`, with ±20 % jitter so retries do not align.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let exp = attempts.saturating_sub(1).min(30);
        let base = s.retry_base.saturating_mul(1u32 << exp).min(s.retry_max);
        base.mul_f64(0.8 + fastrand::f64() * 0.4)
    }

    async fn send_dsns(&self, msg: &mut QueuedMessage) -> Result<(), QueueError> {
        let newly: Vec<usize> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == RecipientStatus::Bounced && !r.dsn_sent)
            .map(|(i, _)| i)
            .collect();
        if newly.is_empty() {
            return Ok(());
        }
        // Never a DSN about a DSN (null sender), RFC 5321 section 4.5.5.
        if !msg.sender.is_empty() {
            let headers = self
                .inner
                .spool
                .read_content(&msg.id, 256 * 1024)
                .await
                .unwrap_or_default();
            let bounced: Vec<&super::Recipient> = newly
                .iter()
                .filter_map(|&i| msg.recipients.get(i))
                .collect();
            let dsn = super::dsn::build(&self.inner.hostname, msg, &bounced, &headers);
            let id = self
                .enqueue_local(
                    "",
                    &msg.sender,
                    &dsn.content,
                    Some(dsn.message_id.clone()),
                    msg.smtputf8 || msg.body_8bit,
                    msg.smtputf8,
                )
                .await?;
            tracing::info!(queue_id = %msg.id, dsn_id = %id, recipients = bounced.len(), "bounce: delivery status notification queued for the sender");
        }
        for i in newly {
            if let Some(r) = msg.recipients.get_mut(i) {
                r.dsn_sent = true;
            }
        }
        Ok(())
    }

    /// Queues a message sealgate itself generated (a DSN, a TLS report):
    /// written and fsynced like received mail.
    pub async fn enqueue_local(
        &self,
        sender: &str,
        recipient: &str,
        content: &[u8],
        message_id: Option<String>,
        body_8bit: bool,
        smtputf8: bool,
    ) -> Result<QueueId, QueueError> {
        let mut out = QueuedMessage {
            id: QueueId::new(),
            received_at: Utc::now(),
            sender: sender.to_string(),
            recipients: vec![super::Recipient::new(recipient.to_string())],
            message_id,
            size: 0,
            content_sha256: String::new(),
            body_8bit,
            smtputf8,
            client: super::ClientInfo {
                ip: "127.0.0.1".into(),
                helo: self.inner.hostname.clone(),
                auth_user: None,
                tls: false,
                connector: None,
            },
            local: true,
            requiretls: false,
        };
        let id = out.id.clone();
        let stored = async {
            let mut w = self.inner.spool.create_content(&out.id).await?;
            w.write(content).await?;
            let (size, sha) = w.finish().await?;
            out.size = size;
            out.content_sha256 = sha;
            self.enqueue(out).await
        }
        .await;
        if let Err(e) = stored {
            // No orphan left behind on a full disk.
            let _ = self.inner.spool.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// A snapshot of every message in the queue.
    pub fn list(&self) -> Vec<(QueuedMessage, bool)> {
        let st = self.lock();
        let mut all: Vec<_> = st
            .messages
            .values()
            .map(|s| (s.msg.clone(), s.in_flight))
            .collect();
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        all
    }

    /// Number of messages in the queue.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every deferred recipient due now.
    pub fn flush(&self) -> usize {
        let mut st = self.lock();
        let ids: Vec<QueueId> = st.messages.keys().cloned().collect();
        let mut n = 0;
        for id in &ids {
            if let Some(slot) = st.messages.get_mut(id) {
                for r in slot
                    .msg
                    .recipients
                    .iter_mut()
                    .filter(|r| !r.status.is_final())
                {
                    r.next_attempt = None;
                }
                n += 1;
            }
            st.schedule(id);
        }
        drop(st);
        self.inner.wake.notify_one();
        n
    }

    /// Releases held recipients of a message (an operator's decision):
    /// they are tried at once, and hold rules no longer apply to them.
    pub async fn release_held(&self, id: &QueueId) -> Result<usize, QueueError> {
        let msg = {
            let mut st = self.lock();
            let slot = match st.messages.get_mut(id) {
                None => return Err(QueueError::NotFound(id.0.clone())),
                Some(s) if s.in_flight => return Err(QueueError::Busy(id.0.clone())),
                Some(s) => s,
            };
            let mut n = 0;
            for r in slot
                .msg
                .recipients
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Held)
            {
                r.status = RecipientStatus::Pending;
                r.released = true;
                r.next_attempt = None;
                n += 1;
            }
            if n == 0 {
                return Ok(0);
            }
            slot.msg.clone()
        };
        self.inner.spool.write_envelope(&msg).await?;
        let n = msg
            .recipients
            .iter()
            .filter(|r| r.released && r.status == RecipientStatus::Pending)
            .count();
        self.lock().schedule(id);
        self.inner.wake.notify_one();
        Ok(n)
    }

    /// Deletes a message without delivering it (an operator's decision).
    pub async fn remove(&self, id: &QueueId) -> Result<(), QueueError> {
        {
            let mut st = self.lock();
            match st.messages.get(id) {
                None => return Err(QueueError::NotFound(id.0.clone())),
                Some(s) if s.in_flight => return Err(QueueError::Busy(id.0.clone())),
                Some(_) => {}
            }
            if let Some(slot) = st.messages.remove(id) {
                if let Some(key) = slot.due_key {
                    st.due.remove(&key);
                }
            }
        }
        self.inner.spool.remove(id).await?;
        Ok(())
    }
}

/// `now + delay`, saturating at the far future rather than overflowing.
fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::SpoolKey;

    fn settings() -> QueueSettings {
        QueueSettings {
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 86400),
            max_active: 10,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool, settings(), "gw.example.test".into()).unwrap();
        let cases = [
            (1, 60.0),
            (2, 120.0),
            (3, 240.0),
            (10, 3600.0),
            (40, 3600.0),
        ];
        for (attempts, want) in cases {
            let got = q.backoff(attempts).as_secs_f64();
            assert!(
                got >= want * 0.8 - 0.001 && got <= want * 1.2 + 0.001,
                "attempt {attempts}: {got}"
            );
        }
    }

    #[tokio::test]
    async fn deferred_then_delivered_removes_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test", "c@example.test"]);
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
        q.enqueue(msg.clone()).await.unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let due = q.next_due(&mut stop).await.unwrap();
        let temp = RecipientOutcome {
            verdict: Verdict::Temporary,
            reply: "451 4.3.0 later".into(),
            enhanced: Some("4.3.0".into()),
            remote: None,
        };
        let ok = RecipientOutcome {
            verdict: Verdict::Delivered,
            reply: "250 ok".into(),
            enhanced: None,
            remote: None,
        };
        q.complete(due, &[(0, ok.clone()), (1, temp)])
            .await
            .unwrap();
        let list = q.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0.recipients[1].status, RecipientStatus::Deferred);
        // Survives a restart with its state.
        let (q2, rec) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        assert_eq!(rec.messages.len(), 0, "drained into the schedule");
        assert_eq!(
            q2.list()[0].0.recipients[0].status,
            RecipientStatus::Delivered
        );
        q2.flush();
        let due = q2.next_due(&mut stop).await.unwrap();
        q2.complete(due, &[(1, ok)]).await.unwrap();
        assert!(q2.is_empty());
        assert!(spool.list_ids().unwrap().is_empty());
    }

    /// A failure on our side (journal, spool, a panic) is never a fast path:
    /// the message is not due again before a backoff that grows.
    #[tokio::test]
    async fn a_failed_attempt_backs_off_and_each_failure_longer() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
        q.enqueue(msg.clone()).await.unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let mut last = Utc::now();
        for failures in 1..=3u32 {
            let due = tokio::time::timeout(Duration::from_secs(1), q.next_due(&mut stop)).await;
            if failures == 1 {
                assert!(due.unwrap().is_some());
            } else {
                assert!(due.is_err(), "not handed out again before its backoff");
                q.lock().messages.get_mut(&msg.id).unwrap().in_flight = true;
            }
            q.release_after_failure(&msg.id);
            let next = q.get(&msg.id).unwrap().next_due().unwrap();
            let wait = (next - Utc::now()).num_seconds();
            let base = 60i64 << (failures - 1);
            assert!(
                wait as f64 >= base as f64 * 0.8 - 1.0,
                "failure {failures}: {wait}s"
            );
            assert!(next >= last);
            last = next;
        }
        // Nothing of it reached the disk: the envelope is as it was.
        assert_eq!(spool.read_envelope(&msg.id).unwrap(), msg);
    }

    #[tokio::test]
    async fn bounce_queues_a_dsn_to_the_sender_but_never_to_null_sender() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([1; 32])).unwrap();
        let (q, _) = Queue::open(spool.clone(), settings(), "gw.example.test".into()).unwrap();
        let (_tx, mut stop) = tokio::sync::watch::channel(false);
        let perm = RecipientOutcome {
            verdict: Verdict::Permanent,
            reply: "550 5.1.1 no such user".into(),
            enhanced: Some("5.1.1".into()),
            remote: Some("mx.example.test".into()),
        };
        for sender in ["", "a@example.test"] {
            let msg = QueuedMessage::for_test(sender, &["b@example.test"]);
            let mut w = spool.create_content(&msg.id).await.unwrap();
            w.write(b"Subject: secret\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n")
                .await
                .unwrap();
            w.finish().await.unwrap();
            q.enqueue(msg).await.unwrap();
            let due = q.next_due(&mut stop).await.unwrap();
            q.complete(due, &[(0, perm.clone())]).await.unwrap();
        }
        let list = q.list();
        assert_eq!(list.len(), 1, "one DSN, for the non-null sender");
        let dsn = &list[0].0;
        assert_eq!(dsn.sender, "");
        assert_eq!(dsn.recipients[0].address, "a@example.test");
        let body =
            String::from_utf8(spool.read_content(&dsn.id, usize::MAX).await.unwrap()).unwrap();
        assert!(body.contains("multipart/report"));
        assert!(body.contains("Final-Recipient: rfc822;b@example.test"));
        assert!(!body.contains("secret"), "no subject (PHI) in the DSN");
    }
}
