//! OpenPGP encryption throughput and peak memory: 50 KB and 20 MB messages
//! to RSA-2048, RSA-3072 and Curve25519 keys, with and without signing.
//!
//! `cargo bench --bench pgp` runs every case in a child process of its own
//! (so the peak RSS, VmHWM, belongs to that case) and prints a table.
//! Compare with the crypto floor: `openssl speed -evp aes-256-cfb rsa2048
//! rsa3072 ecdhx25519`.

use std::io::Write;
use std::time::Instant;

use sealgate::encrypt::pgp;
use sequoia_openpgp::cert::prelude::*;

const SIZES: [(&str, usize, u32); 2] = [("50 KB", 50 * 1024, 200), ("20 MB", 20 * 1024 * 1024, 3)];

fn suite(name: &str) -> CipherSuite {
    match name {
        "RSA-2048" => CipherSuite::RSA2k,
        "RSA-3072" => CipherSuite::RSA3k,
        _ => CipherSuite::Cv25519,
    }
}

fn cert(suite: CipherSuite, uid: &str) -> sequoia_openpgp::Cert {
    CertBuilder::general_purpose(Some(uid))
        .set_cipher_suite(suite)
        .generate()
        .expect("key generation")
        .0
}

/// One case, in this process: prints `msgs_per_s mib_per_s peak_kib`.
fn run_case(key: &str, size: usize, iterations: u32, sign: bool) {
    let recipient = cert(suite(key), "<bob@example.test>");
    let signer = sign.then(|| cert(suite(key), "<signing@clinic.example.test>"));
    let header = b"From: a@clinic.example.test\r\nTo: bob@example.test\r\nSubject: benchmark\r\nContent-Type: application/octet-stream\r\n\r\n";
    let block: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let started = Instant::now();
    for _ in 0..iterations {
        let opts = pgp::PgpOptions {
            recipients: std::slice::from_ref(&recipient),
            signer: signer.as_ref(),
            subject_placeholder: "...",
        };
        // Streamed like the delivery path: the body is never whole in memory.
        let mut w = pgp::writer(std::io::sink(), &opts).expect("writer");
        w.write_all(&pgp::payload(header, "[...]")).expect("write");
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            w.write_all(&block[..n]).expect("write");
            left -= n;
        }
        w.finalize().expect("finalize");
    }
    let secs = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0")
        .to_string();
    println!(
        "{:.2} {:.1} {}",
        iterations as f64 / secs,
        (size as f64 * iterations as f64) / secs / 1048576.0,
        peak
    );
}

fn main() {
    if let Ok(case) = std::env::var("SEALGATE_PGP_CASE") {
        let parts: Vec<&str> = case.split('|').collect();
        run_case(
            parts[0],
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
            parts[3] == "1",
        );
        return;
    }
    // `cargo test --benches` runs bench binaries with `--bench` absent; only
    // measure when invoked by `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!("| key | size | signed | messages/s | MiB/s | peak RSS |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    for key in ["RSA-2048", "RSA-3072", "Curve25519"] {
        for (label, size, iterations) in SIZES {
            for sign in [false, true] {
                let out = std::process::Command::new(&exe)
                    .env(
                        "SEALGATE_PGP_CASE",
                        format!("{key}|{size}|{iterations}|{}", sign as u8),
                    )
                    .output()
                    .expect("child");
                let text = String::from_utf8_lossy(&out.stdout);
                let f: Vec<&str> = text.split_whitespace().collect();
                if f.len() == 3 {
                    let peak_mib = f[2].parse::<f64>().unwrap_or(0.0) / 1024.0;
                    println!(
                        "| {key} | {label} | {} | {} | {} | {peak_mib:.1} MiB |",
                        if sign { "yes" } else { "no" },
                        f[0],
                        f[1]
                    );
                } else {
                    println!(
                        "| {key} | {label} | {} | failed: {} | | |",
                        if sign { "yes" } else { "no" },
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
        }
    }
}
