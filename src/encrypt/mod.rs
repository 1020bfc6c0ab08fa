//! Content transformations applied at delivery: bytes in, bytes out, no
//! I/O. Today: removing a subject tag such as `[secure]`; the OpenPGP and
//! S/MIME encryptions join here.

pub mod pgp;

/// Removes the first case-insensitive occurrence of `tag` from the Subject
/// header(s) of `headers` (the header section, CRLF lines, ending with the
/// empty line or not). Folded lines are handled; an RFC 2047 encoded
/// subject is left as it is unless the tag appears in its raw text.
pub fn strip_subject_tag(headers: &[u8], tag: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(headers);
    if !text.is_char_boundary(0) || tag.is_empty() {
        return headers.to_vec();
    }
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive("\r\n").peekable();
    while let Some(line) = lines.next() {
        let is_subject = line.len() > 8 && line[..8].eq_ignore_ascii_case("subject:");
        if !is_subject {
            out.push_str(line);
            continue;
        }
        // Gather the folded continuation lines.
        let mut field = line.to_string();
        while let Some(next) = lines.peek() {
            if next.starts_with(' ') || next.starts_with('\t') {
                field.push_str(next);
                lines.next();
            } else {
                break;
            }
        }
        let lower = field.to_lowercase();
        match lower
            .find(&tag.to_lowercase())
            .filter(|&i| field.is_char_boundary(i) && field.is_char_boundary(i + tag.len()))
        {
            Some(i) => {
                let mut value = String::new();
                value.push_str(&field[8..i]);
                value.push_str(&field[i + tag.len()..]);
                let value = value.replace("\r\n", "");
                let collapsed: Vec<&str> =
                    value.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
                out.push_str("Subject: ");
                out.push_str(&collapsed.join(" "));
                out.push_str("\r\n");
            }
            None => out.push_str(&field),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_tag() {
        let cases = [
            (
                "Subject: [secure] Lab results\r\nFrom: a\r\n\r\n",
                "Subject: Lab results\r\nFrom: a\r\n\r\n",
            ),
            (
                "subject: Lab [SECURE] results\r\n\r\n",
                "Subject: Lab results\r\n\r\n",
            ),
            (
                "Subject: Lab results\r\n [secure]\r\nX: y\r\n\r\n",
                "Subject: Lab results\r\nX: y\r\n\r\n",
            ),
            (
                "Subject: nothing here\r\n\r\n",
                "Subject: nothing here\r\n\r\n",
            ),
            ("X-Subject: [secure]\r\n\r\n", "X-Subject: [secure]\r\n\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8(strip_subject_tag(input.as_bytes(), "[secure]")).unwrap(),
                want,
                "{input:?}"
            );
        }
    }
}
