//! The control socket: how `sealgate queue ...` and `sealgate reload` talk
//! to a running daemon. A Unix socket (mode 0600) in the spool folder; one
//! JSON request line, one JSON reply line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Queue, QueueId, QueuedMessage};

/// A request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every message and recipient state.
    List,
    /// Make every deferred recipient due now.
    Flush,
    /// Delete a message without delivering it.
    Remove { id: String },
    /// Release the held recipients of a message.
    Release { id: String },
    /// Re-read the policy files.
    Reload,
}

/// One message as `queue list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedMessage {
    pub message: QueuedMessage,
    /// Being delivered right now.
    pub in_flight: bool,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Reply {
    Ok {
        #[serde(default)]
        messages: Vec<ListedMessage>,
        #[serde(default)]
        detail: String,
    },
    Error {
        detail: String,
    },
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no sealgate daemon is listening on {0}")]
    NotRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon sent an answer this version does not understand: {0}")]
    Protocol(String),
}

/// Something that can reload the policy on request (the server wires it).
pub type ReloadFn = std::sync::Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serves the control socket until the task is aborted.
pub async fn serve(path: PathBuf, queue: Queue, reload: ReloadFn) -> Result<(), ControlError> {
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    // A socket left by a killed daemon would make bind fail; a live daemon
    // would answer a connect, so only remove a dead one.
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another sealgate daemon is running on this spool",
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let queue = queue.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = BufReader::new(rd).take(64 * 1024);
            let reply = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                rd.read_line(&mut line),
            )
            .await
            {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                    Ok(req) => handle(&queue, &reload, req).await,
                    Err(e) => Reply::Error {
                        detail: format!("bad request: {e}"),
                    },
                },
                _ => return,
            };
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let _ = wr.write_all(text.as_bytes()).await;
            }
        });
    }
}

use tokio::io::AsyncReadExt;

async fn handle(queue: &Queue, reload: &ReloadFn, req: Request) -> Reply {
    match req {
        Request::List => Reply::Ok {
            messages: queue
                .list()
                .into_iter()
                .map(|(message, in_flight)| ListedMessage { message, in_flight })
                .collect(),
            detail: String::new(),
        },
        Request::Flush => {
            let n = queue.flush();
            Reply::Ok {
                messages: vec![],
                detail: format!("{n} message(s) scheduled for immediate delivery"),
            }
        }
        Request::Remove { id } => match QueueId::parse(&id) {
            None => Reply::Error {
                detail: format!("`{id}` is not a queue id"),
            },
            Some(id) => match queue.remove(&id).await {
                Ok(()) => {
                    tracing::info!(queue_id = %id, "message removed from the queue by an operator");
                    Reply::Ok {
                        messages: vec![],
                        detail: format!("removed {id}"),
                    }
                }
                Err(e) => Reply::Error {
                    detail: e.to_string(),
                },
            },
        },
        Request::Release { id } => match QueueId::parse(&id) {
            None => Reply::Error {
                detail: format!("`{id}` is not a queue id"),
            },
            Some(id) => match queue.release_held(&id).await {
                Ok(0) => Reply::Error {
                    detail: format!("message {id} has no held recipient"),
                },
                Ok(n) => {
                    tracing::info!(queue_id = %id, recipients = n, "held recipients released by an operator");
                    Reply::Ok {
                        messages: vec![],
                        detail: format!("released {n} recipient(s) of {id}"),
                    }
                }
                Err(e) => Reply::Error {
                    detail: e.to_string(),
                },
            },
        },
        Request::Reload => match reload() {
            Ok(detail) => Reply::Ok {
                messages: vec![],
                detail,
            },
            Err(detail) => Reply::Error { detail },
        },
    }
}

/// Sends one request to the daemon on `path`.
pub async fn call(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|_| ControlError::NotRunning(path.to_path_buf()))?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (rd, mut wr) = stream.into_split();
    let mut text = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(512 * 1024 * 1024);
    tokio::time::timeout(std::time::Duration::from_secs(30), rd.read_line(&mut line))
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the daemon did not answer within 30 s",
            ))
        })?
        .map_err(io)?;
    serde_json::from_str(line.trim()).map_err(|e| ControlError::Protocol(e.to_string()))
}
