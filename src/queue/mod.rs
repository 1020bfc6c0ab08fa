//! The queue: durable spool files plus the in-memory schedule of what to
//! deliver when.
//!
//! Only this module touches spool files. The inbound listener hands it a
//! complete [`QueuedMessage`] (after the content is fsynced); the scheduler
//! hands due messages to delivery and applies the per-recipient outcomes
//! that come back.

pub mod attempts;
pub mod control;
pub mod dsn;
mod schedule;
pub mod spool;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use attempts::{AttemptTicket, Unresolved};
pub use schedule::{Queue, QueueError, RecipientOutcome, Verdict};
pub use spool::{ContentReader, ContentWriter, Spool, SpoolError, SpoolKey, SpoolLock};

/// The spool id of a message: time-ordered, unique, safe in file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl QueueId {
    /// A new id: milliseconds since the epoch (hex) and 48 random bits.
    pub fn new() -> QueueId {
        let ms = Utc::now().timestamp_millis().max(0) as u64;
        QueueId(format!(
            "{ms:011X}{}",
            hex::encode_upper(crate::util::random_bytes::<6>())
        ))
    }

    /// Whether `s` has the shape of a queue id (so it can name a file).
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 23 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| QueueId(s.to_ascii_uppercase()))
    }
}

impl Default for QueueId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not tried yet.
    Pending,
    /// Tried, failed temporarily or held by policy; will be tried again.
    Deferred,
    /// Accepted by the remote side.
    Delivered,
    /// Failed permanently or expired; a DSN was (or will be) sent.
    Bounced,
    /// Quarantined by a policy rule until an operator releases it.
    Held,
}

impl RecipientStatus {
    /// Delivered or bounced: nothing more will happen to this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Bounced)
    }
}

/// One envelope recipient and its delivery state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address as given in RCPT TO.
    pub address: String,
    pub status: RecipientStatus,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When to try again (deferred recipients).
    pub next_attempt: Option<DateTime<Utc>>,
    /// The last error or remote reply, for `queue list` and the DSN.
    pub last_error: Option<String>,
    /// Enhanced status code of the last failure (e.g. `4.4.1`).
    pub last_status: Option<String>,
    /// The remote host of the last attempt, for the DSN's Remote-MTA.
    pub last_remote: Option<String>,
    /// Whether a DSN has been generated for this recipient.
    #[serde(default)]
    pub dsn_sent: bool,
    /// An operator released it from hold; hold rules no longer apply.
    #[serde(default)]
    pub released: bool,
}

impl Recipient {
    /// A recipient not yet tried.
    pub fn new(address: String) -> Recipient {
        Recipient {
            address,
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt: None,
            last_error: None,
            last_status: None,
            last_remote: None,
            dsn_sent: false,
            released: false,
        }
    }

    /// The domain part, lowercased (empty when there is none).
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// The domain of an address: the part after the last `@`, lowercased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Who handed us the message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client IP address.
    pub ip: String,
    /// HELO/EHLO name.
    pub helo: String,
    /// AUTH user, when authenticated.
    pub auth_user: Option<String>,
    /// Whether the session used TLS.
    pub tls: bool,
    /// The cloud connector (`[[relay.connectors]]` name) whose certificate
    /// and tenant check authorised relay, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
}

/// A message in the queue: envelope, facts about the content, and the state
/// of every recipient. Serialized (encrypted) into the `.env` spool file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub received_at: DateTime<Utc>,
    /// Envelope sender; empty for the null sender `<>` (DSNs).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// The Message-ID header, when present.
    pub message_id: Option<String>,
    /// Size of the stored content in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the stored content.
    pub content_sha256: String,
    /// MAIL FROM had BODY=8BITMIME.
    #[serde(default)]
    pub body_8bit: bool,
    /// MAIL FROM had SMTPUTF8.
    #[serde(default)]
    pub smtputf8: bool,
    /// Who submitted it.
    pub client: ClientInfo,
    /// Generated by sealgate itself (a DSN), not received from a client.
    #[serde(default)]
    pub local: bool,
    /// MAIL FROM had REQUIRETLS (RFC 8689).
    #[serde(default)]
    pub requiretls: bool,
}

impl QueuedMessage {
    /// Recipients that still need delivery.
    pub fn open_recipients(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.status.is_final())
    }

    /// Earliest time any open recipient should be tried (held ones wait
    /// for an operator, not for a time).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.open_recipients()
            .filter(|(_, r)| r.status != RecipientStatus::Held)
            .map(|(_, r)| r.next_attempt.unwrap_or(self.received_at))
            .min()
    }

    /// Whether every recipient is delivered or bounced.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    #[cfg(test)]
    pub(crate) fn for_test(sender: &str, rcpts: &[&str]) -> QueuedMessage {
        QueuedMessage {
            id: QueueId::new(),
            received_at: Utc::now(),
            sender: sender.into(),
            recipients: rcpts
                .iter()
                .map(|r| Recipient::new(r.to_string()))
                .collect(),
            message_id: None,
            size: 0,
            content_sha256: String::new(),
            body_8bit: false,
            smtputf8: false,
            client: ClientInfo::default(),
            local: false,
            requiretls: false,
        }
    }
}
