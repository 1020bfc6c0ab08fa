//! `check-config` and `serve` as a new user meets them: a config with many
//! mistakes, in the config and in a policy file, is reported whole in one
//! run, each problem with file, line and key.

use std::path::Path;
use std::process::Command;

use crate::gateway::BIN;

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the text"))
        + 1
}

fn run(verb: &str, config: &Path) -> (bool, String) {
    run_args(&[verb], config)
}

/// Runs `sealgate ARGS... --config CONFIG`: whether it succeeded, and
/// what it printed (stdout, then stderr).
pub(crate) fn run_args(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const CONFIG: &str = r#"loglevel = "debug"

[server]
hostname = "gateway.example.test"
listen = ["127.0.0.1:0"]
spool_dir = "spool"
spool_key_file = "no-such.key"
max_recipients = "lots"
command_timeout = "soon"
bogus_server_key = 1

[server.tls]
cert = "missing-cert.pem"
key = "tls-key.pem"
chain = "extra.pem"

[relay]
allow_networks = ["10.0.0.0/33"]

[delivery]
port = 70000
smart_host = "relay.example.test:587"

[qeue]
retry_base = "1m"

[policy]
files = ["policy.d/*.toml"]
"#;

const POLICY: &str = r#"[defaults]
method = ["tls"]

[[rule]]
name = "lab"
min_tls = "strong"
"#;

#[test]
fn every_mistake_of_config_and_policy_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealgate.toml");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(dir.path().join("tls-key.pem"), "not a key").unwrap();
    std::fs::create_dir(dir.path().join("policy.d")).unwrap();
    let policy = dir.path().join("policy.d/policy.toml");
    std::fs::write(&policy, POLICY).unwrap();

    let c = config.display().to_string();
    let p = policy.display().to_string();
    let at = |file: &str, text: &str, needle: &str| format!("{file}:{}:", line_of(text, needle));
    let want = [
        (at(&c, CONFIG, "loglevel"), "loglevel: unknown key"),
        (at(&c, CONFIG, "no-such.key"), "server.spool_key_file: "),
        (
            at(&c, CONFIG, "max_recipients"),
            "server.max_recipients: expected an integer",
        ),
        (
            at(&c, CONFIG, "command_timeout"),
            "server.command_timeout: `soon` is not a duration",
        ),
        (
            at(&c, CONFIG, "bogus_server_key"),
            "server.bogus_server_key: unknown key",
        ),
        (at(&c, CONFIG, "missing-cert.pem"), "server.tls.cert: file "),
        (at(&c, CONFIG, "chain ="), "server.tls.chain: unknown key"),
        (at(&c, CONFIG, "10.0.0.0/33"), "relay.allow_networks: "),
        (
            at(&c, CONFIG, "port = 70000"),
            "delivery.port: must be a port",
        ),
        (
            at(&c, CONFIG, "smart_host"),
            "delivery.smart_host: unknown key `smart_host` (did you mean `smarthost`?)",
        ),
        (at(&c, CONFIG, "[qeue]"), "qeue: unknown table"),
        (
            at(&p, POLICY, "method ="),
            "defaults.method: unknown key `method` (did you mean `methods`?)",
        ),
        (
            at(&p, POLICY, "strong"),
            "rule.min_tls: `strong` is not a TLS requirement",
        ),
    ];
    for verb in ["check-config", "serve"] {
        let (ok, text) = run(verb, &config);
        assert!(!ok, "{verb} accepted a broken config:\n{text}");
        for (place, what) in &want {
            assert!(
                text.lines()
                    .any(|l| l.contains(place.as_str()) && l.contains(what)),
                "{verb}: no `{place} ... {what}` in:\n{text}"
            );
        }
        // Nothing else: no follow-on noise, no duplicates.
        let problems = text.lines().filter(|l| l.starts_with("  /")).count();
        assert_eq!(problems, want.len(), "{verb}:\n{text}");
        assert!(
            text.contains(&format!("({} problems)", want.len())),
            "{text}"
        );
    }
    // serve never got as far as listening.
    assert!(!dir.path().join("spool/control.sock").exists());
}

#[test]
fn a_clean_config_still_passes_and_a_broken_policy_alone_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("spool.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::create_dir(dir.path().join("policy.d")).unwrap();
    let policy = dir.path().join("policy.d/policy.toml");
    std::fs::write(&policy, "[defaults]\nmethods = [\"tls\"]\n").unwrap();
    let config = dir.path().join("sealgate.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"gateway.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"spool\"\nspool_key_file = \"spool.key\"\n[policy]\nfiles = [\"policy.d/*.toml\"]\n",
    )
    .unwrap();
    let (ok, text) = run("check-config", &config);
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");

    // A policy value of the wrong type, and a rule key of the wrong type
    // next to a bad value: each reported, without follow-ons.
    std::fs::write(
        &policy,
        "[defaults]\nmethods = \"tls\"\n[[rule]]\nname = 7\naction = \"explode\"\n",
    )
    .unwrap();
    let (ok, text) = run("check-config", &config);
    assert!(!ok);
    let p = policy.display().to_string();
    for (line, what) in [
        (2, "defaults.methods: expected an array"),
        (4, "rule.name: expected a string, found the integer 7"),
        (5, "rule.action: `explode` is not an action"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{p}:{line}:")) && l.contains(what)),
            "no {line} {what} in:\n{text}"
        );
    }
    assert!(text.contains("(3 problems)"), "{text}");
}

/// `[dns] trust_anchor`: a zone-signing key and a key for another owner
/// are each reported with the anchor file's line; an IANA DS line passes
/// (offline: it is matched against the root keys only by `serve`).
#[test]
fn trust_anchor_mistakes_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("spool.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let anchor = dir.path().join("root.key");
    let config = dir.path().join("sealgate.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"gateway.example.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"spool\"\nspool_key_file = \"spool.key\"\n[dns]\ntrust_anchor = \"root.key\"\n",
    )
    .unwrap();
    let key =
        "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";
    std::fs::write(
        &anchor,
        format!("; root keys\n. IN DNSKEY 256 3 13 {key}\ntest. IN DNSKEY 257 3 13 {key}\n"),
    )
    .unwrap();
    let (ok, text) = run("check-config", &config);
    assert!(!ok, "{text}");
    let a = anchor.display().to_string();
    for (line, what) in [(2, "lack the SEP bit"), (3, "the owner name is `test.`")] {
        assert!(
            text.lines().any(|l| l.contains("dns.trust_anchor: ")
                && l.contains(&format!("{a}:{line}: "))
                && l.contains(what)),
            "no {line} {what} in:\n{text}"
        );
    }
    assert!(text.contains("(2 problems)"), "{text}");

    std::fs::write(
        &anchor,
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
    )
    .unwrap();
    let (ok, text) = run("check-config", &config);
    assert!(ok, "{text}");
}
