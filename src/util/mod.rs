//! Small helpers shared by several stages: ids, sizes, durations, hashing.

pub mod address;
pub mod pattern;
pub mod stream;

use std::time::Duration;

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operating system's random source (getrandom / /dev/urandom) failed; \
     sealgate needs it for keys, nonces and salts and will not run without it"
)]
pub struct RandomError;

/// Where random bytes come from: the operating system, or in tests a
/// source that fails.
trait Entropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's CSPRNG, through ring (getrandom on Linux).
struct Os;

impl Entropy for Os {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| RandomError)
    }
}

/// Random bytes from the operating system's CSPRNG, or an error.
pub fn try_random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    Os.fill(&mut buf)?;
    Ok(buf)
}

/// Checks at start-up that the random source works, so that a broken one
/// is a clear error before anything is accepted rather than an abort later.
pub fn check_random() -> Result<(), RandomError> {
    try_random_bytes::<16>().map(|_| ())
}

/// Random bytes from the operating system's CSPRNG (keys, nonces, salts,
/// ids). If the source fails the process aborts with a log line: there is
/// no weaker fallback, because a predictable nonce or key is worse than a
/// stopped gateway (mail already acknowledged is safe in the spool).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    bytes_or_abort(&Os)
}

fn bytes_or_abort<const N: usize>(source: &dyn Entropy) -> [u8; N] {
    let mut buf = [0u8; N];
    match source.fill(&mut buf) {
        Ok(()) => buf,
        Err(e) => random_source_failed(&e),
    }
}

#[cold]
fn random_source_failed(e: &RandomError) -> ! {
    tracing::error!(error = %e, "stopping: no secure random numbers");
    eprintln!("sealgate: {e}; stopping");
    std::process::abort()
}

/// `bytes` in base64, in lines of 76 characters each ending in CRLF (a
/// MIME body part's `Content-Transfer-Encoding: base64`).
pub fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// A new random id of 32 lowercase hex characters.
pub fn random_hex_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Parses a size such as `50MB`, `512KiB`, `1048576` or `10 M` into bytes.
///
/// Decimal suffixes (`KB`, `MB`, `GB`) are powers of 1000, binary ones
/// (`KiB`, `MiB`, `GiB`) powers of 1024; `K`, `M` and `G` alone are taken as
/// binary, as Postfix and most MTAs do.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{text}` is not a size (expected e.g. \"50MB\")"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is too large a number"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "k" | "kib" => 1024,
        "m" | "mib" => 1024 * 1024,
        "g" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a duration such as `30s`, `5m`, `1h 30m` or `5d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration (expected e.g. \"30s\", \"5m\", \"5d\"): {e}")
    })?;
    // Every duration is added to a clock somewhere (a due time, a
    // deadline): far beyond any sensible setting, that addition overflows.
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is too long: at most 100 years (\"36500d\")"
        ));
    }
    Ok(d)
}

/// The longest duration a config or policy file may give.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Formats a duration for humans and for config round-trips (`1h 30m`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Replaces `path` with `data` so that a crash or a full disk leaves
/// either the old file or the new one, never a mix: write a temporary
/// file beside it (mode 0600), fsync it, rename it over `path`, fsync the
/// folder. Every step's error is returned; on error the temporary file is
/// removed and `path` is untouched.
pub fn atomic_write(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    // Unique, so two writers of the same file never share a temporary.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(random_bytes::<6>())
    ));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Constant-time equality for secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("50MB", Ok(50_000_000)),
            ("10MiB", Ok(10 * 1024 * 1024)),
            ("1024", Ok(1024)),
            ("2 k", Ok(2048)),
            ("1GB", Ok(1_000_000_000)),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_size(input),
                want.map_err(|_: ()| String::new()),
                "{input}"
            );
        }
        assert!(parse_size("MB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999GB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert!(parse_duration("soon").is_err());
    }

    struct Broken;

    impl Entropy for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), RandomError> {
            Err(RandomError)
        }
    }

    #[test]
    fn random_bytes_come_from_the_os() {
        assert!(check_random().is_ok());
        let (a, b) = (random_bytes::<16>(), random_bytes::<16>());
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 16]);
    }

    /// A failing source stops the process with a clear message (run in a
    /// child process, since the abort ends it) and never returns bytes.
    #[test]
    fn a_failing_random_source_aborts() {
        const CHILD: &str = "SEALGATE_TEST_BROKEN_RANDOM";
        if std::env::var_os(CHILD).is_some() {
            let bytes: [u8; 16] = bytes_or_abort(&Broken);
            // Only reached if the abort did not happen.
            println!("GOT BYTES {bytes:?}");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "util::tests::a_failing_random_source_aborts",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("GOT BYTES"), "{stdout}");
        assert!(
            stderr.contains("random source") && stderr.contains("stopping"),
            "{stderr}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(6), "SIGABRT: {:?}", out.status);
        }
    }

    #[test]
    fn atomic_write_replaces_whole_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        atomic_write(&path, b"first").unwrap();
        atomic_write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A failing step (here: the target is a folder, so rename fails)
        // is reported, leaves no temporary file and the folder unchanged.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"keep").unwrap();
        assert!(atomic_write(&blocked, b"new").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(std::fs::read(blocked.join("x")).unwrap(), b"keep");
        // No folder to write in: an error, not a panic.
        assert!(atomic_write(&dir.path().join("missing/x"), b"y").is_err());
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

/// Bytes available to an unprivileged writer on the file system that holds
/// `path` (statvfs `f_bavail * f_frsize`).
pub fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `st` is a buffer of
    // the right type that statvfs fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Creates (or truncates) `path` with `mode`, writes `data`, sets the
/// mtime when one is given, and fsyncs.
pub fn write_synced(
    path: &std::path::Path,
    data: &[u8],
    mode: u32,
    mtime: Option<std::time::SystemTime>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    // Before the fsync, so the time is as durable as the data (the spool
    // uses an envelope's mtime as its due time).
    if let Some(t) = mtime {
        f.set_modified(t)?;
    }
    f.sync_all()
}
