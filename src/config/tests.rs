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

/// A duration so long that adding it to a clock would overflow is a
/// config problem, not a panic at the first retry.
#[test]
fn absurd_durations_are_refused() {
    for (value, ok) in [
        ("36500d", true),
        ("36501d", false),
        ("500000000years", false),
    ] {
        let text = format!("{MINIMAL}[queue]\nretry_max = \"{value}\"\nmax_age = \"{value}\"\n");
        match Settings::parse(Path::new("x.toml"), &text) {
            Ok(s) => {
                assert!(ok, "{value} accepted");
                assert_eq!(s.queue.retry_max, Duration::from_secs(36_500 * 86_400));
            }
            Err(e) => {
                assert!(!ok, "{value}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("queue.retry_max") && msg.contains("queue.max_age"),
                    "{msg}"
                );
            }
        }
    }
}

#[test]
fn mapped_ipv6_is_checked_as_ipv4() {
    let relay = RelaySettings {
        allow_networks: vec!["10.0.0.0/8".parse().unwrap()],
        ..Default::default()
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

#[test]
fn listener_bounds_have_defaults_and_are_validated() {
    let s = Settings::parse(Path::new("x.toml"), MINIMAL).unwrap();
    let l = &s.server.limits;
    assert_eq!(l.session_timeout, Duration::from_secs(1800));
    assert_eq!(l.data_phase_timeout, Duration::from_secs(600));
    assert_eq!(l.max_junk_commands, 30);
    let a = &s.server.auth;
    assert_eq!((a.max_failures, a.max_failures_total), (5, 100));
    assert_eq!(a.lockout, Duration::from_secs(900));
    assert_eq!(a.max_verifications, 4);
    assert!(!s.relay.allow_percent_hack);

    let text = format!(
        "{MINIMAL}session_timeout = \"1m\"\ndata_phase_timeout = \"30s\"\nmax_junk_commands = 5\nauth_max_failures = 3\nauth_max_failures_total = 9\nauth_lockout = \"2m\"\nauth_max_verifications = 2\n[relay]\nallow_percent_hack = true\n"
    );
    let s = Settings::parse(Path::new("x.toml"), &text).unwrap();
    assert_eq!(s.server.limits.session_timeout, Duration::from_secs(60));
    assert_eq!(s.server.limits.data_phase_timeout, Duration::from_secs(30));
    assert_eq!(s.server.limits.max_junk_commands, 5);
    assert_eq!(s.server.auth.max_failures, 3);
    assert_eq!(s.server.auth.max_failures_total, 9);
    assert_eq!(s.server.auth.lockout, Duration::from_secs(120));
    assert_eq!(s.server.auth.max_verifications, 2);
    assert!(s.relay.allow_percent_hack);

    let text = format!(
        "{MINIMAL}session_timeout = \"0s\"\ndata_phase_timeout = \"soon\"\nmax_junk_commands = 0\nauth_max_failures = 10\nauth_max_failures_total = 3\nauth_lockout = \"x\"\nauth_max_verifications = 0\n"
    );
    let err = Settings::parse(Path::new("x.toml"), &text).unwrap_err();
    let keys: Vec<_> = err
        .0
        .iter()
        .map(|p| (p.key.clone().unwrap_or_default(), p.line.unwrap_or(0)))
        .collect();
    for (k, line) in [
        ("server.session_timeout", 7),
        ("server.data_phase_timeout", 8),
        ("server.max_junk_commands", 9),
        ("server.auth_max_failures_total", 11),
        ("server.auth_lockout", 12),
        ("server.auth_max_verifications", 13),
    ] {
        assert!(
            keys.contains(&(k.to_string(), line)),
            "missing {k} at {line}: {keys:?}"
        );
    }
}

#[test]
fn connector_mistakes_are_reported_at_once_with_their_lines() {
    let text = format!(
        r#"{MINIMAL}
[[relay.connectors]]
name = "bad name"
client_cert_names = ["*.com", "a*.example.org"]
client_cert_roots = ["/nonexistent/roots.pem"]
tenant_id = "x"
originator_org = "not a domain"

[[relay.connectors]]
name = "google"
client_cert_names = ["*.google.com"]
client_cert_roots = ["/"]

[[relay.connectors]]
name = "google"
client_cert_names = []
client_cert_roots = []
"#
    );
    let err = Settings::parse(Path::new("c.toml"), &text).unwrap_err();
    let got: Vec<_> = err
        .0
        .iter()
        .map(|p| (p.key.clone().unwrap_or_default(), p.line.unwrap_or(0)))
        .collect();
    let want = [
        ("relay.connectors.name", 9),
        ("relay.connectors", 9),
        ("relay.connectors.client_cert_names", 10),
        ("relay.connectors.client_cert_roots", 11),
        ("relay.connectors.tenant_id", 12),
        ("relay.connectors.originator_org", 13),
        ("relay.connectors.client_cert_names", 17),
        ("relay.connectors.name", 21),
        ("relay.connectors.client_cert_names", 22),
        ("relay.connectors.client_cert_roots", 23),
    ];
    for (k, line) in want {
        assert!(
            got.contains(&(k.to_string(), line)),
            "missing {k} at {line}: {got:?}"
        );
    }
    // Both bad names on line 10 are reported, not just the first.
    let names = got
        .iter()
        .filter(|g| **g == ("relay.connectors.client_cert_names".to_string(), 10))
        .count();
    assert_eq!(names, 2, "{err}");
}

#[test]
fn a_microsoft_365_connector_needs_a_tenant() {
    let base = env!("CARGO_MANIFEST_DIR");
    let tls = format!("[server.tls]\ncert = \"{base}/Cargo.toml\"\nkey = \"{base}/Cargo.toml\"\n");
    let connector = |extra: &str| {
        format!(
            "{MINIMAL}{tls}[[relay.connectors]]\nname = \"m365\"\nclient_cert_names = [\"*.MAIL.protection.outlook.com.\"]\nclient_cert_roots = [\"{base}/config\"]\n{extra}"
        )
    };
    let err = Settings::parse(Path::new("c.toml"), &connector("")).unwrap_err();
    assert!(err.to_string().contains("tenant_id"), "{err}");
    let s = Settings::parse(
        Path::new("c.toml"),
        &connector(
            "tenant_id = \"0B6C2A2E-1111-4222-8333-444455556666\"\noriginator_org = \"Hospital.Example.\"\n",
        ),
    )
    .unwrap();
    let c = &s.relay.connectors[0];
    assert_eq!(c.name, "m365");
    assert_eq!(
        c.cert_names,
        [CertNamePattern::Wildcard(
            "mail.protection.outlook.com".into()
        )]
    );
    assert_eq!(
        c.tenant_id.as_deref(),
        Some("0b6c2a2e-1111-4222-8333-444455556666")
    );
    assert_eq!(c.originator_org.as_deref(), Some("hospital.example"));
    assert_eq!(c.cert_roots, [PathBuf::from(format!("{base}/config"))]);
}

/// Every connector needs a tenant check unless its roots are private to
/// the organisation; Microsoft's other clouds count as Microsoft 365, where
/// not even `private_ca` waives it.
#[test]
fn a_connector_without_a_tenant_check_needs_a_private_ca() {
    let base = env!("CARGO_MANIFEST_DIR");
    let tls = format!("[server.tls]\ncert = \"{base}/Cargo.toml\"\nkey = \"{base}/Cargo.toml\"\n");
    let connector = |names: &str, extra: &str| {
        format!(
            "{MINIMAL}{tls}[[relay.connectors]]\nname = \"c\"\nclient_cert_names = [{names}]\nclient_cert_roots = [\"{base}/config\"]\n{extra}"
        )
    };
    let filter = "\"relay.mailfilter.example\"";
    let err = Settings::parse(Path::new("c.toml"), &connector(filter, "")).unwrap_err();
    assert!(err.to_string().contains("private_ca = true"), "{err}");
    let s = Settings::parse(
        Path::new("c.toml"),
        &connector(filter, "private_ca = true\n"),
    )
    .unwrap();
    assert!(!s.relay.connectors[0].checks_tenant());
    for ms in [
        "\"*.mail.protection.office365.us\"",
        "\"*.mail.protection.partner.outlook.cn\"",
    ] {
        let err = Settings::parse(Path::new("c.toml"), &connector(ms, "private_ca = true\n"))
            .unwrap_err();
        assert!(err.to_string().contains("Microsoft 365"), "{ms}: {err}");
    }
}

#[test]
fn the_portal_section_is_optional_and_checked() {
    let s = Settings::parse(Path::new("x.toml"), MINIMAL).unwrap();
    assert!(s.portal.is_none());

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("portal.key");
    std::fs::write(&key, "00".repeat(32)).unwrap();
    let ok = format!(
        "{MINIMAL}[portal]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://secure.example.org/\"\nmaster_key_file = {key:?}\n"
    );
    let p = Settings::parse(Path::new("x.toml"), &ok)
        .unwrap()
        .portal
        .unwrap();
    assert_eq!(p.public_url, "https://secure.example.org");
    assert_eq!(p.expiry, Duration::from_secs(30 * 86400));
    assert!(!p.link_bound);
    assert_eq!(p.organization, "gateway.example.test");
    assert_eq!(p.subject, None);
    let named = format!("{ok}organization = \"Clínica San José\"\nsubject = \"Mensaje seguro\"\n");
    let p = Settings::parse(Path::new("x.toml"), &named)
        .unwrap()
        .portal
        .unwrap();
    assert_eq!(p.organization, "Clínica San José");
    assert_eq!(p.subject.as_deref(), Some("Mensaje seguro"));
    for bad in [
        "organization = \"\"",
        "organization = \"A\\r\\nBcc: x@evil.example\"",
        "subject = \"tab\\there\"",
    ] {
        let text = format!("{ok}{bad}\n");
        let err = Settings::parse(Path::new("x.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one line of text"), "{bad}: {err}");
    }
    let long = format!("{ok}subject = \"{}\"\n", "x".repeat(201));
    assert!(Settings::parse(Path::new("x.toml"), &long).is_err());
    // Plain http is for loopback only.
    let loopback = ok.replace("https://secure.example.org/", "http://127.0.0.1:8443");
    assert!(Settings::parse(Path::new("x.toml"), &loopback).is_ok());

    let bad = format!(
        "{MINIMAL}[portal]\nlisten = \"everywhere\"\npublic_url = \"http://secure.example.org\"\nmaster_key_file = \"missing.key\"\nexpiry = \"4000d\"\nlink_bound = true\n"
    );
    let err = Settings::parse(Path::new("x.toml"), &bad).unwrap_err();
    let keys: Vec<(String, Option<usize>)> = err
        .0
        .iter()
        .map(|p| (p.key.clone().unwrap_or_default(), p.line))
        .collect();
    for (key, line) in [
        ("portal.listen", 8),
        ("portal.public_url", 9),
        ("portal.master_key_file", 10),
        ("portal.expiry", 11),
    ] {
        assert!(
            keys.contains(&(key.to_string(), Some(line))),
            "{key} at {line} not in {keys:?}"
        );
    }
    let msg = err.to_string();
    assert!(msg.contains("must be https"), "{msg}");
    for url in [
        "ftp://x.example",
        "https://x.example/?a=1",
        "https://",
        "not a url",
        "https://u:p@x.example",
        "http://127.0.0.1@evil.example",
        "http://evil.example",
        "https://x.example/%2e%2e/",
        "https://x.example/a/../b",
        "https://x.example//evil.example",
        "https://x.example/a//b",
        "https://x.example/./b",
        "https://x.example/a'b",
        "https://x.example/a;b",
        "https://x.example/a%20b",
        "https://x.example/a\"b",
        "https://x.example/<b>",
    ] {
        assert!(check_public_url_for_test(url).is_err(), "{url}");
    }
    for url in [
        "https://x.example",
        "https://x.example/",
        "https://x.example/secure-mail/v1.0/~p_q",
        "http://127.0.0.1:8443/portal",
    ] {
        assert!(check_public_url_for_test(url).is_ok(), "{url}");
    }
}

fn check_public_url_for_test(url: &str) -> Result<(), String> {
    raw::check_public_url(url)
}
