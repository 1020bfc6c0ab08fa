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
    "audit",
    "queue",
    "net",
    "inbound",
    "policy",
    "encrypt",
    "probe",
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

    /// Top-level modules named by `crate::x` paths in `text`, including
    /// the members of `use crate::{a, b::c}` groups; comments skipped.
    fn imports(text: &str) -> Vec<String> {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = Vec::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                found.extend(group_members(group));
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        found
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
            for used in imports(&text) {
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
    fn the_import_scanner_sees_groups_and_paths() {
        let text = "use crate::{probe::{Probe, Probes}, net};\n// crate::cli in a comment\nfn f() { crate::outbound::x(); }";
        assert_eq!(imports(text), vec!["probe", "net", "outbound"]);
        assert!(
            LAYERS.iter().position(|l| *l == "probe")
                < LAYERS.iter().position(|l| *l == "outbound")
        );
    }
}
