//! PDF extraction in a child process with hard limits.
//!
//! lopdf parses documents from senders we do not control, and its loading
//! is one call that our budgets and deadline cannot interrupt. So the
//! daemon reads PDFs in a child: the sealgate binary itself, started with
//! the hidden `extract-worker` command, with an address-space limit
//! (`RLIMIT_AS`), a CPU-time limit (`RLIMIT_CPU`), no core files, no
//! environment, and a wall-clock deadline after which the parent kills it.
//! A child that crashes, runs out of memory or time is an error, so the
//! attachment is unscannable (which the policy treats as PHI), and the
//! daemon goes on.
//!
//! Until [`enable`] names the binary (the daemon and `probe` do, at
//! start), extraction runs in-process: unit tests, fuzz targets, and the
//! worker itself.
//!
//! The worker's answer on stdout is `T` followed by the text, or `E`
//! followed by one of our own error messages (categories, never content).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::extract::{ExtractError, Limits, pdf_text};

/// Bounds of the child process.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The binary that has the `extract-worker` command.
    pub exe: PathBuf,
    /// Address space of the child (`RLIMIT_AS`), binary and libraries
    /// included.
    pub max_memory: u64,
}

/// Address space for one PDF: the document budget (128 MiB of
/// decompressed streams) with room for lopdf's objects and the binary
/// itself.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

static WORKER: OnceLock<Worker> = OnceLock::new();

/// Reads PDFs through `worker` from now on (once per process; later calls
/// are ignored).
pub fn enable(worker: Worker) {
    let _ = WORKER.set(worker);
}

/// The text of a PDF, read in the child when enabled, else in-process.
pub fn pdf(data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    match WORKER.get() {
        Some(w) => in_child(w, data, limits),
        None => pdf_text(data, limits),
    }
}

/// The text of a PDF, read in a child of `worker` (what [`pdf`] does once
/// enabled).
pub fn in_child(worker: &Worker, data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    let left = limits
        .deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(ExtractError::Deadline)?;
    let mut cmd = Command::new(&worker.exe);
    cmd.arg("extract-worker")
        .arg(limits.max_inflated.to_string())
        .arg(limits.max_text.to_string())
        .arg(left.as_millis().to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let max_memory = worker.max_memory;
    // CPU seconds: the time left, rounded up, and one more.
    let max_cpu = left.as_secs() + 2;
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            limit(libc::RLIMIT_AS, max_memory)?;
            limit(libc::RLIMIT_CPU, max_cpu)?;
            limit(libc::RLIMIT_CORE, 0)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|_| ExtractError::Unparseable("the PDF reader could not be started"))?;
    // Feed stdin from a thread, so a child that stops reading cannot
    // block us; read stdout (bounded) from another. Scoped: the document
    // is lent, not copied, and both end once the child has (it is killed
    // at the deadline, which closes its pipes).
    let cap = limits.max_text.saturating_add(64) as u64;
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let (status, out) = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut s) = stdin {
                let _ = s.write_all(data);
            }
        });
        let reader = scope.spawn(move || {
            let mut out = Vec::new();
            if let Some(s) = stdout {
                let _ = s.take(cap).read_to_end(&mut out);
            }
            out
        });
        let status = wait_until(&mut child, Instant::now() + left);
        (status, reader.join().unwrap_or_default())
    });
    match status {
        // An answer that filled the read cap may be cut short: not text.
        Some(_) if out.len() as u64 >= cap => Err(ExtractError::TooLarge(limits.max_text)),
        Some(s) if s.success() => answer(&out),
        // Killed at the deadline, or by the CPU limit (SIGXCPU).
        None => Err(ExtractError::Deadline),
        Some(s) if signal(&s) == Some(libc::SIGXCPU) => Err(ExtractError::Deadline),
        // Out of memory aborts (SIGABRT); anything else is a crash of the
        // reader on this document.
        Some(s) if signal(&s) == Some(libc::SIGABRT) => Err(ExtractError::Unparseable(
            "the PDF reader ran out of its memory limit",
        )),
        Some(_) => Err(ExtractError::Unparseable("the PDF reader failed on it")),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn limit(resource: Resource, value: u64) -> std::io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(resource, &l) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn signal(s: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.signal()
}

/// Waits for the child until `deadline`, then kills it: `None` if it had
/// to be killed.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> Option<std::process::ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Decodes the worker's answer.
fn answer(out: &[u8]) -> Result<String, ExtractError> {
    match out.split_first() {
        Some((b'T', text)) => String::from_utf8(text.to_vec())
            .map_err(|_| ExtractError::Unparseable("the PDF reader's answer was not text")),
        Some((b'E', why)) => Err(from_wire(&String::from_utf8_lossy(why))),
        _ => Err(ExtractError::Unparseable("the PDF reader gave no answer")),
    }
}

/// The error the worker reported, by its message.
fn from_wire(why: &str) -> ExtractError {
    let known = [
        ExtractError::Encrypted,
        ExtractError::NoText,
        ExtractError::Deadline,
        ExtractError::Unparseable("not a readable PDF"),
        ExtractError::Unsupported("embedded files"),
        ExtractError::Unsupported("text in form XObjects"),
    ];
    if let Some(e) = known.into_iter().find(|e| e.to_string() == why) {
        return e;
    }
    match why
        .strip_prefix("expands beyond the scan limit of ")
        .and_then(|r| r.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
    {
        Some(n) => ExtractError::TooLarge(n),
        None => ExtractError::Unparseable("the PDF reader's answer was not understood"),
    }
}

/// The `extract-worker` command: a PDF on stdin, the answer on stdout.
/// Arguments: the decompression budget, the text cap, the milliseconds
/// left.
pub fn worker_main(args: &[String]) -> i32 {
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(inflated), Some(text), Some(millis)) = (num(0), num(1), num(2)) else {
        eprintln!("sealgate extract-worker: MAX_INFLATED MAX_TEXT MILLIS expected");
        return 2;
    };
    let limits = Limits {
        max_inflated: usize::try_from(inflated).unwrap_or(usize::MAX),
        max_text: usize::try_from(text).unwrap_or(usize::MAX),
        deadline: Instant::now() + Duration::from_millis(millis),
        depth: super::extract::MAX_CONTAINER_DEPTH,
    };
    let mut data = Vec::new();
    if std::io::stdin().read_to_end(&mut data).is_err() {
        return 2;
    }
    let mut out = std::io::stdout().lock();
    let written = match pdf_text(&data, &limits) {
        Ok(t) => out
            .write_all(b"T")
            .and_then(|_| out.write_all(t.as_bytes())),
        Err(e) => out.write_all(format!("E{e}").as_bytes()),
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_the_worker_can_report_comes_back_as_itself() {
        for e in [
            ExtractError::Encrypted,
            ExtractError::NoText,
            ExtractError::Deadline,
            ExtractError::TooLarge(12345),
            ExtractError::Unparseable("not a readable PDF"),
            ExtractError::Unsupported("embedded files"),
            ExtractError::Unsupported("text in form XObjects"),
        ] {
            assert_eq!(answer(format!("E{e}").as_bytes()), Err(e));
        }
        assert_eq!(answer(b"Thello"), Ok("hello".into()));
        assert!(answer(b"").is_err());
        assert!(answer(b"Xjunk").is_err());
        assert!(answer(b"T\xff\xfe").is_err());
        assert!(matches!(
            answer(b"Esomething else"),
            Err(ExtractError::Unparseable(_))
        ));
    }
}
