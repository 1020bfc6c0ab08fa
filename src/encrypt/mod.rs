//! The encrypt stage: what each group of recipients gets, bytes in, bytes
//! out, no network I/O (`prepare`: recipes and their streams; `pgp`:
//! PGP/MIME). Also removing a subject tag such as `[secure]`; S/MIME and
//! the portal notification join here.

pub mod notice;
pub mod pgp;
pub mod prepare;

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
        // `get`: the eighth byte may fall inside a multi-byte character.
        let is_subject = line.len() > 8
            && line
                .get(..8)
                .is_some_and(|h| h.eq_ignore_ascii_case("subject:"));
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
        // Searched in the value only (the tag may be a word of "Subject:"),
        // at character boundaries of the original text, so that the bytes
        // removed are the ones that matched (lowercasing can change the
        // length of a text, so indices into a lowercased copy are wrong).
        let value = &field[8..];
        let tag_lower = tag.to_lowercase();
        let found = value.char_indices().map(|(i, _)| i).find(|&i| {
            value
                .get(i..i + tag.len())
                .is_some_and(|c| c.to_lowercase() == tag_lower)
        });
        match found {
            Some(i) => {
                let mut rest = String::new();
                rest.push_str(&value[..i]);
                rest.push_str(&value[i + tag.len()..]);
                let rest = rest.replace("\r\n", "");
                let collapsed: Vec<&str> =
                    rest.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
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
        // Found by the fuzz target (tests/fuzz): a header line whose eighth
        // byte falls inside a multi-byte character panicked.
        let eight_bit = "Subjé: x\r\nSubject: [secure] y\r\n\r\n";
        assert_eq!(
            String::from_utf8(strip_subject_tag(eight_bit.as_bytes(), "[secure]")).unwrap(),
            "Subjé: x\r\nSubject: y\r\n\r\n"
        );
        let lossy = b"Sub\xff\xfe\xfd\xfc: x\r\n\r\n";
        assert_eq!(
            strip_subject_tag(lossy, "[secure]"),
            String::from_utf8_lossy(lossy).as_bytes()
        );
        // Also found by the fuzz target: a tag that is part of "Subject:"
        // itself panicked (a slice from 8 to where it was found).
        for tag in ["s", "subject", "JECT:", "t: "] {
            assert_eq!(
                String::from_utf8(strip_subject_tag(b"Subject: Lab\r\n\r\n", tag)).unwrap(),
                "Subject: Lab\r\n\r\n",
                "{tag:?}"
            );
        }
        assert_eq!(
            String::from_utf8(strip_subject_tag(
                "Subject: Ergebnis [SÉCURISÉ]\r\n".as_bytes(),
                "[sécurisé]"
            ))
            .unwrap(),
            "Subject: Ergebnis\r\n"
        );
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8(strip_subject_tag(input.as_bytes(), "[secure]")).unwrap(),
                want,
                "{input:?}"
            );
        }
    }
}
