//! Configuration: TOML files mapped one to one onto structs, validated with
//! errors that name the file, line and key, then turned into runtime
//! [`Settings`] by one [`RawConfig::build`].
//!
//! Every key is documented here and in `config/sealgate.example.toml`.

mod connector;
mod raw;
pub(crate) mod toml_de;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use connector::{CertNamePattern, ConnectorSettings};
pub use raw::{RawConfig, is_hostname};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key, e.g. `server.max_message_size`, when known.
    pub key: Option<String>,
    /// What is wrong, for a mail administrator.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in a configuration, reported at once.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_problems(.0))]
pub struct ConfigError(pub Vec<ConfigProblem>);

fn render_problems(problems: &[ConfigProblem]) -> String {
    let mut out = format!(
        "invalid configuration ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// An AUTH user allowed to relay.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// Argon2 PHC string (`$argon2id$...`).
    pub password_hash: String,
}

/// Default `server.spool_reserve`: 100 MB.
pub const DEFAULT_SPOOL_RESERVE: u64 = 100_000_000;

/// Inbound listener settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub spool_key_file: PathBuf,
    /// Free bytes the spool's file system keeps; below it no new message.
    pub spool_reserve: u64,
    pub control_socket: PathBuf,
    pub tls: Option<TlsFiles>,
    pub users: Vec<AuthUser>,
    pub limits: Limits,
    pub auth: AuthLimits,
}

/// Bounds on AUTH, so a flood of attempts can neither guess passwords nor
/// exhaust memory or CPU.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    /// Failed attempts from one client address (an IPv6 /64) within
    /// `lockout` before AUTH is refused to it for `lockout`.
    pub max_failures: u32,
    /// Failed attempts from all clients together within `lockout` before
    /// AUTH is refused to everyone for `lockout`.
    pub max_failures_total: u32,
    /// The counting window and the length of a lockout.
    pub lockout: Duration,
    /// argon2 checks running at once.
    pub max_verifications: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            max_failures: 5,
            max_failures_total: 100,
            lockout: Duration::from_secs(15 * 60),
            max_verifications: 4,
        }
    }
}

/// Certificate chain and key for inbound STARTTLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Limits on what one client may make the listener hold or do.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_line_length: usize,
    pub max_header_size: usize,
    pub max_received_headers: usize,
    pub command_timeout: Duration,
    /// Idle time allowed between reads inside DATA.
    pub data_timeout: Duration,
    /// Longest the whole DATA phase may take, however the bytes trickle.
    pub data_phase_timeout: Duration,
    /// Longest a session may last, whatever it does.
    pub session_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    pub max_errors: usize,
    /// NOOP, RSET, HELO/EHLO, VRFY, EXPN, HELP and unknown commands
    /// allowed since the last accepted message before the session closes.
    pub max_junk_commands: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 50_000_000,
            max_recipients: 1000,
            max_command_line: 2048,
            max_line_length: 65536,
            max_header_size: 1024 * 1024,
            max_received_headers: 50,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            data_phase_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(1800),
            max_sessions: 500,
            max_sessions_per_ip: 100,
            max_errors: 10,
            max_junk_commands: 30,
        }
    }
}

/// Who may relay without authenticating.
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    pub allow_networks: Vec<IpNet>,
    /// `%` and `!` in local parts are accepted (never routed).
    pub allow_percent_hack: bool,
    /// Cloud connectors: relay for a verified client certificate with a
    /// matching name, bound to a tenant at the end of DATA.
    pub connectors: Vec<ConnectorSettings>,
}

impl RelaySettings {
    /// Whether `ip` is inside one of the allowed networks.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_networks.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4, so a
/// dual-stack listener cannot be used to slip past an IPv4 allow list.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Smarthost credentials.
#[derive(Debug, Clone)]
pub struct SmarthostAuth {
    pub username: String,
    pub password_file: PathBuf,
}

/// The least TLS sealgate accepts from its smarthost, whatever the rule
/// (`[delivery] smarthost_min_tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    Opportunistic,
    Encrypted,
    /// A certificate verified for the smarthost's name, or DANE (default).
    Verified,
    Dane,
}

impl SmarthostTls {
    fn parse(s: &str) -> Option<SmarthostTls> {
        Some(match s {
            "opportunistic" => SmarthostTls::Opportunistic,
            "encrypted" => SmarthostTls::Encrypted,
            "verified" => SmarthostTls::Verified,
            "dane" => SmarthostTls::Dane,
            _ => return None,
        })
    }
}

/// Outbound delivery settings.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `host:port` of a smarthost; without it, delivery goes by MX.
    pub smarthost: Option<(String, u16)>,
    pub smarthost_auth: Option<SmarthostAuth>,
    /// The least TLS the smarthost must meet (default `verified`).
    pub smarthost_min_tls: SmarthostTls,
    pub port: u16,
    pub helo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_host: usize,
    pub idle_timeout: Duration,
}

/// Queue retry behaviour and memory bounds.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub max_active: usize,
    /// Messages kept in memory at most; the rest wait on disk.
    pub max_window: usize,
    /// Shortest time between two walks of the spool folder.
    pub scan_interval: Duration,
}

/// Resolver settings.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    pub nameservers: Vec<SocketAddr>,
    pub trust_anchor: Option<PathBuf>,
    pub timeout: Duration,
}

/// Extra trust for outbound TLS and HTTPS.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    pub extra_ca: Vec<PathBuf>,
}

/// Audit database settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub database_url: String,
    pub journal_dir: PathBuf,
}

/// Policy file locations.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    pub files: Vec<String>,
}

/// Capability probe limits.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub timeout: Duration,
    pub cache_ttl: Duration,
    /// Interval of the background MTA-STS refresh rounds (RFC 8461
    /// section 10.2).
    pub mta_sts_refresh: Duration,
}

/// The secure portal (`[portal]`).
#[derive(Debug, Clone)]
pub struct PortalSettings {
    pub listen: SocketAddr,
    /// Base of every pickup link, without a trailing slash.
    pub public_url: String,
    pub master_key_file: PathBuf,
    /// Data keys wrapped under the pickup token too: the database and the
    /// master key together open nothing without the recipient's link (and
    /// a lost link cannot be sent again).
    pub link_bound: bool,
    /// How long a stored message can be picked up.
    pub expiry: Duration,
    /// The organisation named in notifications and pages.
    pub organization: String,
    /// Subject of the notification mail; `None`: "Secure message from
    /// ORGANIZATION".
    pub subject: Option<String>,
}

/// TLS reporting (RFC 8460).
#[derive(Debug, Clone)]
pub struct TlsReportSettings {
    pub enabled: bool,
    pub organization: String,
    pub contact: String,
    pub period: Duration,
}

/// OpenPGP settings.
#[derive(Debug, Clone)]
pub struct PgpSettings {
    pub subject_placeholder: String,
    pub sources: Vec<String>,
    pub hold_changed: bool,
    /// Sender domain (lowercase) → secret key file for signing.
    pub signing_keys: std::collections::BTreeMap<String, PathBuf>,
    pub additional_decryption_key: Option<PathBuf>,
    /// VKS keyserver host for the `keyserver` source.
    pub keyserver: Option<String>,
}

/// The validated, runtime form of a configuration file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file these settings came from (policy globs and relative paths
    /// are resolved against its folder).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub relay: RelaySettings,
    pub delivery: DeliverySettings,
    pub queue: QueueSettings,
    pub dns: DnsSettings,
    pub tls: TlsTrust,
    pub audit: AuditConfig,
    pub policy: PolicyFiles,
    pub probe: ProbeSettings,
    pub tls_report: TlsReportSettings,
    pub pgp: PgpSettings,
    /// `[portal]`, when configured.
    pub portal: Option<PortalSettings>,
    /// Where each value came from in the file.
    pub origins: Origins,
}

impl Settings {
    /// Reads, parses and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        match Self::load_all(path) {
            (Some(s), problems) if problems.is_empty() => Ok(s),
            (_, problems) => Err(ConfigError(problems)),
        }
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        match Self::parse_all(path, text) {
            (Some(s), problems) if problems.is_empty() => Ok(s),
            (_, problems) => Err(ConfigError(problems)),
        }
    }

    /// Like [`Settings::load`], but returns the settings even when there
    /// are problems (each bad value replaced by its default), so that
    /// `check-config` can go on to check the files they name.
    pub fn load_all(path: &Path) -> (Option<Settings>, Vec<ConfigProblem>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_all(path, &text),
            Err(e) => (
                None,
                vec![ConfigProblem {
                    file: path.to_path_buf(),
                    line: None,
                    column: None,
                    key: None,
                    message: format!("cannot read the file: {e}"),
                }],
            ),
        }
    }

    /// Like [`Settings::parse`], but returns the settings even when there
    /// are problems; `None` only when the text is not TOML at all.
    pub fn parse_all(path: &Path, text: &str) -> (Option<Settings>, Vec<ConfigProblem>) {
        let mut parsed = toml_de::from_str::<RawConfig>(path, text);
        let mut problems = std::mem::take(&mut parsed.problems);
        let Some(raw) = parsed.value.take() else {
            return (None, problems);
        };
        let (mut settings, more) = raw.build_all(path, text);
        // A value read as a stand-in already has its problem.
        problems.extend(more.into_iter().filter(|p| !parsed.is_follow_on(p)));
        problems.sort_by_key(|p| (p.line, p.column));
        settings.origins = Origins {
            file: path.to_path_buf(),
            places: parsed.origins,
        };
        (Some(settings), problems)
    }
}

/// Where each value is in the configuration file, to place problems found
/// after loading (a key file that cannot be read, a certificate that does
/// not parse) at their line.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: PathBuf,
    /// Dotted key, line, column; array entries one by one.
    places: Vec<(String, usize, usize)>,
}

impl Origins {
    /// A problem about the `nth` value (0 for a single value) of `key`.
    pub fn problem(&self, key: &str, nth: usize, message: impl Into<String>) -> ConfigProblem {
        let place = self.places.iter().filter(|p| p.0 == key).nth(nth);
        ConfigProblem {
            file: self.file.clone(),
            line: place.map(|p| p.1),
            column: place.map(|p| p.2),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
