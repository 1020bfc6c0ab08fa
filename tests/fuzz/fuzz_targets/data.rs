//! The DATA receiver (`sealgate::inbound::data::DataReceiver::feed`), fed
//! in the splits the input chooses (as reads from a socket would be).
//!
//! Input: 2 bytes size limit, 1 byte line limit, 1 byte header limit
//! (x16), 1 byte count of chunk lengths, that many chunk lengths (cycled),
//! then the wire bytes after the `DATA` line.
//!
//! Invariants: the same result whatever the splits; the end of data is
//! found exactly at the first CRLF.CRLF of the stream, counting the CRLF
//! that ended the DATA line (SMTP smuggling); the content never holds a
//! bare CR or LF; the content never exceeds the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::inbound::data::{DataProblem, DataReceiver};

struct Limits {
    size: u64,
    line: usize,
    header: usize,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    /// Bytes of the input consumed up to and including the end of data.
    end: Option<usize>,
    problem: Option<DataProblem>,
    size: u64,
}

fn run(limits: &Limits, wire: &[u8], chunks: &[usize]) -> Outcome {
    let mut r = DataReceiver::new(limits.size, limits.line, limits.header);
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    let mut lens = chunks.iter().cycle();
    while offset < wire.len() {
        let len = lens.next().copied().unwrap_or(wire.len());
        let chunk = &wire[offset..(offset + len).min(wire.len())];
        if let Some(n) = r.feed(chunk, &mut out) {
            assert!(n >= 1 && n <= chunk.len(), "end {n} outside the chunk");
            end = Some(offset + n);
            break;
        }
        offset += chunk.len();
    }
    Outcome {
        out,
        end,
        problem: r.problem(),
        size: r.size(),
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let limits = Limits {
        size: u64::from(u16::from_le_bytes([input[0], input[1]])),
        line: usize::from(input[2]) + 1,
        header: usize::from(input[3]) * 16,
    };
    let n = usize::from(input[4] % 8);
    let Some(lens) = input.get(5..5 + n) else {
        return;
    };
    let chunks: Vec<usize> = lens.iter().map(|&b| usize::from(b) + 1).collect();
    let wire = &input[5 + n..];

    let whole = run(&limits, wire, &[]);
    let split = run(&limits, wire, &chunks);
    assert_eq!(
        (whole.end, whole.problem),
        (split.end, split.problem),
        "the splits changed the result"
    );
    // After a problem the content is refused, and how much of it was kept
    // before the limit fired may depend on the reads.
    if whole.problem.is_none() {
        assert_eq!(whole, split, "the splits changed the content");
    }

    // The DATA line ended with CRLF, so the stream seen by the receiver
    // starts at a line start: the end is the first CRLF "." CRLF of
    // CRLF + wire.
    let mut stream = b"\r\n".to_vec();
    stream.extend_from_slice(wire);
    let expected = stream
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5 - 2);
    assert_eq!(whole.end, expected, "end of data at the wrong place");

    let out = &whole.out;
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && out[i - 1] == b'\r',
                "bare LF in the content at {i}"
            );
        }
        if b == b'\r' {
            assert_eq!(
                out.get(i + 1),
                Some(&b'\n'),
                "bare CR in the content at {i}"
            );
        }
    }
    assert!(
        out.len() as u64 <= limits.size,
        "content of {} bytes over the limit of {}",
        out.len(),
        limits.size
    );
    if whole.problem.is_none() {
        assert_eq!(
            whole.size,
            out.len() as u64,
            "size() disagrees with the content"
        );
    }
});
