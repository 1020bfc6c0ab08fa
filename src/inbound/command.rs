//! SMTP command parsing (RFC 5321 section 4.1), no I/O.
//!
//! Written here rather than taken from `smtp-proto` because that parser
//! unquotes local parts and silently drops source routes, losing exactly
//! the information the relay checks need: we refuse source routes, quoted
//! local parts that contain `@`, and address literals as recipient domains,
//! so no address can mean one route to us and another to the next hop.
//!
//! Every address leaves the parser in its one canonical form
//! ([`crate::util::address`]): A-label domain, lowercase, no trailing dot,
//! needless quotes removed. Policy, probes, routing and audit only ever
//! see that form, so `v@gmail.com.` and `v@GMAIL.com` are `v@gmail.com`.

use super::reply::Reply;
use crate::util::address::{self, DomainError};

/// A mailbox `local@domain`, in canonical form, as it will be used on the
/// next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part, case kept; quoted only when a dot-string cannot
    /// say it (`"john smith"`), with only `"` and `\` escaped.
    pub local: String,
    /// The domain: A-labels, lowercase, no trailing dot (or an address
    /// literal for senders).
    pub domain: String,
    /// The client wrote non-ASCII characters (RFC 6531 allows that only
    /// with SMTPUTF8), even if the canonical form is ASCII because a
    /// U-label became an A-label.
    pub written_utf8: bool,
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl Mailbox {
    /// Whether the client needed SMTPUTF8 to send this address.
    pub fn is_utf8(&self) -> bool {
        self.written_utf8
    }

    /// Whether two mailboxes are the same address (however written).
    pub fn same_address(&self, other: &Mailbox) -> bool {
        self.local == other.local && self.domain == other.domain
    }
}

/// How the parser treats local parts that old systems read as routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// Accept `%` and `!` in local parts (`[relay] allow_percent_hack`).
    /// Even then they are never routed: the address goes to its domain.
    pub allow_percent_hack: bool,
}

/// `BODY=` of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Parameters of MAIL FROM we support (those we advertise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
    /// RFC 8689: the message must travel only over verified TLS.
    pub requiretls: bool,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    /// `None` is the null reverse-path `<>`.
    Mail(Option<Mailbox>, MailParams),
    Rcpt(Mailbox),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A command we know but do not offer (BDAT, ETRN, TURN...).
    NotOffered(String),
}

const LOCAL_MAX: usize = 64;

/// Parses one command line (without its line ending) with the default
/// address rules.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    parse_with(line, AddressRules::default())
}

/// Parses one command line (without its line ending).
pub fn parse_with(line: &[u8], rules: AddressRules) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Command line is not valid UTF-8"))?;
    // C0 and C1 controls (U+0080..U+009F: U+009B is a terminal's CSI),
    // which no address, name or parameter may carry.
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Reply::new(
            500,
            "5.5.2",
            "Control characters are not allowed in commands",
        ));
    }
    let (verb, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim_matches([' ', '\t'])),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(Reply::new(
                501,
                "5.5.4",
                "Syntax error: no parameters allowed",
            ))
        }
    };
    match verb.as_str() {
        "HELO" | "EHLO" => {
            if rest.is_empty() || rest.contains([' ', '\t']) && !rest.starts_with('[') {
                return Err(Reply::new(501, "5.5.4", "Syntax: EHLO hostname"));
            }
            let name = rest.to_string();
            Ok(if verb == "HELO" {
                Command::Helo(name)
            } else {
                Command::Ehlo(name)
            })
        }
        "MAIL" => {
            let arg = strip_keyword(rest, "FROM:")
                .ok_or_else(|| Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"))?;
            let (path, params) = split_path(arg)?;
            let mailbox = if path == "<>" {
                None
            } else {
                Some(parse_path(path, true, rules)?)
            };
            let params = parse_mail_params(params)?;
            Ok(Command::Mail(mailbox, params))
        }
        "RCPT" => {
            let arg = strip_keyword(rest, "TO:")
                .ok_or_else(|| Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"))?;
            let (path, params) = split_path(arg)?;
            if !params.trim().is_empty() {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    "RCPT TO parameters not recognised",
                ));
            }
            if path == "<>" {
                return Err(Reply::new(553, "5.1.3", "Recipient address required"));
            }
            Ok(Command::Rcpt(parse_path(path, false, rules)?))
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "AUTH" => {
            let mut parts = rest.split_ascii_whitespace();
            let mechanism = parts
                .next()
                .ok_or_else(|| Reply::new(501, "5.5.4", "Syntax: AUTH mechanism"))?
                .to_ascii_uppercase();
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(Reply::new(
                    501,
                    "5.5.4",
                    "Syntax: AUTH mechanism [initial-response]",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "BDAT" | "ETRN" | "TURN" | "ATRN" | "BURL" | "LHLO" => Ok(Command::NotOffered(verb)),
        _ => Err(Reply::new(500, "5.5.1", "Command unrecognised")),
    }
}

/// `FROM:` / `TO:` with optional blanks after the colon (common in the wild).
fn strip_keyword<'a>(rest: &'a str, kw: &str) -> Option<&'a str> {
    let head = rest.get(..kw.len())?;
    head.eq_ignore_ascii_case(kw)
        .then(|| rest[kw.len()..].trim_start_matches([' ', '\t']))
}

/// Splits `<path> params` at the closing `>` that is not inside quotes.
fn split_path(arg: &str) -> Result<(&str, &str), Reply> {
    if !arg.starts_with('<') {
        return Err(Reply::new(501, "5.1.7", "Address must be enclosed in <>"));
    }
    let mut in_quote = false;
    let mut escaped = false;
    for (i, ch) in arg.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let rest = &arg[i + 1..];
                if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
                    return Err(Reply::new(501, "5.5.4", "Syntax error after address"));
                }
                return Ok((&arg[..=i], rest));
            }
            _ => {}
        }
    }
    Err(Reply::new(501, "5.1.7", "Address must be enclosed in <>"))
}

/// Parses `<local@domain>`; refuses anything that could be read as a route.
fn parse_path(path: &str, is_sender: bool, rules: AddressRules) -> Result<Mailbox, Reply> {
    let inner = &path[1..path.len() - 1];
    if inner.starts_with('@') {
        return Err(Reply::new(553, "5.1.3", "Source routes are not accepted"));
    }
    parse_address(inner, is_sender, rules)
}

/// Parses and canonicalises `local@domain` (no angle brackets): the one
/// place an address from outside gets its form. `is_sender` picks the
/// enhanced code (5.1.7 for senders, 5.1.3 for recipients) and allows an
/// address literal as the domain.
pub fn parse_address(inner: &str, is_sender: bool, rules: AddressRules) -> Result<Mailbox, Reply> {
    let code = if is_sender { "5.1.7" } else { "5.1.3" };
    let bad = |what: &str| Reply::new(553, code, &format!("Invalid address: {what}"));
    let (raw_local, raw_domain) = split_address(inner).map_err(bad)?;
    if !raw_local.starts_with('"') && raw_local.contains('@') {
        return Err(Reply::new(
            553,
            "5.1.3",
            "Only one @ is allowed in an address",
        ));
    }
    let text = address::unquoted_local(raw_local).map_err(|e| bad(&e.to_string()))?;
    if text.contains('@') {
        return Err(Reply::new(
            553,
            "5.1.3",
            "Quoted local parts containing @ are not accepted",
        ));
    }
    if !rules.allow_percent_hack && text.contains(['%', '!']) {
        return Err(Reply::new(
            553,
            code,
            "Addresses with % or ! in the local part are not accepted",
        ));
    }
    let local = address::canonical_local(raw_local).map_err(|e| bad(&e.to_string()))?;
    if local.len() > LOCAL_MAX {
        return Err(bad("local part longer than 64 characters"));
    }
    let domain = if raw_domain.starts_with('[') {
        if !is_sender {
            return Err(Reply::new(
                553,
                "5.1.3",
                "Address literals are not accepted as recipient domains",
            ));
        }
        if !is_address_literal(raw_domain) {
            return Err(bad("address literal"));
        }
        raw_domain.to_string()
    } else {
        address::canonical_domain(raw_domain).map_err(|e| match e {
            DomainError::Idna => bad("the domain is not a valid internationalised domain name"),
            other => bad(&other.to_string()),
        })?
    };
    Ok(Mailbox {
        written_utf8: !inner.is_ascii(),
        local,
        domain,
    })
}

/// Splits at the `@` that ends the local part: after a quoted string's
/// closing quote (honouring escapes), else at the last `@`.
fn split_address(inner: &str) -> Result<(&str, &str), &'static str> {
    if !inner.starts_with('"') {
        return inner.rsplit_once('@').ok_or("missing @domain");
    }
    let mut escaped = false;
    for (i, ch) in inner.char_indices().skip(1) {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' => escaped = true,
            '"' => {
                let domain = inner[i + 1..].strip_prefix('@').ok_or("missing @domain")?;
                return Ok((&inner[..=i], domain));
            }
            _ => {}
        }
    }
    Err("unterminated quoted local part")
}

fn is_address_literal(d: &str) -> bool {
    let Some(inner) = d.strip_prefix('[').and_then(|x| x.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        inner.parse::<std::net::Ipv4Addr>().is_ok()
    }
}

fn parse_mail_params(params: &str) -> Result<MailParams, Reply> {
    let mut out = MailParams::default();
    for p in params.split_ascii_whitespace() {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = v
                    .parse::<u64>()
                    .map_err(|_| Reply::new(501, "5.5.4", "SIZE must be a number"))?;
                out.size = Some(n);
            }
            ("BODY", Some(v)) => {
                out.body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(Reply::new(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")),
                }
            }
            ("SMTPUTF8", None) => out.smtputf8 = true,
            ("REQUIRETLS", None) => out.requiretls = true,
            // AUTH= (RFC 4954 section 5) is informational for a relay; accepted and ignored.
            ("AUTH", Some(_)) => {}
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    "MAIL FROM parameter not recognised",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(l: &str, d: &str) -> Mailbox {
        Mailbox {
            local: l.into(),
            domain: d.into(),
            written_utf8: !l.is_ascii() || !d.is_ascii(),
        }
    }

    #[test]
    fn accepts_ordinary_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO client.example.test",
                Command::Ehlo("client.example.test".into()),
            ),
            ("helo [127.0.0.1]", Command::Helo("[127.0.0.1]".into())),
            (
                "MAIL FROM:<a@example.test>",
                Command::Mail(Some(mb("a", "example.test")), MailParams::default()),
            ),
            (
                "mail from: <a@Example.TEST> SIZE=100 BODY=8BITMIME",
                Command::Mail(
                    Some(mb("a", "example.test")),
                    MailParams {
                        size: Some(100),
                        body: Body::EightBitMime,
                        ..Default::default()
                    },
                ),
            ),
            ("MAIL FROM:<>", Command::Mail(None, MailParams::default())),
            (
                "MAIL FROM:<ü@exämple.test> SMTPUTF8",
                Command::Mail(
                    Some(mb("ü", "xn--exmple-cua.test")),
                    MailParams {
                        smtputf8: true,
                        ..Default::default()
                    },
                ),
            ),
            (
                "RCPT TO:<b.c+tag@example.test>",
                Command::Rcpt(mb("b.c+tag", "example.test")),
            ),
            (
                "RCPT TO:<\"john smith\"@example.test>",
                Command::Rcpt(mb("\"john smith\"", "example.test")),
            ),
            ("DATA", Command::Data),
            ("NOOP whatever", Command::Noop),
            (
                "AUTH PLAIN AGFAYg==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AGFAYg==".into()),
                },
            ),
            ("STARTTLS", Command::StartTls),
            ("BDAT 100 LAST", Command::NotOffered("BDAT".into())),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(want), "{line}");
        }
    }

    #[test]
    fn refuses_routes_and_tricks() {
        let cases = [
            (
                "RCPT TO:<@relay.example.test:victim@example.test>",
                553,
                "5.1.3",
            ),
            ("RCPT TO:<@a,@b:victim@example.test>", 553, "5.1.3"),
            (
                "RCPT TO:<\"victim@elsewhere.test\"@example.test>",
                553,
                "5.1.3",
            ),
            ("RCPT TO:<victim@elsewhere.test@example.test>", 553, "5.1.3"),
            ("RCPT TO:<victim@[192.0.2.1]>", 553, "5.1.3"),
            ("RCPT TO:<victim>", 553, "5.1.3"),
            ("RCPT TO:<>", 553, "5.1.3"),
            ("RCPT TO:victim@example.test", 501, "5.1.7"),
            ("RCPT TO:<a..b@example.test>", 553, "5.1.3"),
            ("RCPT TO:<a@example..test>", 553, "5.1.3"),
            ("RCPT TO:<a@example.test> NOTIFY=NEVER", 555, "5.5.4"),
            ("MAIL FROM:<a@example.test> FOO=BAR", 555, "5.5.4"),
            ("MAIL FROM:<a@example.test> SIZE=abc", 501, "5.5.4"),
            ("MAIL FROM:<a@example.test>junk", 501, "5.5.4"),
            ("MAIL <a@example.test>", 501, "5.5.4"),
            ("DATA now", 501, "5.5.4"),
            ("XYZZY", 500, "5.5.1"),
            ("EHLO", 501, "5.5.4"),
            ("MAIL FROM:<a@example.test>\r", 500, "5.5.2"),
        ];
        for (line, code, enh) in cases {
            let err = parse(line.as_bytes()).unwrap_err();
            assert_eq!(
                (err.code, err.enhanced.as_str()),
                (code, enh),
                "{line}: {err:?}"
            );
        }
        let long = format!("RCPT TO:<{}@example.test>", "a".repeat(65));
        assert_eq!(parse(long.as_bytes()).unwrap_err().code, 553);
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    /// Every way of writing one address gives its one canonical form, for
    /// senders and recipients alike.
    #[test]
    fn addresses_have_one_form() {
        let cases: &[(&str, &str)] = &[
            ("v@gmail.com", "v@gmail.com"),
            ("v@gmail.com.", "v@gmail.com"),
            ("v@GMAIL.Com", "v@gmail.com"),
            ("v@GMAIL.COM.", "v@gmail.com"),
            ("V.Smith@example.org", "V.Smith@example.org"),
            ("\"ceo\"@example.org", "ceo@example.org"),
            ("\"CEO\"@Example.ORG.", "CEO@example.org"),
            ("\"first.last\"@example.org", "first.last@example.org"),
            ("\"c\\eo\"@example.org", "ceo@example.org"),
            ("\"john smith\"@example.org", "\"john smith\"@example.org"),
            ("\"a..b\"@example.org", "\"a..b\"@example.org"),
            ("\"a\\\"b\"@example.org", "\"a\\\"b\"@example.org"),
            ("x@bücher.example", "x@xn--bcher-kva.example"),
            ("x@BÜCHER.example.", "x@xn--bcher-kva.example"),
            ("x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),
            ("x@XN--BCHER-KVA.EXAMPLE", "x@xn--bcher-kva.example"),
            ("x@Xn--Bcher-Kva.Example.", "x@xn--bcher-kva.example"),
            ("ärztin@bücher.example", "ärztin@xn--bcher-kva.example"),
            // A homograph keeps its own A-label: it never becomes the
            // Latin name it imitates.
            ("x@pаypal.example", "x@xn--pypal-4ve.example"),
        ];
        for (written, want) in cases {
            for verb in ["MAIL FROM:", "RCPT TO:"] {
                let line = format!("{verb}<{written}> SMTPUTF8");
                let line = if verb == "RCPT TO:" {
                    line.trim_end_matches(" SMTPUTF8").to_string()
                } else {
                    line
                };
                let got = match parse(line.as_bytes()) {
                    Ok(Command::Mail(Some(m), _)) | Ok(Command::Rcpt(m)) => m,
                    other => panic!("{line}: {other:?}"),
                };
                assert_eq!(got.to_string(), *want, "{line}");
                assert_eq!(got.is_utf8(), !written.is_ascii(), "{line}");
            }
        }
    }

    /// Hostile and broken forms: refused with 553 and the enhanced code of
    /// the side they are on (5.1.7 sender, 5.1.3 recipient), except forms
    /// that could be read as a route, which are 5.1.3 on both sides.
    #[test]
    fn c1_controls_are_refused_like_c0_ones() {
        for line in [
            "RCPT TO:<a\u{9b}31m@example.test>",
            "MAIL FROM:<\"a\u{85}b\"@example.test>",
            "EHLO host\u{9f}.test",
        ] {
            let r = parse(line.as_bytes()).unwrap_err();
            assert_eq!(r.code, 500, "{line:?}");
        }
    }

    #[test]
    fn hostile_addresses_are_refused() {
        let long_label = format!("a@{}.test", "b".repeat(64));
        let long_domain = format!("a@{}.test", vec!["c".repeat(63); 4].join("."));
        // 61 characters, but its A-label has 68.
        let long_u_label = format!("a@ä{}.test", "x".repeat(60));
        let long_local = format!("{}@example.test", "l".repeat(65));
        let long_quoted = format!("\"{} \"@example.test", "q".repeat(63));
        // (address, a route trick: 5.1.3 for senders too)
        let cases: Vec<(&str, bool)> = vec![
            ("a@b.c..", false),
            ("a@b..c", false),
            ("a@.b.c", false),
            ("a@.", false),
            ("a@", false),
            ("@b.test", true),
            ("a", false),
            ("a@b_c.test", false),
            ("a@-b.test", false),
            ("a@b-.test", false),
            ("a@b c.test", false),
            (&long_label, false),
            (&long_domain, false),
            (&long_u_label, false),
            (&long_local, false),
            (&long_quoted, false),
            ("\"\"@example.test", false),
            ("a..b@example.test", false),
            (".a@example.test", false),
            // Invalid IDNA: fake A-label, Latin and Hebrew in one label
            // (bidi rule), a disallowed code point.
            ("a@xn--a.example", false),
            ("a@aא.example", false),
            ("a@a\u{2028}b.example", false),
            // Route tricks.
            ("\"a@b\"@c.test", true),
            ("\"a\\@b\"@c.test", true),
            ("a@b@c.test", true),
            ("@route:a@b", true),
            ("@a.test,@b.test:v@c.test", true),
        ];
        for (addr, route) in &cases {
            for (verb, enh) in [("MAIL FROM:", "5.1.7"), ("RCPT TO:", "5.1.3")] {
                let line = format!("{verb}<{addr}>");
                let err = match parse(line.as_bytes()) {
                    Err(e) => e,
                    Ok(c) => panic!("{line} was accepted as {c:?}"),
                };
                let want = if *route { "5.1.3" } else { enh };
                assert_eq!(
                    (err.code, err.enhanced.as_str()),
                    (553, want),
                    "{line}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn unbalanced_quotes_are_a_syntax_error() {
        for addr in ["\"a\"b\"@example.test", "\"unterminated@example.test"] {
            for verb in ["MAIL FROM:", "RCPT TO:"] {
                let line = format!("{verb}<{addr}>");
                let err = parse(line.as_bytes()).unwrap_err();
                assert_eq!((err.code, err.enhanced.as_str()), (501, "5.1.7"), "{line}");
            }
        }
    }

    #[test]
    fn percent_and_bang_need_the_config_key() {
        let allow = AddressRules {
            allow_percent_hack: true,
        };
        let cases = [
            ("a%b@c.test", "a%b@c.test"),
            ("a!b@c.test", "a!b@c.test"),
            ("c.test!a@gw.test", "c.test!a@gw.test"),
            ("\"a%b\"@c.test", "a%b@c.test"),
            ("\"a!b\"@C.test.", "a!b@c.test"),
        ];
        for (addr, canonical) in cases {
            for (verb, enh) in [("MAIL FROM:", "5.1.7"), ("RCPT TO:", "5.1.3")] {
                let line = format!("{verb}<{addr}>");
                let err = parse(line.as_bytes()).unwrap_err();
                assert_eq!((err.code, err.enhanced.as_str()), (553, enh), "{line}");
                assert!(err.text.contains("% or !"), "{line}: {err:?}");
                // Allowed: accepted in canonical form, domain unchanged (the
                // part before % or ! is never taken as a route).
                let got = match parse_with(line.as_bytes(), allow) {
                    Ok(Command::Mail(Some(m), _)) | Ok(Command::Rcpt(m)) => m,
                    other => panic!("{line}: {other:?}"),
                };
                assert_eq!(got.to_string(), canonical, "{line}");
            }
        }
    }

    #[test]
    fn same_address_ignores_how_it_was_written() {
        let a = parse_address("x@bücher.example", false, AddressRules::default()).unwrap();
        let b = parse_address("x@XN--BCHER-KVA.example.", false, AddressRules::default()).unwrap();
        assert!(a.same_address(&b));
        assert_ne!(a, b, "only the written form differs");
    }
}
