//! Configuration: TOML files mapped one to one onto structs, validated with
//! errors that name the file, line and key, then turned into runtime
//! [`Settings`] by one [`RawConfig::build`].
//!
//! Every key is documented here and in `config/sealgate.example.toml`.

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

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

/// Inbound listener settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub spool_dir: PathBuf,
    pub spool_key_file: PathBuf,
    pub control_socket: PathBuf,
    pub tls: Option<TlsFiles>,
    pub users: Vec<AuthUser>,
    pub limits: Limits,
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
    pub data_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    pub max_errors: usize,
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
            max_sessions: 500,
            max_sessions_per_ip: 100,
            max_errors: 10,
        }
    }
}

/// Who may relay without authenticating.
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    pub allow_networks: Vec<IpNet>,
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

/// Outbound delivery settings.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// `host:port` of a smarthost; without it, delivery goes by MX.
    pub smarthost: Option<(String, u16)>,
    pub smarthost_auth: Option<SmarthostAuth>,
    pub port: u16,
    pub helo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_host: usize,
    pub idle_timeout: Duration,
}

/// Queue retry behaviour.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub max_active: usize,
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
}

impl Settings {
    /// Reads, parses and validates `path`, reporting every problem at once.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![ConfigProblem {
                file: path.to_path_buf(),
                line: None,
                column: None,
                key: None,
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            ConfigError(vec![ConfigProblem {
                file: path.to_path_buf(),
                line,
                column,
                key: None,
                message: toml_message(&e),
            }])
        })?;
        raw.build(path, text)
    }
}

/// The message of a TOML syntax error. toml gives an empty one for some
/// errors (a control character in a string, found by the policy-file fuzz
/// target); the full text then still says what is wrong.
pub(crate) fn toml_message(e: &toml::de::Error) -> String {
    match e.message().trim() {
        "" => e.to_string().trim().to_string(),
        m => m.to_string(),
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
