//! SMTP command parsing (RFC 5321 section 4.1), no I/O.
//!
//! Written here rather than taken from `smtp-proto` because that parser
//! unquotes local parts and silently drops source routes, losing exactly
//! the information the relay checks need: we refuse source routes, quoted
//! local parts that contain `@`, and address literals as recipient domains,
//! so no address can mean one route to us and another to the next hop.

use super::reply::Reply;

/// A mailbox `local@domain`, as it will be used on the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part exactly as received (a quoted string keeps its quotes).
    pub local: String,
    /// The domain, lowercased (or an address literal for senders).
    pub domain: String,
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl Mailbox {
    /// Whether any part needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
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
const DOMAIN_MAX: usize = 255;

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Command line is not valid UTF-8"))?;
    // C1 controls too (U+0080 to U+009F): U+009B is a terminal's CSI, and
    // addresses and EHLO names end up in logs and `queue list`.
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
                Some(parse_path(path, true)?)
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
            Ok(Command::Rcpt(parse_path(path, false)?))
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
fn parse_path(path: &str, is_sender: bool) -> Result<Mailbox, Reply> {
    let inner = &path[1..path.len() - 1];
    if inner.starts_with('@') {
        return Err(Reply::new(553, "5.1.3", "Source routes are not accepted"));
    }
    let bad = |what: &str| {
        let code = if is_sender { "5.1.7" } else { "5.1.3" };
        Reply::new(553, code, &format!("Invalid address: {what}"))
    };
    let (local, domain) = if inner.starts_with('"') {
        // Quoted local part: find the closing quote, honouring escapes.
        let mut end = None;
        let mut escaped = false;
        for (i, ch) in inner.char_indices().skip(1) {
            // RFC 5321 qtextSMTP and quoted-pairSMTP have no HTAB.
            if ch == '\t' {
                return Err(bad("tab in quoted local part"));
            }
            if escaped {
                escaped = false;
                continue;
            }
            match ch {
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| bad("unterminated quoted local part"))?;
        let local = &inner[..=end];
        if local.contains('@') {
            return Err(Reply::new(
                553,
                "5.1.3",
                "Quoted local parts containing @ are not accepted",
            ));
        }
        let after = &inner[end + 1..];
        let domain = after
            .strip_prefix('@')
            .ok_or_else(|| bad("missing @domain"))?;
        (local, domain)
    } else {
        let (local, domain) = inner
            .rsplit_once('@')
            .ok_or_else(|| bad("missing @domain"))?;
        if local.contains('@') {
            return Err(Reply::new(
                553,
                "5.1.3",
                "Only one @ is allowed in an address",
            ));
        }
        if !is_dot_string(local) {
            return Err(bad("local part"));
        }
        (local, domain)
    };
    if local.len() > LOCAL_MAX {
        return Err(bad("local part longer than 64 characters"));
    }
    let domain = if domain.starts_with('[') {
        if !is_sender {
            return Err(Reply::new(
                553,
                "5.1.3",
                "Address literals are not accepted as recipient domains",
            ));
        }
        if !is_address_literal(domain) {
            return Err(bad("address literal"));
        }
        domain.to_string()
    } else {
        if !is_domain(domain) {
            return Err(bad("domain"));
        }
        domain.to_lowercase()
    };
    Ok(Mailbox {
        local: local.to_string(),
        domain,
    })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= DOMAIN_MAX
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
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
                    Some(mb("ü", "exämple.test")),
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
            (
                "RCPT TO:<user%other@example.test>",
                Command::Rcpt(mb("user%other", "example.test")),
            ),
            (
                "RCPT TO:<host!user@example.test>",
                Command::Rcpt(mb("host!user", "example.test")),
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
            // Found by the fuzz target (tests/fuzz): a tab inside quotes is
            // not qtextSMTP; C1 controls (U+009B is CSI) must not reach
            // logs or `queue list` through an address or an EHLO name.
            ("RCPT TO:<\"a\tb\"@example.test>", 553, "5.1.3"),
            ("RCPT TO:<\"a\\\tb\"@example.test>", 553, "5.1.3"),
            ("RCPT TO:<a\u{9b}b@example.test>", 500, "5.5.2"),
            ("MAIL FROM:<a@ex\u{85}ample.test>", 500, "5.5.2"),
            ("EHLO client\u{9b}31m.example.test", 500, "5.5.2"),
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
}
