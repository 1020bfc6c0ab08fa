//! HTML to text for the PHI detectors (never for display).
//!
//! What a reader sees must reach the detectors as they see it: markup
//! inside a number (`123-<span>45</span>-6789`) is not a gap, so inline
//! elements join their neighbours, and only elements that break the line
//! for a reader (`<p>`, `<br>`, `<td>`, ...) become a line break. Character
//! references are decoded (`123&#45;45&#45;6789` is an SSN too), and the
//! characters that render as nothing (soft hyphen, zero-width spaces) are
//! dropped. What a reader does not see still travels in the clear, so
//! attribute values and comments are not thrown away: they follow the
//! visible text, each on a line of its own, and are scanned as well.

/// Elements after which a reader sees a new line (or a new cell).
const BREAKING: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "caption",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "option",
    "p",
    "pre",
    "script",
    "section",
    "select",
    "style",
    "summary",
    "table",
    "tbody",
    "td",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "ul",
];

/// The text of `html` as the detectors should read it: the visible text
/// first, then attribute values and comments, one per line.
pub fn to_text(html: &str) -> String {
    let mut visible = String::with_capacity(html.len());
    let mut hidden = String::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        // References end where a tag starts (`&#45<b></b>45` is `-45`):
        // decoded run by run, before the runs join.
        visible.push_str(&decode_references(&rest[..lt]));
        let after = &rest[lt + 1..];
        if let Some(comment) = after.strip_prefix("!--") {
            // A comment joins nothing: `123-<!-- x -->45-6789` reads as one
            // number. An unterminated comment runs to the end, as in a browser.
            // HTML5: `<!-->` and `<!--->` are empty comments, and `--!>`
            // ends one as `-->` does.
            let (body, next) = if let Some(next) = comment.strip_prefix('>') {
                ("", next)
            } else if let Some(next) = comment.strip_prefix("->") {
                ("", next)
            } else {
                let ends = [("-->", 3), ("--!>", 4)];
                match ends
                    .iter()
                    .filter_map(|(e, n)| comment.find(e).map(|i| (i, *n)))
                    .min()
                {
                    Some((end, n)) => (&comment[..end], &comment[end + n..]),
                    None => (comment, ""),
                }
            };
            push_line(&mut hidden, body);
            rest = next;
            continue;
        }
        let is_tag = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'));
        if !is_tag {
            // A bare `<` ("a < b") is text.
            visible.push('<');
            rest = after;
            continue;
        }
        let end = tag_end(after);
        let tag = &after[..end];
        rest = after.get(end + 1..).unwrap_or("");
        let name: String = tag
            .trim_start_matches(['/', '!', '?'])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if BREAKING.contains(&name.as_str()) {
            visible.push('\n');
        }
        // Everything in the tag after its name: attribute values, a
        // doctype's text.
        let attrs = tag
            .trim_start_matches(['/', '!', '?'])
            .get(name.len()..)
            .unwrap_or("");
        push_line(&mut hidden, attrs.trim_end_matches('/'));
    }
    visible.push_str(&decode_references(rest));
    let mut out = normalize(&visible);
    if !hidden.is_empty() {
        out.push('\n');
        out.push_str(&decode_references(&hidden));
    }
    out
}

/// The byte offset of the `>` that closes the tag starting at `s` (after
/// its `<`), skipping quoted attribute values; `s.len()` when it never
/// closes (the rest of the text is then inside the tag).
fn tag_end(s: &str) -> usize {
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return i,
            (None, _) => {}
        }
    }
    s.len()
}

fn push_line(out: &mut String, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        out.push_str(text);
        out.push('\n');
    }
}

/// Decodes character references (`&#45;`, `&#x2D;`, `&amp;`, `&nbsp;`,
/// and the other common names) and drops characters that render as
/// nothing. An unknown or malformed reference stays as written.
pub fn decode_references(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Numeric references as HTML5 reads them: any number of digits
        // (leading zeros too), the `;` optional.
        if let Some((c, used)) = numeric_reference(after) {
            out.push(c);
            rest = &after[used..];
            continue;
        }
        // Named references are short; a `;` further away is not this
        // one's end.
        let semi = after.bytes().take(32).position(|b| b == b';');
        let decoded = semi.and_then(|semi| reference(&after[..semi]).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    normalize(&out)
}

/// What HTML5 makes of numeric references 0x80-0x9F (the C1 controls
/// are read as Windows-1252; the five it leaves undefined stay as they are).
const WINDOWS_1252_C1: [u32; 32] = [
    0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
];

/// A numeric reference at the start of `after` (the text after `&`): its
/// character and the bytes it takes, `;` included when present.
fn numeric_reference(after: &str) -> Option<(char, usize)> {
    let num = after.strip_prefix('#')?;
    let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16, 2),
        None => (num, 10, 1),
    };
    let len = digits
        .bytes()
        .take_while(|b| (*b as char).is_digit(radix))
        .count();
    if len == 0 {
        return None;
    }
    let value = digits[..len]
        .trim_start_matches('0')
        .get(..)
        .filter(|d| d.len() <= 8)
        .map(|d| {
            if d.is_empty() {
                Some(0)
            } else {
                u32::from_str_radix(d, radix).ok()
            }
        })??;
    // HTML5 reads 0x80-0x9F as Windows-1252 (`&#150;` is an en dash).
    let value = match value {
        0x80..=0x9F => WINDOWS_1252_C1[(value - 0x80) as usize],
        v => v,
    };
    let c = char::from_u32(value).filter(|&c| c != '\0')?;
    let semi = usize::from(digits[len..].starts_with(';'));
    Some((c, skip + len + semi))
}

/// The character a reference names (`#45`, `#x2d`, `amp`, ...).
fn reference(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let n = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(n).filter(|&c| c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "shy" => '\u{AD}',
        "ndash" => '–',
        "mdash" => '—',
        "hyphen" | "dash" => '‐',
        "minus" => '−',
        "sol" => '/',
        "period" => '.',
        "colon" => ':',
        "num" => '#',
        "zwsp"
        | "ZeroWidthSpace"
        | "NegativeVeryThinSpace"
        | "NegativeThinSpace"
        | "NegativeMediumSpace"
        | "NegativeThickSpace" => '\u{200B}',
        "lrm" => '\u{200E}',
        "rlm" => '\u{200F}',
        "NoBreak" => '\u{2060}',
        "InvisibleTimes" | "it" => '\u{2062}',
        "InvisibleComma" | "ic" => '\u{2063}',
        "zwj" => '\u{200D}',
        "zwnj" => '\u{200C}',
        _ => return None,
    })
}

/// Text as the detectors should read it, as a reader sees it: characters
/// that render as nothing (soft hyphen, zero-width spaces and joiners,
/// word joiner, invisible operators, direction marks and embeddings, BOM,
/// variation selectors, combining marks) are dropped; the other spaces
/// are spaces; digits of other scripts and their full-width and
/// mathematical forms are ASCII digits; dashes and minus signs are `-`;
/// full-width letters and punctuation are ASCII. `１２３–４５–６７８９` is an
/// SSN to a reader, so it is one to the detectors. Used for every text
/// the detectors scan, not only HTML.
pub fn normalize(s: &str) -> String {
    s.chars().filter_map(reader_char).collect()
}

/// What a reader takes `c` for (see [`normalize`]), or `None` if it shows
/// nothing.
fn reader_char(c: char) -> Option<char> {
    let n = c as u32;
    // Digits of a script whose ten digits are contiguous, from its zero.
    const DIGIT_ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0,
        0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0,
        0x16A60, 0x16AC0, 0x16B50, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
    ];
    if let Some(zero) = DIGIT_ZEROS.iter().find(|&&z| (z..z + 10).contains(&n)) {
        return char::from_digit(n - zero, 10);
    }
    Some(match c {
        '\u{AD}'
        | '\u{34F}'
        | '\u{61C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{3164}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{300}'..='\u{36F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}' => return None,
        '\u{2028}' | '\u{2029}' => '\n',
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' => {
            ' '
        }
        '\u{2010}'..='\u{2015}'
        | '\u{2212}'
        | '\u{2043}'
        | '\u{FE58}'
        | '\u{FE63}'
        | '\u{FF0D}' => '-',
        // Mathematical digits: five styles of ten.
        '\u{1D7CE}'..='\u{1D7FF}' => char::from_digit((n - 0x1D7CE) % 10, 10)?,
        // Full-width ASCII (letters, punctuation).
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(n - 0xFF01 + 0x21)?,
        c => c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::detectors::{Detector, Detectors};

    /// HTML5 comment and reference forms that a browser reads: empty
    /// comments, `--!>`, numeric references with leading zeros or no
    /// `;`, long names of invisible characters.
    #[test]
    fn html5_comments_and_references_do_not_split_a_number() {
        for html in [
            "SSN 123-<!-->45-6789",
            "SSN 123-<!--->45-6789",
            "SSN 123-<!-- x --!>45-6789",
            "SSN 123&#00000000045;45-6789",
            "SSN 123&#45<b></b>45-6789",
            "SSN 123&#x2D<i></i>45-6789",
            "SSN 123-4&ZeroWidthSpace;5-6789",
            "SSN 123-4&lrm;5-6789",
            "SSN 123&#150;45&#150;6789",
        ] {
            assert_eq!(ssns(html), 1, "{html}: {:?}", to_text(html));
        }
    }

    /// Every default-ignorable character we know of inside an SSN, at
    /// every position, and digits of further scripts.
    #[test]
    fn more_invisible_characters_and_digits_do_not_hide_a_number() {
        let ssn = "123-45-6789";
        for c in [
            '\u{61C}',
            '\u{115F}',
            '\u{17B4}',
            '\u{180B}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{E0041}',
            '\u{1D173}',
        ] {
            for at in 0..=ssn.len() {
                let mut t = String::from("SSN ");
                t.push_str(&ssn[..at]);
                t.push(c);
                t.push_str(&ssn[at..]);
                assert_eq!(normalize(&t), format!("SSN {ssn}"), "{c:?} at {at}");
            }
        }
        // Balinese and Javanese digits.
        let balinese: String = "123-45-6789"
            .chars()
            .map(|c| {
                c.to_digit(10)
                    .map_or(c, |d| char::from_u32(0x1B50 + d).unwrap_or(c))
            })
            .collect();
        assert_eq!(normalize(&balinese), ssn);
        assert_eq!(normalize("\u{A9D1}\u{A9D2}"), "12");
    }

    fn ssns(html: &str) -> usize {
        Detectors::new().count(Detector::UsSsn, &to_text(html))
    }

    #[test]
    fn markup_inside_a_number_does_not_split_it() {
        for html in [
            "123-<span>45</span>-6789",
            "<p>SSN: 123-<b>45</b>-<i style=\"color:red\">6789</i></p>",
            "123-<!-- a comment -->45-6789",
            "1<span>2</span>3-45-6789",
            "<font face='x>y'>123</font>-45-6789",
            "123&#45;45&#x2d;6789",
            "123&nbsp;45&nbsp;6789",
            "123-4&shy;5-6789",
            "123-45-67\u{200B}89",
            "<a href=\"https://x.example/?ssn=123-45-6789\">link</a>",
            "<img alt=\"123-45-6789\">",
            "<!-- 123-45-6789 -->",
            "<span title='123-45-6789'",
            "<!-- 123-45-6789",
        ] {
            assert_eq!(ssns(html), 1, "{html:?} → {:?}", to_text(html));
        }
    }

    #[test]
    fn line_breaking_elements_separate_what_they_separate() {
        for html in [
            "<td>123-45</td><td>-6789</td>",
            "123-45<br>-6789",
            "<p>123-45</p><p>-6789</p>",
            "<div>123-45-</div>6789",
        ] {
            assert_eq!(ssns(html), 0, "{html:?} → {:?}", to_text(html));
        }
        assert_eq!(
            to_text("<p>a</p><p>b</p>")
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn text_that_only_looks_like_markup_stays() {
        assert!(to_text("a < b and c>d").contains("a < b and c>d"));
        assert_eq!(
            to_text("AT&T &unknown; &#xZZ; &"),
            "AT&T &unknown; &#xZZ; &"
        );
        assert_eq!(to_text("&#0;"), "&#0;");
        assert_eq!(to_text(""), "");
        // No panic on multi-byte text at every cut.
        let s = "é<é>&é;<!--é-->€&#233;😀<p";
        for i in 0..s.len() {
            if let Some(part) = s.get(..i) {
                to_text(part);
            }
        }
    }

    /// From review: digits of other scripts, full-width forms, Unicode
    /// dashes and invisible characters inside a number hid it from the
    /// ASCII detectors, though a reader sees the number.
    #[test]
    fn a_number_reads_as_a_reader_sees_it() {
        for text in [
            "\u{FF11}\u{FF12}\u{FF13}-\u{FF14}\u{FF15}-\u{FF16}\u{FF17}\u{FF18}\u{FF19}",
            "123\u{2013}45\u{2014}6789",
            "123\u{2212}45\u{2011}6789",
            "123\u{FF0D}45\u{FE63}6789",
            "\u{661}\u{662}\u{663}-\u{664}\u{665}-\u{666}\u{667}\u{668}\u{669}",
            "\u{967}\u{968}\u{969}-\u{96A}\u{96B}-\u{96C}\u{96D}\u{96E}\u{96F}",
            "\u{1D7CF}\u{1D7D0}\u{1D7D1}-45-6789",
            "1\u{200E}23-4\u{202E}5-67\u{2066}89",
            "1\u{332}2\u{332}3\u{332}-45-6789",
            "12\u{FE0F}3-45-6789",
            "123-45-\u{2063}6789",
        ] {
            assert_eq!(ssns(text), 1, "{text:?}: {:?}", normalize(text));
        }
        // ...at each position of the number.
        let ssn = "123-45-6789";
        for at in 0..=ssn.len() {
            for invisible in ["\u{200B}", "\u{200F}", "\u{2061}", "\u{34F}", "\u{AD}"] {
                let text = format!("{}{invisible}{}", &ssn[..at], &ssn[at..]);
                assert_eq!(ssns(&text), 1, "{text:?}");
            }
        }
        assert_eq!(normalize("a\u{3000}b\u{2028}c"), "a b\nc");
        assert_eq!(normalize("\u{FF33}\u{FF33}\u{FF2E}"), "SSN");
    }
}
