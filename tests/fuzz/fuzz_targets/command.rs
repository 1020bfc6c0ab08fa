//! The SMTP command parser (`sealgate::inbound::command::parse`).
//!
//! Besides "never panics": what the parser accepts must be safe to use as
//! a route, and its own rendering of an address must parse back to the
//! same address (one form of an address, whatever the client sent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::inbound::command::{Command, Mailbox, parse};

fuzz_target!(|line: &[u8]| {
    let Ok(cmd) = parse(line) else { return };
    match &cmd {
        Command::Mail(Some(mb), _) => check_mailbox(mb, true),
        Command::Rcpt(mb) => check_mailbox(mb, false),
        Command::Helo(name) | Command::Ehlo(name) => {
            assert!(!name.is_empty());
            assert!(!name.chars().any(|c| c.is_control() && c != '\t'));
        }
        Command::Auth { mechanism, initial } => {
            assert!(!mechanism.is_empty() && !mechanism.contains([' ', '\t']));
            assert!(initial.as_deref().is_none_or(|i| !i.contains([' ', '\t'])));
        }
        _ => {}
    }
});

fn check_mailbox(mb: &Mailbox, is_sender: bool) {
    let text = mb.to_string();
    assert!(
        !text.chars().any(char::is_control),
        "control character in {text:?}"
    );
    assert!(!mb.local.is_empty() && mb.local.len() <= 64, "{text:?}");
    // Nothing that a next hop could read as a route: no source route, no
    // second @ (quoted or not), no address literal as a recipient domain.
    assert!(
        !mb.local.starts_with('@') && !mb.local.contains('@'),
        "{text:?}"
    );
    assert!(
        !mb.domain.contains('@') && !mb.domain.is_empty(),
        "{text:?}"
    );
    if !is_sender {
        assert!(!mb.domain.starts_with('['), "{text:?}");
    }
    if !mb.domain.starts_with('[') {
        assert_eq!(mb.domain, mb.domain.to_lowercase(), "domain not lowercased");
    }
    // The form we store and send on must read back as the same mailbox.
    let again = if is_sender {
        parse(format!("MAIL FROM:<{text}>").as_bytes())
    } else {
        parse(format!("RCPT TO:<{text}>").as_bytes())
    };
    match again {
        Ok(Command::Mail(Some(m), _)) | Ok(Command::Rcpt(m)) => {
            // The same address; `written_utf8` says how the client wrote
            // it (a U-label reads back as its A-label, written in ASCII).
            assert_eq!(
                (&m.local, &m.domain),
                (&mb.local, &mb.domain),
                "{text:?} does not read back the same"
            );
            assert!(!m.written_utf8 || mb.written_utf8, "{text:?}");
        }
        other => panic!("{text:?} accepted once, then {other:?}"),
    }
}
