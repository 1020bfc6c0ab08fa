//! The control socket: how `sealgate queue ...` and `sealgate reload` talk
//! to a running daemon. A Unix socket (mode 0600) in the spool folder; one
//! JSON request line, one JSON reply line. `list` is streamed: one
//! `{"status":"message",...}` line per message as it is read, then the
//! final `ok` or `error` line, so a large queue is never held in memory
//! on either side.

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        /// Filled by daemons from before streamed listings; read for them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        messages: Vec<ListedMessage>,
        #[serde(default)]
        detail: String,
    },
    Error {
        detail: String,
    },
}

/// A line of a streamed listing before its final [`Reply`]: one message;
/// `{"status":"message","message":{...},"in_flight":false}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum ListLine {
    Message(ListedMessage),
}

/// Longest line of a streamed listing (one message with every recipient).
const MAX_LINE: u64 = 64 * 1024 * 1024;
/// How long one read or write on the socket may take.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    #[error("cannot write the listing: {0}")]
    Output(std::io::Error),
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
                    Ok(Request::List) => {
                        if let Err(e) = stream_list(&queue, &mut wr).await {
                            tracing::debug!(error = %e, "queue listing not finished (the client went away?)");
                        }
                        return;
                    }
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

/// Writes one reply line, within [`IO_TIMEOUT`].
async fn write_reply<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    reply: &impl Serialize,
) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, wr.write_all(&text))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

/// Streams `queue list`: the folder is walked on a blocking thread and each
/// message written as it is read; a client that stops reading stops the
/// walk (the channel between them is bounded).
async fn stream_list(
    queue: &Queue,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ListedMessage>(64);
    let q = queue.clone();
    let walk = tokio::task::spawn_blocking(move || {
        q.list_each(|message, in_flight| {
            tx.blocking_send(ListedMessage { message, in_flight })
                .is_ok()
        })
    });
    let mut out = tokio::io::BufWriter::new(wr);
    while let Some(item) = rx.recv().await {
        write_reply(&mut out, &ListLine::Message(item)).await?;
    }
    let end = match walk.await {
        Ok(Ok((n, 0))) => Reply::Ok {
            messages: vec![],
            detail: format!("{n} message(s)"),
        },
        Ok(Ok((n, bad))) => Reply::Ok {
            messages: vec![],
            detail: format!(
                "{n} message(s); {bad} envelope(s) could not be read and are not shown"
            ),
        },
        Ok(Err(e)) => Reply::Error {
            detail: e.to_string(),
        },
        Err(e) => Reply::Error {
            detail: format!("the listing failed: {e}"),
        },
    };
    write_reply(&mut out, &end).await?;
    tokio::time::timeout(IO_TIMEOUT, out.flush())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

async fn handle(queue: &Queue, reload: &ReloadFn, req: Request) -> Reply {
    match req {
        Request::List => Reply::Error {
            detail: "a listing is streamed, not answered in one line".into(),
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

/// Asks the daemon on `path` for the queue listing, calling `each` with
/// every message as it arrives. Returns the final `Ok` or `Error` reply.
pub async fn list(
    path: &Path,
    mut each: impl FnMut(ListedMessage) -> std::io::Result<()>,
) -> Result<Reply, ControlError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|_| ControlError::NotRunning(path.to_path_buf()))?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (rd, mut wr) = stream.into_split();
    let mut text =
        serde_json::to_string(&Request::List).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await.map_err(io)?;
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(IO_TIMEOUT, (&mut rd).take(MAX_LINE).read_line(&mut line))
            .await
            .map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the daemon sent nothing for 30 s",
                ))
            })?
            .map_err(io)?;
        if n == 0 || !line.ends_with('\n') {
            return Err(ControlError::Protocol(
                "the listing ended early (the daemon stopped?) or a line was too long".into(),
            ));
        }
        let protocol = |e: serde_json::Error| ControlError::Protocol(e.to_string());
        let value: serde_json::Value = serde_json::from_str(line.trim()).map_err(protocol)?;
        if value.get("status").and_then(|s| s.as_str()) == Some("message") {
            let ListLine::Message(m) = serde_json::from_value(value).map_err(protocol)?;
            each(m).map_err(ControlError::Output)?;
            continue;
        }
        match serde_json::from_value(value).map_err(protocol)? {
            Reply::Ok { messages, detail } => {
                for m in messages {
                    each(m).map_err(ControlError::Output)?;
                }
                return Ok(Reply::Ok {
                    messages: vec![],
                    detail,
                });
            }
            error @ Reply::Error { .. } => return Ok(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Spool, SpoolKey};

    #[tokio::test]
    async fn a_listing_streams_the_window_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolKey::from_bytes([3; 32])).unwrap();
        let settings = crate::config::QueueSettings {
            retry_base: std::time::Duration::from_secs(60),
            retry_max: std::time::Duration::from_secs(3600),
            max_age: std::time::Duration::from_secs(86400),
            max_active: 10,
            max_window: 2,
            scan_interval: std::time::Duration::from_secs(5),
        };
        let (q, _) = Queue::open(spool.clone(), settings, "gw.example.test".into()).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let m = QueuedMessage::for_test("a@example.test", &["b@example.test"]);
            let mut w = spool.create_content(&m.id).await.unwrap();
            w.write(b"x").await.unwrap();
            w.finish().await.unwrap();
            ids.insert(m.id.clone());
            q.enqueue(m).await.unwrap();
        }
        let path = dir.path().join("control.sock");
        let reload: ReloadFn = std::sync::Arc::new(|| Ok(String::new()));
        let server = tokio::spawn(serve(path.clone(), q.clone(), reload));
        for _ in 0..1000 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut got = std::collections::BTreeSet::new();
        let end = list(&path, |m| {
            assert!(!m.in_flight);
            got.insert(m.message.id);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(got, ids, "three of the five are on disk only");
        match end {
            Reply::Ok { detail, .. } => assert_eq!(detail, "5 message(s)"),
            other => panic!("{other:?}"),
        }
        // A client that stops reading ends the listing, not the daemon.
        let failed = list(&path, |_| Err(std::io::Error::other("stdout closed"))).await;
        assert!(matches!(failed, Err(ControlError::Output(_))));
        let again = list(&path, |_| Ok(())).await.unwrap();
        assert!(matches!(again, Reply::Ok { .. }));
        server.abort();
    }
}
