//! Policy files (`sealgate::policy::file::compile_file`): TOML from bytes
//! to compiled rules, then the unreachable-rule check, as `Policy::load`
//! does for each file.
//!
//! Every problem must point into the file (a 1-based line and column that
//! exist), compiling must be deterministic, and a rule's origin must name
//! a line of the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sealgate::policy::file::{Compiled, compile_file, unreachable_rules};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let mut compiled = Compiled::default();
    let mut problems = Vec::new();
    compile_file(file, text, &mut compiled, &mut problems);

    let lines = text.split('\n').count();
    for p in &problems {
        assert_eq!(p.file, file);
        assert!(!p.message.is_empty(), "empty message: {p:?}");
        if let Some(line) = p.line {
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines}: {}",
                p.message
            );
            let col = p.column.expect("a line comes with a column");
            let width = text
                .split('\n')
                .nth(line - 1)
                .map_or(0, |l| l.chars().count());
            assert!(
                col >= 1 && col <= width + 1,
                "column {col} of {width}: {}",
                p.message
            );
        }
    }
    for r in &compiled.rules {
        let (path, line) = r.origin.rsplit_once(':').expect("origin is file:line");
        assert_eq!(path, "fuzz.toml");
        let line: usize = line.parse().expect("origin line is a number");
        assert!(
            line >= 1 && line <= lines,
            "rule origin line {line} of {lines}"
        );
    }
    for (i, msg) in unreachable_rules(&compiled.rules) {
        assert!(i < compiled.rules.len() && !msg.is_empty());
    }

    // The same text compiles to the same problems.
    let mut again = Compiled::default();
    let mut problems_again = Vec::new();
    compile_file(file, text, &mut again, &mut problems_again);
    assert_eq!(problems.len(), problems_again.len());
    assert_eq!(compiled.rules.len(), again.rules.len());
});
