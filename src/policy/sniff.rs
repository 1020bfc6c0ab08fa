//! What a part's bytes are, whatever its headers say.
//!
//! A sender labels parts; nothing makes the label true. A PDF sent as
//! `text/plain`, a text file sent as `application/pgp-signature`, a zip
//! named `notes.txt`: the scan decides by the bytes. Three questions,
//! each answered from the content alone:
//!
//! - [`binary_format`]: is this a known binary format that holds no text
//!   we read (an image, an OLE container, a 7z archive)?
//! - [`looks_binary`]: is this decoded "text" really text, or bytes that
//!   only happen to sit in a text part?
//! - [`genuine_signature`]: is this part, declared a signature or a key,
//!   really one (an ASCII-armored block, a DER `SignedData`, a sequence
//!   of OpenPGP signature or key packets), small enough to be one?

/// Largest signature or key part that is skipped as one. A detached
/// signature is a few hundred bytes, a public key with its signatures a
/// few dozen kilobytes; a larger part is read like any other.
pub const MAX_SIGNATURE_SIZE: usize = 256 * 1024;

/// Types that declare a signature or key (which holds no text of its own).
pub fn is_signature_type(ct: &str) -> bool {
    matches!(
        ct,
        "application/pgp-signature"
            | "application/pgp-keys"
            | "application/pkcs7-signature"
            | "application/x-pkcs7-signature"
            | "application/pkcs7-mime"
            | "application/x-pkcs7-mime"
            | "application/pkix-cert"
            | "application/x-x509-ca-cert"
            | "application/x-x509-user-cert"
            | "application/pkcs10"
    )
}

/// A binary format by its magic bytes, named for unscannable entries;
/// `None` for content that may be text (or a container read elsewhere:
/// PDF, zip and gzip are recognised by [`super::extract::Kind::of`]).
pub fn binary_format(data: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "an image"),
        (b"\xff\xd8\xff", "an image"),
        (b"GIF87a", "an image"),
        (b"GIF89a", "an image"),
        (b"II*\x00", "an image"),
        (b"MM\x00*", "an image"),
        (b"BM", "an image"),
        (b"\x00\x00\x00\x0cjP  ", "an image"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE document"),
        (b"7z\xbc\xaf\x27\x1c", "an archive"),
        (b"Rar!\x1a\x07", "an archive"),
        (b"BZh", "compressed data"),
        (b"\xfd7zXZ\x00", "compressed data"),
        (b"\x28\xb5\x2f\xfd", "compressed data"),
        (b"\x78\x9c", "compressed data"),
        (b"\x78\xda", "compressed data"),
        (b"\x78\x01", "compressed data"),
        (b"\x7fELF", "a program"),
        (b"MZ", "a program"),
        (b"\x00\x01\x00\x00\x00", "a font"),
        (b"OggS", "audio or video"),
        (b"ID3", "audio or video"),
        (b"fLaC", "audio or video"),
    ];
    if let Some((_, what)) = MAGIC.iter().find(|(m, _)| data.starts_with(m)) {
        return Some(what);
    }
    // RIFF (WAVE, AVI, WebP) and ISO media (MP4, HEIC): a tag at offset 8 or 4.
    if data.starts_with(b"RIFF") && data.len() >= 12 {
        return Some(if &data[8..12] == b"WEBP" {
            "an image"
        } else {
            "audio or video"
        });
    }
    if data.get(4..8) == Some(b"ftyp") {
        return Some("an image, audio or video");
    }
    None
}

/// A text format whose markup can sit inside a number and which is not
/// turned into text here (RTF control words, PostScript show operators).
pub fn unread_text_format(text: &str) -> Option<&'static str> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with("{\\rtf") {
        Some("RTF")
    } else if t.starts_with("%!PS") {
        Some("PostScript")
    } else {
        None
    }
}

/// Whether decoded text is not text: a NUL, or more than a few C0 control
/// characters (tab, line feed, form feed, carriage return and escape
/// excepted). Compressed or encrypted bytes decoded as text hold about
/// one control character in ten; text a person wrote holds none.
pub fn looks_binary(text: &str) -> bool {
    let mut controls = 0usize;
    for c in text.chars() {
        match c {
            '\0' => return true,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1b' => {}
            '\x01'..='\x1f' | '\x7f' => {
                controls += 1;
                if controls > 3 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Text of bytes that carry no charset of their own: UTF-16 with a
/// byte-order mark, else UTF-8 (invalid sequences replaced, which
/// [`looks_binary`] does not count: Latin-1 sent without a charset is
/// still text).
pub fn decode_text(data: &[u8]) -> String {
    let utf16 = |rest: &[u8], be: bool| {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| {
                let pair = [c[0], c.get(1).copied().unwrap_or(0)];
                if be {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    if let Some(rest) = data.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, false);
    }
    if let Some(rest) = data.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, true);
    }
    let data = data.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(data);
    String::from_utf8_lossy(data).into_owned()
}

/// If `data`, declared a signature or key, really is one: the text in it
/// that a person could have written (armor headers, OpenPGP user IDs), to
/// be scanned. `None`: it is not a signature or key, and is read like any
/// other part.
pub fn genuine_signature(data: &[u8]) -> Option<String> {
    if data.is_empty() || data.len() > MAX_SIGNATURE_SIZE {
        return None;
    }
    if let Some(text) = armored(data) {
        return Some(text);
    }
    if der_signed_data(data) {
        return Some(String::new());
    }
    openpgp_packets(data)
}

/// An ASCII-armored block (OpenPGP, RFC 4880 section 6.2, or PEM, RFC
/// 7468): only white space around it, `Key: value` armor headers, then
/// base64 lines and an optional `=` checksum. Returns the armor headers.
fn armored(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.lines().map(str::trim_end).skip_while(|l| l.is_empty());
    let begin = lines.next()?;
    let label = begin
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("-----")?
        .to_string();
    const LABELS: &[&str] = &[
        "PGP SIGNATURE",
        "PGP PUBLIC KEY BLOCK",
        "PKCS7",
        "CMS",
        "CERTIFICATE",
        "CERTIFICATE REQUEST",
    ];
    if !LABELS.contains(&label.as_str()) {
        return None;
    }
    let end = format!("-----END {label}-----");
    let mut headers = String::new();
    let mut in_headers = true;
    let mut body = 0usize;
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        if in_headers {
            if line.is_empty() {
                in_headers = false;
                continue;
            }
            if let Some((key, value)) = line.split_once(": ")
                && !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                headers.push_str(value);
                headers.push('\n');
                continue;
            }
            // PEM has no headers: the base64 starts at once.
            in_headers = false;
        }
        let b64 = line.strip_prefix('=').unwrap_or(line);
        if !b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return None;
        }
        body += b64.len();
    }
    (ended && body > 0 && lines.all(|l| l.trim().is_empty())).then_some(headers)
}

/// A DER PKCS#7 / CMS `ContentInfo` of type `signedData`: one SEQUENCE
/// covering exactly the data, starting with that OID.
fn der_signed_data(data: &[u8]) -> bool {
    const SIGNED_DATA: &[u8] = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02";
    let Some((0x30, header, len)) = der_header(data) else {
        return false;
    };
    header.checked_add(len) == Some(data.len())
        && data
            .get(header..)
            .is_some_and(|c| c.starts_with(SIGNED_DATA))
}

/// Tag, header length and content length of the DER element at the start
/// of `data` (definite lengths only).
fn der_header(data: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    if first < 0x80 {
        return Some((tag, 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for &b in data.get(2..2 + n)? {
        len = len.checked_mul(256)?.checked_add(usize::from(b))?;
    }
    Some((tag, 2 + n, len))
}

/// A binary OpenPGP message of signature and key packets only (RFC 9580
/// section 4: signature, public key and subkey, user ID and attribute,
/// trust, marker), the packets covering exactly the data. Returns the
/// user IDs, which a person writes.
fn openpgp_packets(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut user_ids = String::new();
    while !rest.is_empty() {
        let first = rest[0];
        if first & 0x80 == 0 {
            return None;
        }
        let (tag, header, len): (u8, usize, usize) = if first & 0x40 != 0 {
            // New format (no partial lengths: signatures and keys never use them).
            let tag = first & 0x3f;
            let l0 = usize::from(*rest.get(1)?);
            match l0 {
                0..=191 => (tag, 2, l0),
                192..=223 => {
                    let l1 = usize::from(*rest.get(2)?);
                    (tag, 3, ((l0 - 192) << 8) + l1 + 192)
                }
                255 => {
                    let b = rest.get(2..6)?;
                    (
                        tag,
                        6,
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    )
                }
                _ => return None,
            }
        } else {
            let tag = (first >> 2) & 0x0f;
            match first & 0x03 {
                0 => (tag, 2, usize::from(*rest.get(1)?)),
                1 => {
                    let b = rest.get(1..3)?;
                    (tag, 3, usize::from(u16::from_be_bytes([b[0], b[1]])))
                }
                2 => {
                    let b = rest.get(1..5)?;
                    (
                        tag,
                        5,
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    )
                }
                _ => return None,
            }
        };
        if !matches!(tag, 2 | 6 | 10 | 12 | 13 | 14 | 17) {
            return None;
        }
        let end = header.checked_add(len)?;
        let body = rest.get(header..end)?;
        if tag == 13 {
            user_ids.push_str(&String::from_utf8_lossy(body));
            user_ids.push('\n');
        }
        rest = &rest[end..];
    }
    Some(user_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARMORED_SIG: &str = "-----BEGIN PGP SIGNATURE-----\r\n\r\n\
        iHUEARYKAB0WIQTx2b0Ls8+dcXb1tcTDPNCUuvHWfAUCZ0JHBAAKCRDDPNCUuvHW\r\n\
        fLy1AP9oq5sTmGzLzUXCPGC/tl6GJ9ns9JqM2H2Yz2uDgSRnXQD/cNXgKhqJwCzT\r\n\
        =AbCd\r\n-----END PGP SIGNATURE-----\r\n";

    #[test]
    fn armored_signatures_and_keys_are_genuine_and_their_headers_are_read() {
        assert_eq!(
            genuine_signature(ARMORED_SIG.as_bytes()),
            Some(String::new())
        );
        let with_comment = ARMORED_SIG.replacen(
            "-----\r\n\r\n",
            "-----\r\nComment: SSN 123-45-6789\r\n\r\n",
            1,
        );
        assert_eq!(
            genuine_signature(with_comment.as_bytes()).as_deref(),
            Some("SSN 123-45-6789\n")
        );
        let pem =
            "-----BEGIN PKCS7-----\nMIIBiQYJKoZIhvcNAQcCoIIBejCCAXYCAQEx\n-----END PKCS7-----\n";
        assert_eq!(genuine_signature(pem.as_bytes()), Some(String::new()));
    }

    #[test]
    fn text_dressed_as_a_signature_is_not_one() {
        for fake in [
            "SSN 123-45-6789".to_string(),
            // Text before, inside and after the armor, at each position.
            format!("SSN 123-45-6789\r\n{ARMORED_SIG}"),
            format!("{ARMORED_SIG}SSN 123-45-6789\r\n"),
            ARMORED_SIG.replacen("=AbCd", "SSN 123-45-6789", 1),
            ARMORED_SIG.replacen("\r\n\r\n", "\r\n\r\nSSN 123-45-6789\r\n", 1),
            // Never ended, or no body at all.
            ARMORED_SIG.replacen("-----END PGP SIGNATURE-----", "", 1),
            "-----BEGIN PGP SIGNATURE-----\n-----END PGP SIGNATURE-----\n".to_string(),
            // A label that is not a signature or key.
            ARMORED_SIG.replace("PGP SIGNATURE", "PGP MESSAGE"),
        ] {
            assert_eq!(genuine_signature(fake.as_bytes()), None, "{fake:?}");
        }
        // Too large to be a signature.
        let mut big = ARMORED_SIG.replacen("=AbCd", &"AAAA".repeat(MAX_SIGNATURE_SIZE / 4), 1);
        assert_eq!(genuine_signature(big.as_bytes()), None);
        big.clear();
        assert_eq!(genuine_signature(big.as_bytes()), None);
    }

    #[test]
    fn binary_signatures_are_recognised_by_structure() {
        // DER ContentInfo { signedData, [0] { ... } }.
        let mut der = vec![0x30, 0x0f];
        der.extend_from_slice(b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x02\x30\x00");
        assert_eq!(genuine_signature(&der), Some(String::new()));
        let mut longer = der.clone();
        longer.extend_from_slice(b"SSN 123-45-6789");
        assert_eq!(genuine_signature(&longer), None, "trailing bytes");
        der[12] = 0x01; // data, not signedData
        assert_eq!(genuine_signature(&der), None);
        // OpenPGP: an old-format signature packet, a new-format user ID.
        let mut pgp = vec![0x88, 0x03, 4, 0, 1];
        pgp.extend_from_slice(&[0xcd, 0x0f]);
        pgp.extend_from_slice(b"SSN 123-45-6789");
        assert_eq!(
            genuine_signature(&pgp).as_deref(),
            Some("SSN 123-45-6789\n")
        );
        // A literal data packet (tag 11) is content, not a signature.
        let literal = [0xcb, 0x05, b'b', 0, 0, 0, 0];
        assert_eq!(genuine_signature(&literal), None);
        // A length past the end.
        assert_eq!(genuine_signature(&[0x88, 0x40, 1, 2]), None);
    }

    #[test]
    fn binary_and_text_are_told_apart() {
        assert!(looks_binary("a\0b"));
        assert!(looks_binary("\x01\x02\x03\x04 text"));
        assert!(!looks_binary("SSN 123-45-6789\r\n\tcaf\u{e9} \u{fffd}\x0c"));
        assert_eq!(binary_format(b"\x89PNG\r\n\x1a\nrest"), Some("an image"));
        assert_eq!(binary_format(b"RIFF\0\0\0\0WEBPVP8 "), Some("an image"));
        assert_eq!(binary_format(b"SSN 123-45-6789"), None);
        assert_eq!(decode_text(b"\xff\xfe1\x002\x003\x00"), "123");
        assert_eq!(decode_text(b"\xfe\xff\x001\x002\x003"), "123");
        assert_eq!(decode_text(b"\xef\xbb\xbfabc"), "abc");
    }
}
