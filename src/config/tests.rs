use super::*;

const MINIMAL: &str = r#"
[server]
hostname = "gateway.example.test"
listen = ["127.0.0.1:2525"]
spool_dir = "spool"
spool_key_file = "spool.key"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let s = Settings::parse(Path::new("/etc/sealgate/sealgate.toml"), MINIMAL).unwrap();
    assert_eq!(s.server.limits.max_message_size, 50_000_000);
    assert_eq!(s.delivery.port, 25);
    assert_eq!(s.queue.max_age, Duration::from_secs(5 * 86400));
    assert_eq!(s.queue.max_window, 10_000);
    assert_eq!(s.queue.scan_interval, Duration::from_secs(5));
    assert!(s.relay.allow_networks.is_empty());
    assert!(s.audit.database_url.starts_with("sqlite://"));
}

#[test]
fn unknown_key_names_line() {
    let text = format!("{MINIMAL}bogus_key = 1\n");
    let err = Settings::parse(Path::new("x.toml"), &text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("x.toml:7"), "{msg}");
    assert!(msg.contains("bogus_key"), "{msg}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let text = r#"
[server]
hostname = "not a host"
listen = ["127.0.0.1:2525", "nonsense"]
spool_dir = "spool"
spool_key_file = "spool.key"
max_message_size = "50 parsecs"
command_timeout = "soon"

[relay]
allow_networks = ["10.0.0.0/33"]

[delivery]
port = 70000

[queue]
max_window = 0
scan_interval = "0s"
"#;
    let err = Settings::parse(Path::new("bad.toml"), text).unwrap_err();
    let keys: Vec<_> = err
        .0
        .iter()
        .map(|p| (p.key.clone().unwrap_or_default(), p.line))
        .collect();
    let want = [
        ("server.hostname", 3),
        ("server.listen", 4),
        ("server.max_message_size", 7),
        ("server.command_timeout", 8),
        ("relay.allow_networks", 11),
        ("delivery.port", 14),
        ("queue.max_window", 17),
        ("queue.scan_interval", 18),
    ];
    for (k, line) in want {
        assert!(
            keys.contains(&(k.to_string(), Some(line))),
            "missing {k} at {line}: {keys:?}"
        );
    }
}

#[test]
fn mapped_ipv6_is_checked_as_ipv4() {
    let relay = RelaySettings {
        allow_networks: vec!["10.0.0.0/8".parse().unwrap()],
    };
    assert!(relay.allows("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!relay.allows("::ffff:11.1.2.3".parse().unwrap()));
    assert!(!relay.allows("127.0.0.1".parse().unwrap()));
}

#[test]
fn host_port() {
    assert_eq!(
        raw::split_host_port("relay.example.net:587"),
        Some(("relay.example.net".into(), 587))
    );
    assert_eq!(raw::split_host_port("[::1]:25"), Some(("::1".into(), 25)));
    assert_eq!(raw::split_host_port("relay.example.net"), None);
}

#[test]
fn the_example_config_documents_only_real_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sealgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    match Settings::parse(&path, &text) {
        Ok(_) => {}
        Err(e) => {
            for p in &e.0 {
                // Only the example's placeholder files and hash may fail.
                let ok = p.message.contains("does not exist")
                    || p.key.as_deref() == Some("server.users.password_hash");
                assert!(ok, "unexpected problem in the example config: {p}");
            }
        }
    }
}

#[test]
fn the_quickstart_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sealgate.toml");
    let s = Settings::load(&path).unwrap();
    assert_eq!(s.server.listen[0].port(), 2525);
    assert!(s.audit.database_url.starts_with("sqlite://"));
}
