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

/// Types that declare a signature, key or certificate (which holds no
/// text of its own). Not `application/pkcs7-mime`: that is content
/// (signed or encrypted), not a signature.
pub fn is_signature_type(ct: &str) -> bool {
    matches!(
        ct,
        "application/pgp-signature"
            | "application/pgp-keys"
            | "application/pkcs7-signature"
            | "application/x-pkcs7-signature"
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
        (b"\x00\x00\x00\x0cjP  ", "an image"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE document"),
        (b"7z\xbc\xaf\x27\x1c", "an archive"),
        (b"Rar!\x1a\x07", "an archive"),
        (b"\xfd7zXZ\x00", "compressed data"),
        (b"\x28\xb5\x2f\xfd", "compressed data"),
        (b"\x78\x9c", "compressed data"),
        (b"\x78\xda", "compressed data"),
        (b"\x78\x01", "compressed data"),
        (b"\x7fELF", "a program"),
        (b"\x00\x01\x00\x00\x00", "a font"),
        (b"OggS", "audio or video"),
        (b"ID3\x03\x00", "audio or video"),
        (b"ID3\x04\x00", "audio or video"),
        (b"fLaC", "audio or video"),
    ];
    if let Some((_, what)) = MAGIC.iter().find(|(m, _)| data.starts_with(m)) {
        return Some(what);
    }
    // Magic too short to tell from a text alone: bzip2 with its block
    // magic, a Windows program with its PE header.
    if data.starts_with(b"BZh")
        && data.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
        && data.get(4..10) == Some(b"1AY&SY")
    {
        return Some("compressed data");
    }
    if detected_type(data) == Some("application/x-msdownload") {
        return Some("a program");
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

/// The MIME type of `data` by its magic bytes, for `attachment_type`
/// rules: a label does not hide a PDF or a program.
pub fn detected_type(data: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"PK\x03\x04", "application/zip"),
        (b"PK\x05\x06", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            "application/x-ole-storage",
        ),
        (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
        (b"Rar!\x1a\x07", "application/vnd.rar"),
        (b"\x7fELF", "application/x-executable"),
    ];
    let head = &data[..data.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        return Some("application/pdf");
    }
    // A Windows program: `MZ`, and the PE header where it points (two
    // letters alone are too common a start of a text).
    if data.starts_with(b"MZ") {
        let pe = data
            .get(0x3c..0x40)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .and_then(|at| data.get(at..at.checked_add(4)?));
        if pe == Some(b"PE\0\0") {
            return Some("application/x-msdownload");
        }
    }
    MAGIC
        .iter()
        .find(|(m, _)| data.starts_with(m))
        .map(|(_, t)| *t)
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
///
/// A signature must carry no content: a CMS `SignedData` with its
/// content inside (an "opaque" signature), an OpenPGP literal or
/// compressed data packet, is content under a signature's label.
pub fn genuine_signature(data: &[u8]) -> Option<String> {
    if data.is_empty() || data.len() > MAX_SIGNATURE_SIZE {
        return None;
    }
    if let Some((label, headers, der)) = armored(data) {
        let inner = match label.as_str() {
            "PGP SIGNATURE" | "PGP PUBLIC KEY BLOCK" => openpgp_packets(&der)?,
            "PKCS7" | "CMS" if detached_signed_data(&der) => der_strings(&der)?,
            "CERTIFICATE" | "CERTIFICATE REQUEST" if signed_der_object(&der) => der_strings(&der)?,
            _ => return None,
        };
        return Some(headers + &inner);
    }
    if detached_signed_data(data) || signed_der_object(data) {
        return der_strings(data);
    }
    openpgp_packets(data)
}

/// An ASCII-armored block (OpenPGP, RFC 9580 section 6.2, or PEM, RFC
/// 7468): only white space around it, `Key: value` armor headers, then
/// base64 lines and an optional `=` checksum. Returns the label, the
/// armor headers' values and the decoded body.
fn armored(data: &[u8]) -> Option<(String, String, Vec<u8>)> {
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
    let mut body = String::new();
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
        // The OpenPGP checksum line (`=` and four characters) is not data.
        if line.starts_with('=') && line.len() == 5 {
            continue;
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return None;
        }
        body.push_str(line);
    }
    if !ended || body.is_empty() || !lines.all(|l| l.trim().is_empty()) {
        return None;
    }
    let der = mail_parser::decoders::base64::base64_decode(body.as_bytes())?;
    Some((label, headers, der))
}

/// A DER (or BER) element of `data` at its start: (tag, content, rest).
/// BER's indefinite length (NSS writes CMS that way) is followed to its
/// end-of-contents marker, nested at most [`MAX_BER_DEPTH`] deep.
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    ber_element(data, 0)
}

/// Indefinite-length elements inside one another, at most.
const MAX_BER_DEPTH: usize = 32;

fn ber_element(data: &[u8], depth: usize) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    if data.get(1) == Some(&0x80) {
        // Indefinite: only for constructed elements; children up to 00 00.
        if tag & 0x20 == 0 || depth >= MAX_BER_DEPTH {
            return None;
        }
        let content = data.get(2..)?;
        let mut rest = content;
        loop {
            if rest.starts_with(&[0, 0]) {
                let len = content.len() - rest.len();
                return Some((tag, &content[..len], &rest[2..]));
            }
            let (_, _, next) = ber_element(rest, depth + 1)?;
            rest = next;
        }
    }
    let (tag, header, len) = der_header(data)?;
    let end = header.checked_add(len)?;
    Some((tag, data.get(header..end)?, data.get(end..)?))
}

/// A certificate or certificate request (RFC 5280, RFC 2986): one DER
/// SEQUENCE covering exactly `data` of the signed object, its algorithm
/// and its signature (a BIT STRING), nothing else.
fn signed_der_object(data: &[u8]) -> bool {
    let check = || -> Option<()> {
        let (0x30, outer, b"") = der_element(data)? else {
            return None;
        };
        let (0x30, _, rest) = der_element(outer)? else {
            return None;
        };
        let (0x30, _, rest) = der_element(rest)? else {
            return None;
        };
        let (0x03, _, b"") = der_element(rest)? else {
            return None;
        };
        Some(())
    };
    check().is_some()
}

/// Every character string in a DER structure (names in certificates,
/// which a person writes), one per line; `None` if the structure does
/// not parse to its end. Walked with an explicit stack.
fn der_strings(data: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut stack = vec![data];
    while let Some(mut rest) = stack.pop() {
        while !rest.is_empty() {
            let (tag, content, next) = der_element(rest)?;
            match tag {
                // UTF8, Printable, T61, IA5, Visible, Universal strings.
                0x0c | 0x13 | 0x14 | 0x16 | 0x1a | 0x1c => {
                    out.push_str(&String::from_utf8_lossy(content));
                    out.push('\n');
                }
                // BMPString: UTF-16BE.
                0x1e => {
                    let units: Vec<u16> = content
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
                        .collect();
                    out.push_str(&String::from_utf16_lossy(&units));
                    out.push('\n');
                }
                t if t & 0x20 != 0 => stack.push(content),
                _ => {}
            }
            rest = next;
        }
    }
    Some(out)
}

/// A DER PKCS#7 / CMS `ContentInfo` of type `signedData` covering exactly
/// the data, whose encapsulated content is absent (RFC 5652 section 5.2:
/// a detached signature). With the content inside, it is not a
/// signature but a signed document.
fn detached_signed_data(data: &[u8]) -> bool {
    const SIGNED_DATA: &[u8] = b"\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02";
    let check = || -> Option<bool> {
        let (0x30, info, rest) = der_element(data)? else {
            return None;
        };
        if !rest.is_empty() {
            return None;
        }
        let (0x06, oid, info) = der_element(info)? else {
            return None;
        };
        if oid != SIGNED_DATA {
            return None;
        }
        let (0xa0, explicit, _) = der_element(info)? else {
            return None;
        };
        let (0x30, signed, _) = der_element(explicit)? else {
            return None;
        };
        let (0x02, _, signed) = der_element(signed)? else {
            return None;
        };
        let (0x31, _, signed) = der_element(signed)? else {
            return None;
        };
        let (0x30, encap, _) = der_element(signed)? else {
            return None;
        };
        let (0x06, _, econtent) = der_element(encap)? else {
            return None;
        };
        Some(econtent.is_empty())
    };
    check() == Some(true)
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
    use base64::Engine;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    }

    /// An OpenPGP signature packet (old format, tag 2); the body is not parsed.
    const SIG_PACKET: &[u8] = b"\x88\x0c\x04\x00\x16\x0a\x00\x06\x05\x02abcd";

    /// A CMS ContentInfo of signedData whose encapsulated content is
    /// `econtent` (none: a detached signature).
    fn signed_data(econtent: Option<&[u8]>) -> Vec<u8> {
        let oid_data = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01";
        let mut encap = oid_data.to_vec();
        if let Some(c) = econtent {
            encap.extend(tlv(0xa0, &tlv(0x04, c)));
        }
        let mut sd = tlv(0x02, b"\x01");
        sd.extend(tlv(0x31, b""));
        sd.extend(tlv(0x30, &encap));
        sd.extend(tlv(0x31, &tlv(0x30, &tlv(0x0c, b"Jane Roe"))));
        let mut ci = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02".to_vec();
        ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
        tlv(0x30, &ci)
    }

    fn armor(label: &str, headers: &str, body: &[u8], checksum: bool) -> String {
        format!(
            "-----BEGIN {label}-----\r\n{headers}{}{}\r\n{}-----END {label}-----\r\n",
            if headers.is_empty() && label.starts_with("PGP") {
                "\r\n"
            } else if headers.is_empty() {
                ""
            } else {
                "\r\n"
            },
            b64(body),
            if checksum { "=AbCd\r\n" } else { "" },
        )
    }

    #[test]
    fn armored_signatures_and_keys_are_genuine_and_their_text_is_read() {
        let sig = armor("PGP SIGNATURE", "", SIG_PACKET, true);
        assert_eq!(
            genuine_signature(sig.as_bytes()),
            Some(String::new()),
            "{sig}"
        );
        let with_comment = armor(
            "PGP SIGNATURE",
            "Comment: SSN 123-45-6789\r\n",
            SIG_PACKET,
            true,
        );
        assert_eq!(
            genuine_signature(with_comment.as_bytes()).as_deref(),
            Some("SSN 123-45-6789\n")
        );
        let pem = armor("PKCS7", "", &signed_data(None), false);
        assert_eq!(
            genuine_signature(pem.as_bytes()).as_deref(),
            Some("Jane Roe\n")
        );
        // A key with a user ID (new-format tag 13).
        let mut key = vec![0xc6, 0x03, 4, 0, 0];
        key.extend_from_slice(&[0xcd, 0x0f]);
        key.extend_from_slice(b"SSN 123-45-6789");
        let block = armor("PGP PUBLIC KEY BLOCK", "", &key, true);
        assert_eq!(
            genuine_signature(block.as_bytes()).as_deref(),
            Some("SSN 123-45-6789\n")
        );
    }

    #[test]
    fn text_or_content_dressed_as_a_signature_is_not_one() {
        let sig = armor("PGP SIGNATURE", "", SIG_PACKET, true);
        for fake in [
            "SSN 123-45-6789".to_string(),
            // Text before, inside and after the armor, at each position.
            format!("SSN 123-45-6789\r\n{sig}"),
            format!("{sig}SSN 123-45-6789\r\n"),
            sig.replacen("=AbCd", "SSN 123-45-6789", 1),
            sig.replacen("-----\r\n\r\n", "-----\r\n\r\nSSN 123-45-6789\r\n", 1),
            // Never ended, or no body at all.
            sig.replacen("-----END PGP SIGNATURE-----", "", 1),
            "-----BEGIN PGP SIGNATURE-----\n-----END PGP SIGNATURE-----\n".to_string(),
            // A label that is not a signature or key.
            sig.replace("PGP SIGNATURE", "PGP MESSAGE"),
            // Armor around what is not a signature: base64 of text, a
            // literal data packet, a signed message with its content.
            armor("PGP SIGNATURE", "", b"SSN 123-45-6789", true),
            armor("PGP SIGNATURE", "", b"\xcb\x05b\x00\x00\x00\x00", true),
            armor("PKCS7", "", &signed_data(Some(b"SSN 123-45-6789")), false),
            armor(
                "CERTIFICATE",
                "",
                &tlv(0x30, &tlv(0x04, b"SSN 123-45-6789")),
                false,
            ),
        ] {
            assert_eq!(genuine_signature(fake.as_bytes()), None, "{fake:?}");
        }
        // Too large to be a signature.
        let big = sig.replacen("=AbCd", &"AAAA".repeat(MAX_SIGNATURE_SIZE / 4), 1);
        assert_eq!(genuine_signature(big.as_bytes()), None);
        assert_eq!(genuine_signature(b""), None);
    }

    /// `signed_data` with every constructed element in BER's indefinite
    /// length, as NSS writes it.
    fn indefinite(der: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = der;
        while let Some((tag, content, next)) = der_element(rest) {
            out.push(tag);
            if tag & 0x20 != 0 {
                out.push(0x80);
                out.extend(indefinite(content));
                out.extend([0, 0]);
            } else {
                out.push(content.len() as u8);
                out.extend_from_slice(content);
            }
            rest = next;
        }
        out
    }

    #[test]
    fn binary_signatures_are_recognised_by_structure() {
        let der = signed_data(None);
        assert_eq!(genuine_signature(&der).as_deref(), Some("Jane Roe\n"));
        let ber = indefinite(&der);
        assert_ne!(ber, der);
        assert_eq!(
            genuine_signature(&ber).as_deref(),
            Some("Jane Roe\n"),
            "BER"
        );
        assert_eq!(
            genuine_signature(&indefinite(&signed_data(Some(b"SSN")))),
            None,
            "BER opaque"
        );
        assert_eq!(
            genuine_signature(&ber[..ber.len() - 2]),
            None,
            "no end marker"
        );
        // Nested deeper than the limit.
        let mut deep = vec![0x30, 0x80].repeat(MAX_BER_DEPTH + 2);
        deep.extend([0, 0].repeat(MAX_BER_DEPTH + 2));
        assert_eq!(der_element(&deep), None);
        let mut longer = der.clone();
        longer.extend_from_slice(b"SSN 123-45-6789");
        assert_eq!(genuine_signature(&longer), None, "trailing bytes");
        assert_eq!(
            genuine_signature(&signed_data(Some(b"SSN"))),
            None,
            "opaque"
        );
        let mut data_oid = der.clone();
        data_oid[12] = 0x01; // data, not signedData
        assert_eq!(genuine_signature(&data_oid), None);
        // A certificate's shape, its names read.
        let mut cert = tlv(0x30, &tlv(0x13, b"SSN 123-45-6789"));
        cert.extend(tlv(0x30, b""));
        cert.extend(tlv(0x03, b"\x00"));
        assert_eq!(
            genuine_signature(&tlv(0x30, &cert)).as_deref(),
            Some("SSN 123-45-6789\n")
        );
        assert_eq!(
            genuine_signature(&tlv(0x30, &tlv(0x04, b"SSN 123-45-6789"))),
            None
        );
        // OpenPGP: an old-format signature packet, a new-format user ID.
        let mut pgp = SIG_PACKET.to_vec();
        pgp.extend_from_slice(&[0xcd, 0x0f]);
        pgp.extend_from_slice(b"SSN 123-45-6789");
        assert_eq!(
            genuine_signature(&pgp).as_deref(),
            Some("SSN 123-45-6789\n")
        );
        // A literal data packet (tag 11) is content, not a signature.
        assert_eq!(genuine_signature(b"\xcb\x05b\x00\x00\x00\x00"), None);
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
        for text in ["BMI 31", "MZ Health", "BZh notes", "ID3 tag"] {
            assert_eq!(binary_format(text.as_bytes()), None, "{text}");
        }
        assert_eq!(binary_format(b"BZh91AY&SY\x00"), Some("compressed data"));
        assert_eq!(unread_text_format("\u{feff} {\\rtf1 x}"), Some("RTF"));
        assert_eq!(unread_text_format("%!PS-Adobe-3.0"), Some("PostScript"));
        assert_eq!(decode_text(b"\xff\xfe1\x002\x003\x00"), "123");
        assert_eq!(decode_text(b"\xfe\xff\x001\x002\x003"), "123");
        assert_eq!(decode_text(b"\xef\xbb\xbfabc"), "abc");
    }

    /// Signatures, keys and certificates as GnuPG and OpenSSL write them
    /// (tools we did not write): every one is genuine, and an opaque
    /// signed message is not.
    #[test]
    fn signatures_made_by_gnupg_and_openssl_are_genuine() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("the tool runs (a test package)");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        std::fs::write(d.join("msg.txt"), b"SSN 123-45-6789\r\n").unwrap();
        let gpg = || {
            let mut c = Command::new("gpg");
            c.arg("--homedir").arg(d).args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ]);
            c
        };
        run(gpg().args([
            "--quick-gen-key",
            "Jane Roe <jane@clinic.example>",
            "ed25519",
            "sign",
            "never",
        ]));
        let msg = d.join("msg.txt");
        let mut made = vec![
            (
                "gpg armored detached",
                run(gpg()
                    .args(["--armor", "--detach-sign", "-o", "-"])
                    .arg(&msg)),
            ),
            (
                "gpg binary detached",
                run(gpg().args(["--detach-sign", "-o", "-"]).arg(&msg)),
            ),
            (
                "gpg armored key",
                run(gpg().args(["--armor", "--export", "jane@clinic.example"])),
            ),
            (
                "gpg binary key",
                run(gpg().args(["--export", "jane@clinic.example"])),
            ),
        ];
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=Jane Roe",
            ])
            .arg("-keyout")
            .arg(d.join("k.pem"))
            .arg("-out")
            .arg(d.join("c.pem")));
        let smime = |args: &[&str]| {
            let mut c = Command::new("openssl");
            c.args(["cms", "-sign", "-binary"])
                .arg("-in")
                .arg(&msg)
                .arg("-signer")
                .arg(d.join("c.pem"))
                .arg("-inkey")
                .arg(d.join("k.pem"))
                .args(args);
            run(&mut c)
        };
        made.push(("CMS DER detached", smime(&["-outform", "DER"])));
        made.push(("CMS PEM detached", smime(&["-outform", "PEM"])));
        made.push(("certificate PEM", std::fs::read(d.join("c.pem")).unwrap()));
        made.push((
            "certificate DER",
            run(Command::new("openssl")
                .args(["x509", "-outform", "DER"])
                .arg("-in")
                .arg(d.join("c.pem"))),
        ));
        for (what, data) in &made {
            let text = genuine_signature(data).unwrap_or_else(|| panic!("{what} is genuine"));
            assert!(!text.contains("123-45-6789"), "{what}");
        }
        // With the key's user ID and the certificate's name read.
        assert!(genuine_signature(&made[2].1).unwrap().contains("Jane Roe"));
        assert!(genuine_signature(&made[4].1).unwrap().contains("Jane Roe"));
        // The signed content inside: not a signature.
        for (what, data) in [
            ("CMS opaque", smime(&["-outform", "DER", "-nodetach"])),
            (
                "gpg signed message",
                run(gpg().args(["--sign", "-o", "-"]).arg(&msg)),
            ),
            (
                "gpg clear-signed",
                run(gpg().args(["--clearsign", "-o", "-"]).arg(&msg)),
            ),
            (
                "gpg armored signed message",
                run(gpg().args(["--armor", "--sign", "-o", "-"]).arg(&msg)),
            ),
        ] {
            assert_eq!(genuine_signature(&data), None, "{what}");
        }
    }
}
