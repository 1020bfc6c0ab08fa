//! The audit module's error type, and URL redaction for messages.

use std::path::PathBuf;

/// Everything that can go wrong while recording, verifying or exporting the
/// audit trail.
///
/// Messages are written for a mail administrator; database URLs in them
/// never carry a password (see [`redact_url`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be reached (connection refused, DNS failure,
    /// authentication failure, missing SQLite directory, time-out).
    #[error("audit database {url} unreachable: {source}")]
    Unreachable {
        /// The database URL, password removed.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The database answered, but a statement failed.
    #[error("audit database {url}: {action} failed: {source}")]
    Database {
        /// The database URL, password removed.
        url: String,
        /// What we were doing, e.g. "reading rows".
        action: &'static str,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// Creating or upgrading the `audit_log` table failed.
    #[error("audit database {url}: schema migration failed: {source}")]
    Migrate {
        /// The database URL, password removed.
        url: String,
        /// What the migrator said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The URL names a database kind sealgate does not support.
    #[error(
        "audit database URL {url} is not supported: use sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl {
        /// The database URL, password removed.
        url: String,
    },
    /// Reading, writing or syncing the local journal failed.
    #[error("audit journal {}: {action} failed: {source}", path.display())]
    Journal {
        /// The journal file or directory.
        path: PathBuf,
        /// What we were doing, e.g. "fsync".
        action: &'static str,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the journal directory.
    #[error(
        "audit journal {} is in use by another sealgate process; give each instance its own journal directory",
        path.display()
    )]
    JournalLocked {
        /// The journal directory.
        path: PathBuf,
    },
    /// An event was rejected before it was journaled.
    #[error("audit event rejected: {reason}")]
    InvalidEvent {
        /// Why.
        reason: String,
    },
    /// A row in the database cannot be read back (e.g. a column of the
    /// wrong type after a manual edit).
    #[error("audit database {url}: row {seq} cannot be read: {detail}")]
    CorruptRow {
        /// The database URL, password removed.
        url: String,
        /// The row's sequence number, or -1 if unknown.
        seq: i64,
        /// What was wrong.
        detail: String,
    },
    /// Writing an export to its destination failed.
    #[error("writing the audit export failed: {0}")]
    Output(#[source] std::io::Error),
}

/// Returns `url` with any password replaced by `***`, for logs and errors.
///
/// Handles the user-info form (`postgres://user:secret@host/db`) and the
/// `password=` query parameter that PostgreSQL also accepts.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = &out[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                let pw_start = authority_start + colon + 1;
                let pw_end = authority_start + at;
                out.replace_range(pw_start..pw_end, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords() {
        let cases = [
            (
                "postgres://sealgate:s3cr@t@db.example.org:5432/audit",
                "postgres://sealgate:***@db.example.org:5432/audit",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            (
                "postgres://u@h/db?sslmode=require&password=hunter2",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            (
                "sqlite:///var/lib/sealgate/audit.db",
                "sqlite:///var/lib/sealgate/audit.db",
            ),
            ("sqlite:audit.db?mode=rwc", "sqlite:audit.db?mode=rwc"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }
}
