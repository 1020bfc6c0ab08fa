//! SMTP replies with enhanced status codes (RFC 3463). Replies stay generic
//! and never reveal which internal check fired; details go to the log.

/// One reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code, e.g. `5.7.1` (empty for 220/221 greetings).
    pub enhanced: String,
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced code.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.to_string(),
        }
    }

    /// Whether this is a 4xx or 5xx reply.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Wire form: every text line gets the code, `-` on all but the last.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if !self.enhanced.is_empty() && (i == 0 || self.code != 250) {
                out.push_str(&self.enhanced);
                out.push(' ');
            }
            out.push_str(line.trim_end_matches('\r'));
            out.push_str("\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(
            Reply::new(550, "5.7.1", "Relaying denied").to_wire(),
            "550 5.7.1 Relaying denied\r\n"
        );
        assert_eq!(
            Reply::new(250, "", "a\nb\nc").to_wire(),
            "250-a\r\n250-b\r\n250 c\r\n"
        );
    }
}
