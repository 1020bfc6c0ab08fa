//! The `sealgate` binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sealgate::{audit, cli, config::Settings, server};

/// SMTP gateway that keeps protected health information from leaving in the clear.
#[derive(Parser)]
#[command(name = "sealgate", version, about)]
struct Args {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum PortalCmd {
    /// Revoke a stored message: its key is destroyed at once and its
    /// content deleted, so its link shows only that it was revoked.
    Revoke {
        #[arg(long, short)]
        config: PathBuf,
        /// The message id (in the audit record and the notification's
        /// evidence).
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration (and the files it names) without starting.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show what would happen to each recipient, and the evidence.
    Probe {
        #[arg(long, short)]
        config: PathBuf,
        /// Envelope sender to decide for.
        #[arg(long, default_value = "")]
        from: String,
        /// A message file (RFC 5322) whose content the rules should see.
        #[arg(long)]
        message: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Inspect and manage the queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Export or verify the audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Manage OpenPGP keys in the key store (the audit database).
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// Messages stored at the secure portal.
    Portal {
        #[command(subcommand)]
        action: PortalCmd,
    },
    /// Ask the running daemon to re-read its policy files.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a new spool encryption key file (mode 0600).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the spool key: `rotate` puts a new key first in the key file
    /// (new spool files use it, older ones stay readable); `prune` drops
    /// the old keys no spool file uses any more. Restart the daemon after
    /// `rotate` for new files to use the new key.
    SpoolKey {
        #[command(subcommand)]
        action: SpoolKeyAction,
    },
    /// Hash a password (read from stdin) for [[server.users]].
    HashPassword,
}

#[derive(Subcommand)]
enum SpoolKeyAction {
    /// Add a new current key to `server.spool_key_file`.
    Rotate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove old keys that no file in the spool uses.
    Prune {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages and each recipient's state.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Try every deferred recipient now.
    Flush {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Release recipients held by a policy rule.
    Release {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete messages without delivering them.
    Remove {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Import certificates (armored or binary) for the addresses they carry.
    Import {
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
    },
    /// List stored keys.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove a key by fingerprint.
    Remove {
        #[arg(long, short)]
        config: PathBuf,
        fingerprint: String,
    },
    /// Confirm a (changed) key for an address.
    Trust {
        #[arg(long, short)]
        config: PathBuf,
        address: String,
        fingerprint: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Write audit rows (with the chain head) as CSV or JSON.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Only rows at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check the hash chain; exits 1 and names the first broken row if edited.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List audit journal lines that could not be read and were set aside
    /// (quarantined); exits 1 if there are any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALGATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,hickory_proto=warn,hickory_resolver=warn,rustls=warn",
        )
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// This binary, for the PDF reader's child: `/proc/self/exe` on Linux
/// (still this binary after an upgrade replaced the file), else the path
/// it was started as.
fn worker_exe() -> PathBuf {
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() {
        return proc;
    }
    std::env::current_exe().unwrap_or(proc)
}

fn load(config: &PathBuf) -> anyhow::Result<Settings> {
    Ok(Settings::load(config)?)
}

fn main() -> ExitCode {
    // The PDF reader's child process (see `policy::sandbox`): before
    // anything else, without logging, runtime or arguments parsing.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("extract-worker") {
        let code = sealgate::policy::sandbox::worker_main(&argv[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    sealgate::policy::sandbox::enable(sealgate::policy::sandbox::Worker {
        exe: worker_exe(),
        max_memory: sealgate::policy::sandbox::DEFAULT_MAX_MEMORY,
    });
    let args = Args::parse();
    init_logging(args.log_format);
    // Keys, nonces and salts all come from here; without it, stop now with
    // a clear message rather than abort later in the middle of a delivery.
    if let Err(e) = sealgate::util::check_random() {
        eprintln!("sealgate: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sealgate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sealgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match command {
        Command::Serve { config } => {
            // The same checks as check-config, so every problem shows at once.
            let settings = cli::check_config(&config)?;
            server::run(settings).await?;
        }
        Command::CheckConfig { config } => {
            cli::check_config(&config)?;
            println!("{}: configuration is valid", config.display());
        }
        Command::Probe {
            config,
            from,
            message,
            json,
            addresses,
        } => {
            let settings = load(&config)?;
            cli::probe(
                settings,
                &from,
                message.as_deref(),
                &addresses,
                json,
                &mut stdout,
            )
            .await?;
        }
        Command::Queue { action } => match action {
            QueueAction::List { config, json } => {
                cli::queue_list(&load(&config)?, json, &mut stdout).await?
            }
            QueueAction::Flush { config } => {
                println!("{}", cli::queue_flush(&load(&config)?).await?)
            }
            QueueAction::Release { config, ids } => {
                println!("{}", cli::queue_release(&load(&config)?, &ids).await?)
            }
            QueueAction::Remove { config, ids } => {
                println!("{}", cli::queue_remove(&load(&config)?, &ids).await?)
            }
        },
        Command::Audit { action } => match action {
            AuditAction::Export {
                config,
                format,
                since,
                output,
            } => {
                let settings = load(&config)?;
                let since = since
                    .map(|s| DateTimeArg::parse(&s))
                    .transpose()
                    .context("--since")?;
                let format = match format {
                    Format::Csv => audit::ExportFormat::Csv,
                    Format::Json => audit::ExportFormat::Json,
                };
                let summary = match output {
                    Some(path) => {
                        let mut f = std::fs::File::create(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        let s = cli::audit_export(&settings, format, since, &mut f).await?;
                        f.flush()?;
                        s
                    }
                    None => cli::audit_export(&settings, format, since, &mut stdout).await?,
                };
                eprintln!(
                    "exported {} row(s); chain head {}",
                    summary.rows,
                    summary.head.as_deref().unwrap_or("(empty)")
                );
            }
            AuditAction::Verify { config } => {
                if !cli::audit_verify(&load(&config)?, &mut stdout).await? {
                    return Ok(ExitCode::from(1));
                }
            }
            AuditAction::Check { config } => {
                if !cli::audit_check(&load(&config)?, &mut stdout)? {
                    return Ok(ExitCode::from(1));
                }
            }
        },
        Command::Keys { action } => {
            let (config, action) = match action {
                KeysCmd::Import { config, file } => (config, cli::KeysAction::Import(file)),
                KeysCmd::List { config } => (config, cli::KeysAction::List),
                KeysCmd::Remove {
                    config,
                    fingerprint,
                } => (config, cli::KeysAction::Remove(fingerprint)),
                KeysCmd::Trust {
                    config,
                    address,
                    fingerprint,
                } => (config, cli::KeysAction::Trust(address, fingerprint)),
            };
            cli::keys(&load(&config)?, action, &mut stdout).await?;
        }
        Command::Portal {
            action: PortalCmd::Revoke { config, id },
        } => println!("{}", cli::portal_revoke(&load(&config)?, &id).await?),
        Command::Reload { config } => println!("{}", cli::reload(&load(&config)?).await?),
        Command::Keygen { out } => {
            sealgate::queue::SpoolKey::generate(&out)?;
            println!(
                "wrote a new spool key to {} (mode 0600); keep a copy in a safe place: without it the spool cannot be read",
                out.display()
            );
        }
        Command::SpoolKey { action } => match action {
            SpoolKeyAction::Rotate { config } => {
                let s = load(&config)?;
                let n = sealgate::queue::SpoolKey::rotate(&s.server.spool_key_file)?;
                println!(
                    "{}: a new current key was added ({n} keys now); restart sealgate so new files use it, and run `sealgate spool-key prune` once the queue has drained",
                    s.server.spool_key_file.display()
                );
            }
            SpoolKeyAction::Prune { config } => {
                let s = load(&config)?;
                let key = sealgate::queue::SpoolKey::load(&s.server.spool_key_file)?;
                let spool = sealgate::queue::Spool::open(&s.server.spool_dir, key)?;
                let n = sealgate::queue::SpoolKey::prune(&s.server.spool_key_file, &spool)?;
                println!(
                    "{}: {n} old key(s) no spool file uses were removed",
                    s.server.spool_key_file.display()
                );
            }
        },
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password");
            let hash =
                sealgate::inbound::auth::hash_password(password).map_err(anyhow::Error::msg)?;
            println!("{hash}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct DateTimeArg;

impl DateTimeArg {
    fn parse(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| {
            format!("`{s}` is not an RFC 3339 time such as 2026-11-01T00:00:00Z")
        })?;
        Ok(t.with_timezone(&chrono::Utc))
    }
}
