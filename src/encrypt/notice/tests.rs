use mail_parser::MessageParser;

use super::*;

const LINK: &str = "https://secure.example.org/m/AbC-123_xyz";

fn notice<'a>() -> Notice<'a> {
    Notice {
        organization: "Mercy Clinic",
        subject: None,
        sender: "doctor@clinic.example",
        recipient: "patient@mail.example",
        link: LINK,
        expires_at: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
        hostname: "gateway.clinic.example",
    }
}

fn parts(content: &[u8]) -> (String, String, String) {
    let m = MessageParser::default().parse(content).unwrap();
    (
        m.subject().unwrap_or_default().to_string(),
        m.body_text(0).unwrap().to_string(),
        m.body_html(0).unwrap().to_string(),
    )
}

#[test]
fn the_link_expiry_and_addresses_are_in_both_parts_and_nothing_else_is_needed() {
    let mail = build(&notice()).unwrap();
    let (subject, text, html) = parts(&mail.content);
    assert_eq!(subject, "Secure message from Mercy Clinic");
    for part in [&text, &html] {
        assert!(part.contains(LINK), "{part}");
        assert!(part.contains("doctor@clinic.example"), "{part}");
        assert!(part.contains("patient@mail.example"), "{part}");
        assert!(part.contains("March 17, 2030"), "{part}");
    }
    assert!(html.contains(&format!("href=\"{LINK}\"")));
    let raw = String::from_utf8(mail.content.clone()).unwrap();
    assert!(raw.contains(&format!("Message-ID: {}\r\n", mail.message_id)));
    assert!(mail.message_id.ends_with("@gateway.clinic.example>"));
    // 7-bit, CRLF only, no line over 78 characters.
    assert!(raw.is_ascii());
    for line in raw.split("\r\n") {
        assert!(line.len() <= 78, "{line}");
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
    }
}

#[test]
fn names_with_markup_or_non_ascii_arrive_as_text() {
    let n = Notice {
        organization: "Clínica <b>San José</b> & \"Hijos\"",
        subject: Some(
            "Mensaje seguro de la Clínica San José — léalo antes de que caduque, por favor",
        ),
        ..notice()
    };
    let mail = build(&n).unwrap();
    let raw = String::from_utf8(mail.content.clone()).unwrap();
    assert!(raw.is_ascii());
    for line in raw.split("\r\n") {
        assert!(line.len() <= 78, "{line}");
    }
    let (subject, text, html) = parts(&mail.content);
    assert_eq!(
        subject,
        "Mensaje seguro de la Clínica San José — léalo antes de que caduque, por favor"
    );
    assert!(text.contains("Clínica <b>San José</b> & \"Hijos\""));
    assert!(html.contains("Clínica &lt;b&gt;San José&lt;/b&gt; &amp; &quot;Hijos&quot;"));
    assert!(!html.contains("<b>"));
}

#[test]
fn line_breaks_and_controls_in_any_field_are_refused() {
    let bad = [
        "Mercy\r\nBcc: x@evil.example",
        "Mercy\nClinic",
        "Mercy\u{0}",
        "Mercy\u{85}x",
    ];
    for v in bad {
        let n = Notice {
            organization: v,
            ..notice()
        };
        assert_eq!(
            build(&n).err(),
            Some(NoticeError::Unsafe("organization name")),
            "{v:?}"
        );
        let n = Notice {
            subject: Some(v),
            ..notice()
        };
        assert_eq!(build(&n).err(), Some(NoticeError::Unsafe("subject")));
    }
    for (n, what) in [
        (
            Notice {
                sender: "a@b>\r\nBcc: <x@evil.example",
                ..notice()
            },
            "sender",
        ),
        (
            Notice {
                recipient: "a@b> <x@evil.example",
                ..notice()
            },
            "recipient",
        ),
        (
            Notice {
                link: "https://x.example/m/a b",
                ..notice()
            },
            "link",
        ),
        (
            Notice {
                link: "https://x.example/m/\u{e9}",
                ..notice()
            },
            "link",
        ),
    ] {
        assert_eq!(build(&n).err(), Some(NoticeError::Unsafe(what)));
    }
    let n = Notice {
        organization: "  ",
        ..notice()
    };
    assert_eq!(
        build(&n).err(),
        Some(NoticeError::Empty("organization name"))
    );
}

/// A long ASCII word, text that looks like an encoded word, and pieces cut
/// at every character boundary.
#[test]
fn subjects_are_folded_and_encoded_at_every_length() {
    for subject in [
        "x".repeat(200),
        "=?UTF-8?B?aGk=?=".to_string(),
        "a ".repeat(100),
    ] {
        let n = Notice {
            subject: Some(&subject),
            ..notice()
        };
        let mail = build(&n).unwrap();
        let raw = String::from_utf8(mail.content.clone()).unwrap();
        for line in raw.split("\r\n") {
            assert!(line.len() <= 78, "{line}");
        }
        let (got, _, _) = parts(&mail.content);
        assert_eq!(got, subject.trim(), "{subject}");
    }
    let s = "añ€😀".repeat(20);
    for max in 4..50 {
        let pieces = utf8_pieces(&s, max);
        assert_eq!(pieces.concat(), s);
        assert!(pieces.iter().all(|p| p.len() <= max && !p.is_empty()));
    }
}
