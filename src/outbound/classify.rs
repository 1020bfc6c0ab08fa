//! The one place that turns every remote reply, network, DNS and TLS error
//! into a temporary or permanent outcome.

use super::client::{ClientError, SmtpReply};
use crate::net::route::RouteError;
use crate::queue::{RecipientOutcome, Verdict};

/// A remote reply for one recipient (RCPT or the final DATA reply).
pub fn reply(host: &str, r: &SmtpReply) -> RecipientOutcome {
    let verdict = match r.code {
        200..=299 => Verdict::Delivered,
        500..=599 => Verdict::Permanent,
        // 4xx, and anything nonsensical, is worth another try.
        _ => Verdict::Temporary,
    };
    RecipientOutcome {
        verdict,
        reply: r.one_line(),
        enhanced: r.enhanced(),
        remote: Some(host.to_string()),
    }
}

/// A connection-level failure: always temporary (another host or a later
/// attempt may work).
pub fn client_error(host: &str, e: &ClientError) -> RecipientOutcome {
    let enhanced = if e.is_tls() { "4.7.5" } else { "4.4.1" };
    RecipientOutcome {
        verdict: Verdict::Temporary,
        reply: e.to_string(),
        enhanced: Some(enhanced.into()),
        remote: Some(host.to_string()),
    }
}

/// A routing failure.
pub fn route_error(e: &RouteError) -> RecipientOutcome {
    match e {
        RouteError::Permanent(m) => RecipientOutcome {
            verdict: Verdict::Permanent,
            reply: m.clone(),
            enhanced: Some("5.1.2".into()),
            remote: None,
        },
        RouteError::Temporary(m) => RecipientOutcome {
            verdict: Verdict::Temporary,
            reply: m.clone(),
            enhanced: Some("4.4.3".into()),
            remote: None,
        },
    }
}

/// A failure of our own making (spool unreadable, shutdown): temporary.
pub fn local(reason: impl Into<String>) -> RecipientOutcome {
    RecipientOutcome {
        verdict: Verdict::Temporary,
        reply: reason.into(),
        enhanced: Some("4.3.0".into()),
        remote: None,
    }
}

/// A permanent failure decided here (e.g. the remote cannot take SMTPUTF8).
pub fn refuse(host: &str, enhanced: &str, reason: impl Into<String>) -> RecipientOutcome {
    RecipientOutcome {
        verdict: Verdict::Permanent,
        reply: reason.into(),
        enhanced: Some(enhanced.into()),
        remote: Some(host.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let cases = [
            (250, Verdict::Delivered),
            (251, Verdict::Delivered),
            (421, Verdict::Temporary),
            (452, Verdict::Temporary),
            (550, Verdict::Permanent),
            (554, Verdict::Permanent),
            (199, Verdict::Temporary),
        ];
        for (code, want) in cases {
            let r = SmtpReply {
                code,
                lines: vec!["x".into()],
            };
            assert_eq!(reply("mx", &r).verdict, want, "{code}");
        }
        assert_eq!(
            route_error(&RouteError::Permanent("nx".into())).verdict,
            Verdict::Permanent
        );
        assert_eq!(
            route_error(&RouteError::Temporary("servfail".into())).verdict,
            Verdict::Temporary
        );
    }
}
