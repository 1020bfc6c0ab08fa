//! sealgate: an SMTP relay/gateway that keeps protected health information
//! from leaving an organisation in the clear.
//!
//! The modules follow the data path; read them in this order to follow one
//! message: `inbound` → `queue` → `policy` (with `probe`) → `dispatch` →
//! `encrypt` → `outbound` → `audit`. `net` holds what `probe` and
//! `outbound` share (resolvers, DANE, TLS, HTTPS, MTA-STS), `capability`
//! the vocabulary `policy` and `probe` share; `config` turns TOML into
//! runtime settings, `cli` holds the subcommands. [`LAYERS`] is the import
//! order.

pub mod audit;
pub mod capability;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod encrypt;
pub mod inbound;
pub mod net;
pub mod outbound;
pub mod policy;
pub mod portal;
pub mod probe;
pub mod queue;
pub mod server;
pub mod util;

/// The stages and shared pieces, lowest first: each may import only those
/// before it, so the data path has no circles (see ARCHITECTURE.md).
/// `net` holds what `probe` and `outbound` share; `capability` the
/// vocabulary `policy` and `probe` share; `dispatch` runs one attempt
/// through the stages above it; `server` and `cli` wire everything.
pub const LAYERS: &[&str] = &[
    "util",
    "capability",
    "config",
    "net",
    "audit",
    "queue",
    "inbound",
    "policy",
    "encrypt",
    "probe",
    "portal",
    "outbound",
    "dispatch",
    "server",
    "cli",
];

#[cfg(test)]
mod layers {
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Top-level modules named in `text`, the source of a file `depth`
    /// modules below the crate root (`src/a.rs` and `src/a/mod.rs` are 1,
    /// `src/a/b.rs` is 2): by `crate::x` paths, and by chains of `super::`
    /// that climb to the root; the members of `{a, b::c}` groups count.
    /// Comment lines are skipped.
    fn imports(text: &str, depth: usize) -> Vec<String> {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !code.contains("crate as ") && !code.contains("extern crate self"),
            "an alias of the crate would hide imports from this check"
        );
        let mut found = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            found.extend(first_segments(&code[i + "crate::".len()..]));
        }
        for (i, _) in code.match_indices("super::") {
            if code[..i].ends_with("::") {
                continue; // inside a chain counted from its start
            }
            let mut rest = &code[i..];
            let mut climbed = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                rest = r;
                climbed += 1;
            }
            if climbed == depth {
                found.extend(first_segments(rest));
            }
        }
        found
    }

    /// The module a path starts with, or each member's of a `{...}` group.
    fn first_segments(path: &str) -> Vec<String> {
        if let Some(group) = path.strip_prefix('{') {
            return group_members(group);
        }
        vec![
            path.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        ]
    }

    /// The first path segment of each top-level member of a `{...}` group
    /// (`group` starts after the opening brace).
    fn group_members(group: &str) -> Vec<String> {
        let (mut depth, mut start, mut out) = (0usize, true, Vec::new());
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => start = true,
                c if start && (c.is_ascii_alphanumeric() || c == '_') => {
                    start = false;
                    let name: String = group[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    out.push(name);
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn each_module_imports_only_layers_beneath_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut wrong = Vec::new();
        for file in &files {
            let rel = file.strip_prefix(&src).expect("under src/");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs"))
                .unwrap_or_default();
            let Some(own) = LAYERS.iter().position(|l| *l == top) else {
                continue; // lib.rs, main.rs: the crate root
            };
            let text = std::fs::read_to_string(file).expect("source is readable");
            let depth = rel.components().count() - usize::from(rel.ends_with("mod.rs"));
            for used in imports(&text, depth) {
                if let Some(layer) = LAYERS.iter().position(|l| *l == used) {
                    if layer > own {
                        wrong.push(format!("{} imports crate::{used}", rel.display()));
                    }
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(
            wrong.is_empty(),
            "imports against the layer order {LAYERS:?}:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn the_import_scanner_sees_groups_paths_and_super_chains() {
        let text = "use crate::{probe::{Probe, Probes}, net};\n// crate::cli in a comment\nfn f() { crate::outbound::x(); }";
        assert_eq!(imports(text, 1), vec!["probe", "net", "outbound"]);
        // From src/probe/keys.rs (depth 2), `super::super::x` is crate::x;
        // `super::dane` stays inside probe.
        let text = "use super::super::outbound::Deliverer;\nuse super::dane;";
        assert_eq!(imports(text, 2), vec!["outbound"]);
        assert_eq!(imports("use super::{cli, audit};", 1), vec!["cli", "audit"]);
        assert!(
            LAYERS.iter().position(|l| *l == "probe")
                < LAYERS.iter().position(|l| *l == "outbound")
        );
    }

    #[test]
    #[should_panic(expected = "alias of the crate")]
    fn an_alias_of_the_crate_is_refused() {
        imports("use crate as c;\nuse c::outbound;", 1);
    }
}
