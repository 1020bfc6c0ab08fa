//! The PDF reader's child process (`policy::sandbox`) as the daemon runs
//! it: the real binary's `extract-worker`, its answers, and its hard
//! memory limit.

use std::time::{Duration, Instant};

use sealgate::policy::extract::{ExtractError, Limits};
use sealgate::policy::sandbox::{Worker, in_child};

/// The documents of the unit tests, made by Python and qpdf.
#[path = "../../src/policy/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

fn worker(max_memory: u64) -> Worker {
    Worker {
        exe: crate::gateway::BIN.into(),
        max_memory,
    }
}

fn limits(max_inflated: usize) -> Limits {
    Limits {
        max_inflated,
        max_text: 16 << 20,
        deadline: Instant::now() + Duration::from_secs(20),
        depth: sealgate::policy::extract::MAX_CONTAINER_DEPTH,
    }
}

/// A PDF with an SSN on its page and a string object of `size` bytes
/// that qpdf puts into a compressed object stream: lopdf inflates it while
/// loading, in one call our deadline and budgets cannot interrupt.
fn pdf_with_big_object_stream(size: usize) -> Vec<u8> {
    let page = b"BT /F1 12 Tf 72 712 Td (Patient SSN 123-45-6789) Tj ET";
    let mut content = format!("<< /Length {} >>\nstream\n", page.len()).into_bytes();
    content.extend_from_slice(page);
    content.extend_from_slice(b"\nendstream");
    let mut big = b"(".to_vec();
    big.resize(size, b' ');
    big.push(b')');
    let objs: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R /Big 6 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
        content,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        big,
    ];
    let mut out = b"%PDF-1.5\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    fixtures::qpdf(&out, &["--object-streams=generate", "--compress-streams=y"])
}

#[test]
fn the_worker_reads_text_and_reports_errors_as_they_are() {
    let w = worker(sealgate::policy::sandbox::DEFAULT_MAX_MEMORY);
    let pdf = fixtures::pdf_object_streams("Patient SSN 123-45-6789");
    let text = in_child(&w, &pdf, &limits(32 << 20)).unwrap();
    assert!(text.contains("123-45-6789"), "{text}");
    let encrypted = fixtures::qpdf(&pdf, &["--encrypt", "u", "o", "256", "--"]);
    assert_eq!(
        in_child(&w, &encrypted, &limits(32 << 20)),
        Err(ExtractError::Encrypted)
    );
    assert!(matches!(
        in_child(&w, b"%PDF-1.4\nnot really", &limits(32 << 20)),
        Err(ExtractError::Unparseable(_))
    ));
    // No time left: not even started.
    let mut late = limits(32 << 20);
    late.deadline = Instant::now();
    assert_eq!(in_child(&w, &pdf, &late), Err(ExtractError::Deadline));
}

/// The address-space limit holds inside lopdf's one loading call: the same
/// document that the reader loads within its budget in-process makes the
/// child run out of a smaller limit, and that is an error (unscannable),
/// never text and never the daemon's memory.
#[test]
fn a_document_that_needs_more_memory_than_the_child_has_is_unscannable() {
    let pdf = pdf_with_big_object_stream(12 << 20);
    assert!(pdf.len() < 1 << 20, "{} bytes", pdf.len());
    let l = limits(100 << 20);
    let in_process = sealgate::policy::extract::pdf_text(&pdf, &l).unwrap();
    assert!(in_process.contains("123-45-6789"), "{in_process}");
    // With room, the child reads it as the process does.
    assert_eq!(in_child(&worker(1 << 30), &pdf, &l), Ok(in_process));
    // Without, nothing comes back as text (whichever way lopdf fails: an
    // allocation it tries and skips, or one that aborts the child).
    let got = in_child(&worker(48 << 20), &pdf, &l);
    assert!(got.is_err(), "{got:?}");
}
