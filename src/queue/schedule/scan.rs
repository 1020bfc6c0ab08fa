//! The scanner: brings due messages that are on disk only into the
//! window.
//!
//! It sleeps while no message on disk may be due (`State::disk_due`) or
//! the window has no room (neither free slots nor messages that could make
//! way), and walks the folder at most every `[queue] scan_interval`. A walk
//! stats every `.env` (its mtime is the due time, see `spool`), keeps the
//! due ones not in the window in a heap bounded by the room there is, and
//! notes the earliest due time of everything else, so that it sleeps until
//! then. Memory stays bounded by the window whatever the queue holds.

use std::collections::{BinaryHeap, HashSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{IDLE, Queue, QueueError, not_found};
use crate::queue::QueueId;
use crate::queue::spool::{EnvelopeStat, due_mtime};

/// The scanner task.
pub(super) async fn run(queue: Queue, mut stop: watch::Receiver<bool>) {
    let interval = queue.settings().scan_interval;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let notified = queue.inner.scan_wake.notified();
        if let Some(wait) = queue.scan_wait() {
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        if let Some(at) = last.map(|l| l + interval) {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.changed() => return,
            }
        }
        last = Some(tokio::time::Instant::now());
        let (q, s) = (queue.clone(), stop.clone());
        let scanned = tokio::task::spawn_blocking(move || q.scan(&s)).await;
        let failed = match scanned {
            Ok(Ok(loaded)) => {
                if loaded > 0 {
                    tracing::debug!(
                        messages = loaded,
                        "due messages brought in from the spool folder"
                    );
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failed, "cannot scan the spool folder for due messages; trying again");
        queue.scan_failed();
    }
}

/// What one walk found: the `room` due soonest (by the mtime index), and
/// the earliest due time of all the rest.
struct Pick {
    room: usize,
    now: SystemTime,
    flush_before: Option<SystemTime>,
    /// Max-heap on the due time: the latest is pushed out first.
    heap: BinaryHeap<(SystemTime, QueueId, bool)>,
    /// The earliest due time of what is left on disk.
    left: Option<SystemTime>,
    /// Whether a flushed message is left on disk.
    flush_left: bool,
}

impl Pick {
    fn new(room: usize, now: SystemTime, flush_before: Option<SystemTime>) -> Pick {
        Pick {
            room,
            now,
            flush_before,
            heap: BinaryHeap::new(),
            left: None,
            flush_left: false,
        }
    }

    fn note(&mut self, due: SystemTime) {
        self.left = Some(self.left.map_or(due, |l| l.min(due)));
    }

    fn offer(&mut self, id: QueueId, stat: EnvelopeStat) {
        if stat.parked() {
            return;
        }
        // Written before a flush: due now, whatever its index says.
        let flushed = self.flush_before.is_some_and(|t| stat.changed < t);
        if stat.due > self.now && !flushed {
            self.note(stat.due);
            return;
        }
        self.heap.push((stat.due, id, flushed));
        if self.heap.len() > self.room {
            if let Some((due, _, flushed)) = self.heap.pop() {
                self.note(due.min(self.now));
                self.flush_left |= flushed;
            }
        }
    }
}

impl Queue {
    /// How long the scanner may sleep, or `None` to scan now.
    fn scan_wait(&self) -> Option<std::time::Duration> {
        let st = self.lock();
        let now = Utc::now();
        match st.disk_due {
            None => Some(IDLE),
            Some(at) if at > now => Some((at - now).to_std().unwrap_or_default().min(IDLE)),
            Some(_) if st.capacity(self.window(), now) > 0 => None,
            Some(_) => Some(IDLE),
        }
    }

    /// A scan did not finish: forget its bookkeeping and try again later.
    fn scan_failed(&self) {
        let mut st = self.lock();
        st.changed_in_scan = None;
        st.on_disk_due(Utc::now());
    }

    /// One scan (blocking): walks the folder and brings the due messages
    /// that are on disk only into the window, soonest first, as many as
    /// it can take. Returns how many it brought in.
    pub(super) fn scan(&self, stop: &watch::Receiver<bool>) -> Result<usize, QueueError> {
        let now = Utc::now();
        let (in_window, damaged, room, flush_before) = {
            let mut st = self.lock();
            st.changed_in_scan = Some(HashSet::new());
            // Whatever this walk misses (a message that goes to disk while
            // it runs) lowers this again.
            st.disk_due = None;
            let in_window: HashSet<QueueId> = st.messages.keys().cloned().collect();
            let room = st.capacity(self.window(), now);
            (in_window, st.damaged.clone(), room, st.flush_before)
        };
        let mut pick = Pick::new(room, SystemTime::from(now), flush_before);
        let mut seen = 0u64;
        self.inner.spool.walk_envelopes(|id, stat| {
            if !in_window.contains(&id) && !damaged.contains(&id) {
                pick.offer(id, stat);
            }
            seen += 1;
            seen % 1024 != 0 || !*stop.borrow()
        })?;
        let mut loaded = 0;
        let mut flush_left = pick.flush_left;
        let mut left = pick.left.map(DateTime::<Utc>::from);
        for (_, id, flushed) in pick.heap.into_sorted_vec() {
            match self.bring_in(&id, flushed, now) {
                Brought::In => loaded += 1,
                Brought::Gone => {}
                Brought::NotDue(at) => {
                    left = match (left, at) {
                        (Some(l), Some(a)) => Some(l.min(a)),
                        (l, a) => l.or(a),
                    }
                }
                Brought::NoRoom => flush_left |= flushed,
            }
        }
        let mut st = self.lock();
        st.changed_in_scan = None;
        if let Some(at) = left {
            st.on_disk_due(at);
        }
        if !flush_left && st.flush_before == flush_before {
            st.flush_before = None;
        }
        drop(st);
        if loaded > 0 {
            self.inner.wake.notify_one();
        }
        Ok(loaded)
    }

    /// Reads one message the walk found due and puts it into the window.
    fn bring_in(&self, id: &QueueId, flushed: bool, now: DateTime<Utc>) -> Brought {
        let (mut msg, file) = match self.inner.spool.read_envelope_file(id) {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Brought::Gone,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool file could not be read; left in place for an operator");
                self.lock().damaged.insert(id.clone());
                return Brought::Gone;
            }
        };
        if flushed {
            super::flush_recipients(&mut msg);
        }
        match msg.next_due() {
            Some(at) if at <= now => {}
            not_yet => {
                // The index was wrong (an envelope written before mtimes
                // were due times, or restored from a backup): mend it, or
                // every walk would read this one again. On the file that
                // was read: if it has been replaced since, the hint lands
                // on the old file and the new one keeps its own.
                if let Err(e) = file.set_modified(due_mtime(&msg)) {
                    tracing::debug!(queue_id = %id, error = %e, "cannot set the due time of an envelope");
                }
                return Brought::NotDue(not_yet);
            }
        }
        drop(file);
        self.take_in(msg, now)
    }

    /// Puts a due message the scan read into the window, unless its
    /// envelope changed (or an operator took it) since the scan began.
    fn take_in(&self, msg: crate::queue::QueuedMessage, now: DateTime<Utc>) -> Brought {
        let id = &msg.id.clone();
        let mut st = self.lock();
        if st.changed_in_scan.as_ref().is_some_and(|d| d.contains(id)) {
            // What was read may be stale. The message is in the window
            // now, or gone, or (rewritten, then made way) on disk again:
            // the next scan reads it afresh.
            if !st.messages.contains_key(id) {
                st.on_disk_due(now);
            }
            return Brought::Gone;
        }
        if st.busy.contains(id) {
            // An operator command or a commit has it; if it is still on
            // disk afterwards, a later scan reads it again.
            st.on_disk_due(now);
            return Brought::Gone;
        }
        if st.admit(msg, self.window(), now) {
            Brought::In
        } else {
            Brought::NoRoom
        }
    }
}

enum Brought {
    In,
    /// Deleted, being changed by an operator, or unreadable.
    Gone,
    /// Not due after all; due then (`None`: held only).
    NotDue(Option<DateTime<Utc>>),
    /// The window filled up meanwhile.
    NoRoom,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueSettings;
    use crate::queue::{QueuedMessage, RecipientStatus, Spool, SpoolKey};
    use std::time::Duration;

    /// A queue with a window of 4 over a fresh spool in `dir`.
    fn queue(dir: &std::path::Path, key: u8) -> (Queue, Spool) {
        let spool = Spool::open(dir, SpoolKey::from_bytes([key; 32])).unwrap();
        let settings = QueueSettings {
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 86400),
            max_active: 10,
            max_window: 4,
            scan_interval: Duration::from_secs(5),
        };
        let (q, _) = Queue::open(spool.clone(), settings, "gw.example.test".into()).unwrap();
        (q, spool)
    }

    /// A message on disk only, written behind the queue's back (as a
    /// queue that stopped would have left it).
    async fn on_disk(spool: &Spool, msg: &QueuedMessage) {
        let mut w = spool.create_content(&msg.id).await.unwrap();
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        w.finish().await.unwrap();
        spool.write_envelope(msg).await.unwrap();
    }

    /// The scan read an envelope; before it took the lock, the message
    /// went through the window, was delivered to its recipient (the
    /// envelope rewritten) and made way again. The copy read first must not
    /// come back: its recipient would be sent the message a second time.
    #[tokio::test]
    async fn a_copy_read_before_a_rewrite_is_not_brought_in() {
        let dir = tempfile::tempdir().unwrap();
        let (q, spool) = queue(dir.path(), 2);
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test", "c@example.test"]);
        on_disk(&spool, &msg).await;
        let now = Utc::now();

        q.lock().changed_in_scan = Some(HashSet::new());
        let stale = spool.read_envelope(&msg.id).unwrap();
        let mut newer = stale.clone();
        newer.recipients[0].status = RecipientStatus::Delivered;
        newer.recipients[1].status = RecipientStatus::Deferred;
        newer.recipients[1].next_attempt = Some(now + chrono::Duration::hours(1));
        spool.write_envelope(&newer).await.unwrap();
        q.lock().written(&msg.id);

        assert!(matches!(q.take_in(stale, now), Brought::Gone));
        let st = q.lock();
        assert!(
            !st.messages.contains_key(&msg.id),
            "stale copy in the window"
        );
        assert!(
            st.disk_due.is_some_and(|d| d <= now),
            "rescan not asked for"
        );
        drop(st);
        q.lock().changed_in_scan = None;
        // The next scan reads the envelope as it is now: not due for an hour.
        let (_tx, stop) = tokio::sync::watch::channel(false);
        assert_eq!(q.scan(&stop).unwrap(), 0);
        assert!(!q.lock().messages.contains_key(&msg.id));
        assert_eq!(spool.read_envelope(&msg.id).unwrap(), newer);
    }

    /// Without a change, the same copy is brought in.
    #[tokio::test]
    async fn an_unchanged_copy_is_brought_in() {
        let dir = tempfile::tempdir().unwrap();
        let (q, spool) = queue(dir.path(), 3);
        let msg = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
        on_disk(&spool, &msg).await;
        q.lock().changed_in_scan = Some(HashSet::new());
        let copy = spool.read_envelope(&msg.id).unwrap();
        assert!(matches!(q.take_in(copy, Utc::now()), Brought::In));
        assert!(q.lock().messages.contains_key(&msg.id));
    }
}
