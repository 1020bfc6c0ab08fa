//! The control socket: how `sealgate queue ...` and `sealgate reload` talk
//! to a running daemon. A Unix socket in the spool folder, 0600 from the
//! moment it exists; only root and the daemon's own user are served (peer
//! credentials); one JSON request line, one JSON reply line, both with
//! timeouts and a size bound. `list` is streamed: one
//! `{"status":"message",...}` line per message as it is read, then the
//! final `ok` or `error` line, so a large queue is never held in memory
//! on either side.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

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

/// Bounds on one control connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest wait for the request line.
    read: Duration,
    /// Longest wait for the client to take the reply.
    write: Duration,
    /// Largest request line in bytes.
    max_request: u64,
    /// Connections served at once; more are closed at once.
    max_clients: usize,
}

const LIMITS: Limits = Limits {
    read: Duration::from_secs(10),
    write: Duration::from_secs(10),
    max_request: 64 * 1024,
    max_clients: 16,
};

/// Who may use the socket: root and the user the daemon runs as. The
/// socket's 0600 mode already says so; the check makes it hold even if
/// someone loosens the mode or the folder.
#[derive(Debug, Clone)]
struct Peers {
    allowed: Vec<u32>,
}

impl Peers {
    fn daemon() -> Peers {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own = unsafe { libc::geteuid() };
        Peers {
            allowed: vec![0, own],
        }
    }

    fn allows(&self, uid: u32) -> bool {
        self.allowed.contains(&uid)
    }
}

/// Serves the control socket until the task is aborted.
pub async fn serve(path: PathBuf, queue: Queue, reload: ReloadFn) -> Result<(), ControlError> {
    let listener = bind(&path).await?;
    accept_loop(listener, queue, reload, Peers::daemon(), LIMITS).await;
    Ok(())
}

/// Creates the socket at `path`, replacing one left by a dead daemon.
async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A socket left by a killed daemon would make bind fail; a live daemon
    // would answer a connect, so only replace a dead one.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            )));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another sealgate daemon is running on this spool",
            )));
        }
    }
    bind_private(path).map_err(io)
}

/// Binds so that the socket never exists with a looser mode than 0600:
/// bind inside a fresh folder only we can enter (0700), set the mode, then
/// rename it to `path` (which atomically replaces a stale socket). Setting
/// the umask instead would change it for every thread of the process.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short, because socket paths are limited to about 100 bytes.
    let private = parent.join(format!(
        ".ctl-{}",
        hex::encode(crate::util::random_bytes::<4>())
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    })();
    let cleaned = std::fs::remove_dir_all(&private);
    let listener = bound?;
    cleaned?;
    Ok(listener)
}

async fn accept_loop(
    listener: UnixListener,
    queue: Queue,
    reload: ReloadFn,
    peers: Peers,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    let peers = Arc::new(peers);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("control socket busy; connection closed");
            continue;
        };
        let (queue, reload, peers) = (queue.clone(), reload.clone(), peers.clone());
        tokio::spawn(async move {
            let _slot = slot;
            session(stream, &queue, &reload, &peers, limits).await;
        });
    }
}

/// One connection: check the peer, read one request line, answer it.
async fn session(
    stream: UnixStream,
    queue: &Queue,
    reload: &ReloadFn,
    peers: &Peers,
    limits: Limits,
) {
    let refused = match stream.peer_cred() {
        Ok(cred) if peers.allows(cred.uid()) => None,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control socket connection refused: only root and the daemon's user may use it"
            );
            Some(
                "permission denied: only root and the user sealgate runs as may use the control socket",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot tell who is connecting; refused");
            Some("permission denied: cannot tell who is connecting")
        }
    };
    let (rd, mut wr) = stream.into_split();
    let reply = match refused {
        Some(detail) => {
            // Take the request first, so the client reads our answer
            // instead of failing on a closed socket; it is not acted on.
            let _ = read_request(rd, limits).await;
            Reply::Error {
                detail: detail.into(),
            }
        }
        None => match read_request(rd, limits).await {
            Ok(Some(Request::List)) => {
                if let Err(e) = stream_list(queue, &mut wr).await {
                    tracing::debug!(error = %e, "queue listing not finished (the client went away?)");
                }
                return;
            }
            Ok(Some(req)) => handle(queue, reload, req).await,
            Ok(None) => return,
            Err(detail) => Reply::Error { detail },
        },
    };
    if let Err(e) = send(&mut wr, &reply, limits.write).await {
        tracing::debug!(error = %e, "control socket reply not delivered");
    }
}

/// The request line; `Ok(None)` if the client sent nothing in time.
async fn read_request(
    rd: tokio::net::unix::OwnedReadHalf,
    limits: Limits,
) -> Result<Option<Request>, String> {
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(limits.max_request);
    match tokio::time::timeout(limits.read, rd.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return Ok(None),
        Ok(Ok(n)) if n as u64 >= limits.max_request && !line.ends_with('\n') => {
            return Err(format!("request longer than {} bytes", limits.max_request));
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("bad request: {e}")),
    }
    serde_json::from_str::<Request>(line.trim())
        .map(Some)
        .map_err(|e| format!("bad request: {e}"))
}

/// Writes one JSON line and closes, within `limit`.
async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    wr: &mut W,
    msg: &T,
    limit: Duration,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(msg).map_err(std::io::Error::other)?;
    text.push('\n');
    tokio::time::timeout(limit, async {
        wr.write_all(text.as_bytes()).await?;
        wr.flush().await?;
        wr.shutdown().await
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("not taken within {} s", limit.as_secs()),
        )
    })?
}

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
    let stream = UnixStream::connect(path)
        .await
        .map_err(|_| ControlError::NotRunning(path.to_path_buf()))?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (rd, mut wr) = stream.into_split();
    send(&mut wr, req, LIMITS.write).await.map_err(io)?;
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(512 * 1024 * 1024);
    tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut line))
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
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::config::QueueSettings;
    use crate::queue::{Spool, SpoolKey};

    fn test_queue(dir: &Path) -> Queue {
        let spool = Spool::open(dir, SpoolKey::from_bytes([1; 32])).unwrap();
        let settings = QueueSettings {
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_age: Duration::from_secs(86400),
            max_active: 10,
            max_window: 10,
            scan_interval: Duration::from_secs(5),
        };
        Queue::open(spool, settings, "gw.example.test".into())
            .unwrap()
            .0
    }

    fn no_reload() -> ReloadFn {
        Arc::new(|| Ok("reloaded".into()))
    }

    /// Binds at `dir/control.sock` and serves with `peers` and `limits`.
    async fn start(
        dir: &Path,
        peers: Peers,
        limits: Limits,
    ) -> (PathBuf, tokio::task::JoinHandle<()>) {
        let path = dir.join("control.sock");
        let listener = bind(&path).await.unwrap();
        let task = tokio::spawn(accept_loop(
            listener,
            test_queue(&dir.join("spool")),
            no_reload(),
            peers,
            limits,
        ));
        (path, task)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn the_socket_is_private_from_the_start_and_answers_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        // A stale socket from a killed daemon is replaced.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join("control.sock")).unwrap());
        let (path, task) = start(dir.path(), Peers::daemon(), LIMITS).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // The private folder it was bound in is gone.
        assert_eq!(names(dir.path()), ["control.sock", "spool"]);
        match call(&path, &Request::Reload).await.unwrap() {
            Reply::Ok { detail, .. } => assert_eq!(detail, "reloaded"),
            other => panic!("{other:?}"),
        }
        // A second daemon on the same socket is refused.
        assert!(matches!(
            bind(&path).await,
            Err(ControlError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse
        ));
        task.abort();
        // A file that is not a socket is never replaced.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind(&file).await.is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn a_peer_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Allow only a user that is not us: our own connection is refused.
        let stranger = Peers {
            allowed: vec![u32::MAX - 7],
        };
        let (path, task) = start(dir.path(), stranger, LIMITS).await;
        match call(&path, &Request::List).await.unwrap() {
            Reply::Error { detail } => assert!(detail.contains("permission denied"), "{detail}"),
            other => panic!("{other:?}"),
        }
        task.abort();
    }

    /// With root, a real process of another user (nobody), on a socket
    /// whose mode and folder were loosened on purpose, is still refused.
    #[tokio::test]
    async fn another_uid_is_refused_even_through_loose_permissions() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "not root: cannot run a client as another user; covered by a_peer_of_another_user_is_refused"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, task) = start(dir.path(), Peers::daemon(), LIMITS).await;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"cmd\":\"list\"}\\n')\nprint(s.makefile().readline())";
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args(["-c", script]).arg(&path);
        cmd.uid(65534).gid(65534);
        let out = cmd.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("permission denied"),
            "stdout {stdout} stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        task.abort();
    }

    #[tokio::test]
    async fn silent_and_oversized_requests_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            read: Duration::from_millis(200),
            max_request: 1024,
            ..LIMITS
        };
        let (path, task) = start(dir.path(), Peers::daemon(), limits).await;
        // Sends nothing: the daemon hangs up without an answer.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert!(buf.is_empty());
        // A line longer than the bound gets an error, not a buffer.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&vec![b'x'; 4096]).await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("request longer than 1024 bytes"), "{reply}");
        // Garbage gets an error too.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"cmd\":\"format-disk\"}\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("bad request"), "{reply}");
        task.abort();
    }

    /// A client that never reads cannot hold a writer: the write gives up.
    #[tokio::test]
    async fn a_reply_nobody_reads_times_out() {
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let big = "x".repeat(16 * 1024 * 1024);
        let err = send(&mut ours, &big, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}

#[cfg(test)]
mod list_tests {
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
