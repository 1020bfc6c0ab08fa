//! The portal notification: the mail a recipient gets instead of the
//! message when it waits for them on the secure portal.
//!
//! It carries no PHI (invariant 3): not the original subject, body,
//! attachments or display names, only the bare envelope addresses, the
//! organisation's name, a subject the operator chose, the pickup link and
//! its expiry. Both parts (plain text and HTML) are base64, so any
//! organisation name travels without 8BITMIME; every header value is
//! checked for line breaks and control characters (no header injection
//! from a configured name) and non-ASCII header text is sent as RFC 2047
//! encoded words.

use base64::Engine as _;
use chrono::{DateTime, Utc};

/// What a notification says.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// The organisation the message comes from, as recipients know it.
    pub organization: &'a str,
    /// The subject, chosen by the operator (never the original's); `None`
    /// gives "Secure message from ORGANIZATION".
    pub subject: Option<&'a str>,
    /// The envelope sender: the notification's From, so replies reach them.
    pub sender: &'a str,
    /// The envelope recipient the message was stored for.
    pub recipient: &'a str,
    /// The pickup link.
    pub link: &'a str,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
    /// This gateway's host name, for the Message-ID.
    pub hostname: &'a str,
}

/// Why a notification could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    #[error("portal notification: the {0} holds a line break or a control character")]
    Unsafe(&'static str),
    #[error("portal notification: the {0} is empty")]
    Empty(&'static str),
}

/// A built notification.
pub struct NoticeMail {
    pub message_id: String,
    pub content: Vec<u8>,
}

/// Builds the notification `n` describes.
pub fn build(n: &Notice<'_>) -> Result<NoticeMail, NoticeError> {
    let organization = checked("organization name", n.organization)?;
    let default_subject = format!("Secure message from {organization}");
    let subject = match n.subject {
        Some(s) => checked("subject", s)?,
        None => &default_subject,
    };
    let sender = address("sender", n.sender)?;
    let recipient = address("recipient", n.recipient)?;
    let link = checked("link", n.link)?;
    if !link.is_ascii() || link.contains(char::is_whitespace) {
        return Err(NoticeError::Unsafe("link"));
    }
    let hostname = address("host name", n.hostname)?;
    let message_id = format!("<{}@{}>", crate::util::random_hex_id(), hostname);
    let boundary = format!("sealgate-notice-{}", crate::util::random_hex_id());
    let expires = n.expires_at.format("%B %-d, %Y at %H:%M UTC").to_string();
    let facts = Facts {
        organization,
        sender,
        recipient,
        link,
        expires: &expires,
    };
    let mut s = String::new();
    s.push_str(&format!("From: <{sender}>\r\n"));
    s.push_str(&format!("To: <{recipient}>\r\n"));
    s.push_str(&header("Subject", subject));
    s.push_str(&format!("Date: {}\r\n", Utc::now().to_rfc2822()));
    s.push_str(&format!("Message-ID: {message_id}\r\n"));
    s.push_str("MIME-Version: 1.0\r\n");
    s.push_str(&format!(
        "Content-Type: multipart/alternative;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    for (kind, body) in [("plain", text(&facts)), ("html", html(&facts))] {
        s.push_str(&format!("--{boundary}\r\n"));
        s.push_str(&format!("Content-Type: text/{kind}; charset=utf-8\r\n"));
        s.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        s.push_str(&crate::util::base64_lines(body.as_bytes()));
    }
    s.push_str(&format!("--{boundary}--\r\n"));
    Ok(NoticeMail {
        message_id,
        content: s.into_bytes(),
    })
}

struct Facts<'a> {
    organization: &'a str,
    sender: &'a str,
    recipient: &'a str,
    link: &'a str,
    expires: &'a str,
}

fn text(f: &Facts<'_>) -> String {
    format!(
        "{sender} sent you a secure message through {org}.\r\n\r\n\
         To read it, open this link and confirm your email address with a\r\n\
         code that will be sent to you:\r\n\r\n\
         {link}\r\n\r\n\
         The message can be read until {expires}.\r\n\
         The link is for {recipient} only: please do not forward this email.\r\n\r\n\
         If you did not expect this message, you can ignore this email.\r\n",
        sender = f.sender,
        org = f.organization,
        link = f.link,
        expires = f.expires,
        recipient = f.recipient,
    )
}

fn html(f: &Facts<'_>) -> String {
    let e = escape_html;
    format!(
        "<!DOCTYPE html>\r\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Secure message from {org}</title></head>\r\n<body>\r\n\
         <p>{sender} sent you a secure message through {org}.</p>\r\n\
         <p><a href=\"{link}\">Read the secure message</a></p>\r\n\
         <p>You will confirm your email address with a code that will be sent to you.\
         The message can be read until {expires}.</p>\r\n\
         <p>The link is for {recipient} only: please do not forward this email.\
         If you did not expect this message, you can ignore it.</p>\r\n\
         <p>If the button does not work, copy this address into your browser:<br>{link}</p>\r\n\
         </body></html>\r\n",
        org = e(f.organization),
        sender = e(f.sender),
        link = e(f.link),
        expires = e(f.expires),
        recipient = e(f.recipient),
    )
}

/// `value` when it is not empty and holds no control character.
fn checked<'a>(what: &'static str, value: &'a str) -> Result<&'a str, NoticeError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(NoticeError::Empty(what));
    }
    if value.chars().any(char::is_control) {
        return Err(NoticeError::Unsafe(what));
    }
    Ok(value)
}

/// An address or host name: checked, and nothing that would leave the
/// angle brackets of a header.
fn address<'a>(what: &'static str, value: &'a str) -> Result<&'a str, NoticeError> {
    let value = checked(what, value)?;
    if value.contains(['<', '>', ' ', '"', ',', ';', '(', ')']) {
        return Err(NoticeError::Unsafe(what));
    }
    Ok(value)
}

pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `Name: value\r\n`, folded: ASCII as it is (when its words fit a
/// line), anything else as UTF-8 encoded words (39 bytes, 64 characters each:
/// within RFC 2047's 75 and a 78-character line after `Subject: `).
fn header(name: &str, value: &str) -> String {
    let fits = value.split(' ').all(|w| w.len() <= 70);
    if value.is_ascii() && fits && !value.contains("=?") {
        let mut out = format!("{name}:");
        let mut line = out.len();
        for word in value.split(' ') {
            if line + 1 + word.len() > 76 {
                out.push_str("\r\n");
                line = 0;
            }
            out.push(' ');
            out.push_str(word);
            line += 1 + word.len();
        }
        out.push_str("\r\n");
        return out;
    }
    let words: Vec<String> = utf8_pieces(value, 39)
        .into_iter()
        .map(|p| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(p)
            )
        })
        .collect();
    format!("{name}: {}\r\n", words.join("\r\n "))
}

/// `s` cut into pieces of at most `max` bytes, at character boundaries.
fn utf8_pieces(s: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

#[cfg(test)]
mod tests;
