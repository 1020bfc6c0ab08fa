//! Text of binary attachments (PDF; DOCX, XLSX, PPTX, OpenDocument and
//! plain zip archives; gzip) for the PHI detectors.
//!
//! Attachments come from senders we do not control, so every extraction is
//! bounded: the input is at most the scanned part of the message
//! (`max_scan_size`), every stream or archive member is decompressed
//! against a budget ([`Limits::max_inflated`]: lopdf's own per-stream
//! limit for PDF, a counted reader for zip and gzip, so a zip or flate bomb stops
//! at the budget instead of exhausting memory), the extracted text has a
//! cap, and the work checks a deadline between pages and archive members.
//! The caller runs it on a blocking thread with a timeout as the last
//! backstop (see `facts::MessageFacts::scan`).
//!
//! Whatever cannot be read completely is an error, never an empty text:
//! the caller counts it as unscannable, which the policy treats as PHI.
//! Errors name a category only, never a library's message, which could
//! quote the document (a file name inside an archive, a string).

use std::io::Read;
use std::time::Instant;

/// Bounds of one extraction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decompressed bytes one document may produce (for PDF, per stream;
    /// for a zip or gzip, all members and nested documents together).
    pub max_inflated: usize,
    /// Characters of text one document may yield.
    pub max_text: usize,
    /// When to give up.
    pub deadline: Instant,
    /// How many containers (a zip or gzip inside a zip or gzip) may
    /// still be opened inside this document.
    pub depth: usize,
}

/// Containers opened inside one another, at most: a zip in a zip in a
/// gzip. Deeper is unscannable.
pub const MAX_CONTAINER_DEPTH: usize = 3;

impl Limits {
    /// The limits for a document inside this one, with `budget`
    /// decompressed bytes left: one level less to nest.
    fn nested(&self, budget: usize) -> Result<Limits, ExtractError> {
        let depth = self
            .depth
            .checked_sub(1)
            .ok_or(ExtractError::Unsupported("archives nested too deep"))?;
        Ok(Limits {
            max_inflated: budget,
            depth,
            ..*self
        })
    }
}

/// Why a document's text could not be read. The messages are shown in
/// decisions and audit rows: categories only, no content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("encrypted")]
    Encrypted,
    #[error("cannot be parsed ({0})")]
    Unparseable(&'static str),
    #[error("expands beyond the scan limit of {0} bytes")]
    TooLarge(usize),
    #[error("has no extractable text (an image or scan?)")]
    NoText,
    #[error("holds {0}, which are not read")]
    Unsupported(&'static str),
    #[error("not read before the scan deadline")]
    Deadline,
}

/// Which extractor reads a part, from its bytes first (a PDF sent as
/// `application/octet-stream` or `text/plain` is still a PDF), then its
/// declared type and file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    /// A zip archive: an Office Open XML (DOCX, XLSX, PPTX) or
    /// OpenDocument file (the text of its XML parts), or a plain archive
    /// (every member read by what it is).
    Zip,
    /// gzip (`application/gzip`, `application/tlsrpt+gzip`): its content,
    /// decompressed within the budget, is text or one of the above.
    Gzip,
}

/// Declared types of zip-based files.
const ZIP_TYPES: &[&str] = &[
    "application/zip",
    "application/x-zip",
    "application/x-zip-compressed",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.ms-word.document.macroenabled.12",
    "application/vnd.ms-excel.sheet.macroenabled.12",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
];

/// File name endings of zip-based files.
const ZIP_NAMES: &[&str] = &[
    ".zip", ".docx", ".docm", ".dotx", ".xlsx", ".xlsm", ".pptx", ".pptm", ".odt", ".ods", ".odp",
];

impl Kind {
    /// The extractor for a part by its bytes alone (magic numbers).
    pub fn sniff(data: &[u8]) -> Option<Kind> {
        // PDF readers accept the header anywhere in the first 1024 bytes.
        let head = &data[..data.len().min(1024)];
        if head.windows(5).any(|w| w == b"%PDF-") {
            return Some(Kind::Pdf);
        }
        if data.starts_with(&[0x1f, 0x8b]) {
            return Some(Kind::Gzip);
        }
        // A local file header, or the end record of an empty archive.
        if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
            return Some(Kind::Zip);
        }
        None
    }

    /// The extractor for a part, if there is one: by its bytes, else by its
    /// declared type or file name (then a part that is not what it claims
    /// fails to parse, and is unscannable).
    pub fn of(content_type: &str, name: Option<&str>, data: &[u8]) -> Option<Kind> {
        if let Some(kind) = Kind::sniff(data) {
            return Some(kind);
        }
        let name = name.unwrap_or("").trim().to_ascii_lowercase();
        if content_type == "application/pdf" || name.ends_with(".pdf") {
            return Some(Kind::Pdf);
        }
        if ZIP_TYPES.contains(&content_type) || ZIP_NAMES.iter().any(|n| name.ends_with(n)) {
            return Some(Kind::Zip);
        }
        if matches!(content_type, "application/gzip" | "application/x-gzip")
            || content_type.ends_with("+gzip")
            || name.ends_with(".gz")
        {
            return Some(Kind::Gzip);
        }
        None
    }

    /// The text of `data`, or why it cannot be had.
    pub fn extract(self, data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
        match self {
            Kind::Pdf => super::sandbox::pdf(data, limits),
            Kind::Zip => zip_text(data, limits),
            Kind::Gzip => gzip_text(data, limits),
        }
    }
}

fn check_deadline(limits: &Limits) -> Result<(), ExtractError> {
    if Instant::now() >= limits.deadline {
        Err(ExtractError::Deadline)
    } else {
        Ok(())
    }
}

fn push_bounded(out: &mut String, text: &str, limits: &Limits) -> Result<(), ExtractError> {
    if out.len().saturating_add(text.len()) > limits.max_text {
        return Err(ExtractError::TooLarge(limits.max_text));
    }
    out.push_str(text);
    Ok(())
}

fn pdf_error(e: &lopdf::Error, limits: &Limits) -> ExtractError {
    match e {
        lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded { .. }) => {
            ExtractError::TooLarge(limits.max_inflated)
        }
        lopdf::Error::Decryption(_) | lopdf::Error::InvalidPassword => ExtractError::Encrypted,
        _ => ExtractError::Unparseable("not a readable PDF"),
    }
}

/// Decompressed bytes all the streams of one PDF may produce together:
/// lopdf's limit is per stream, and it decodes every object stream while
/// loading, so a small file with many streams could otherwise expand to
/// gigabytes.
const PDF_DOCUMENT_BUDGET: usize = 128 * 1024 * 1024;

/// A content stream (page or form) is parsed into operations that take
/// far more memory than its bytes: it gets less than other streams. Real
/// pages hold a few hundred KiB at most.
const PDF_CONTENT_STREAM_MAX: usize = 2 * 1024 * 1024;

/// A per-stream budget below which a PDF is not worth loading.
const PDF_MIN_STREAM_BUDGET: usize = 64 * 1024;

/// The per-stream decompression limit for `data`: the document budget
/// shared by its streams (counted by their `stream` keyword before
/// anything is decoded), at most [`Limits::max_inflated`]. A PDF with so
/// many streams that each would get almost nothing is too large to scan.
fn pdf_stream_budget(data: &[u8], limits: &Limits) -> Result<usize, ExtractError> {
    let streams = data.windows(6).filter(|w| w == b"stream").count() / 2 + 1;
    let share = PDF_DOCUMENT_BUDGET / streams;
    if share < PDF_MIN_STREAM_BUDGET {
        return Err(ExtractError::TooLarge(PDF_DOCUMENT_BUDGET));
    }
    Ok(share.min(limits.max_inflated))
}

/// The text of a PDF: the text shown on its pages, then every string
/// object (form field values, annotations, bookmarks, document info),
/// which travel in the clear as much as the pages do.
///
/// Encrypted PDFs are unscannable even when they open without a password:
/// we do not rely on decrypting them right. Embedded files and text drawn
/// inside form XObjects are not read, so a PDF holding them is unscannable
/// too, as is one whose pages show no text at all (a scan).
pub fn pdf_text(data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    let per_stream = pdf_stream_budget(data, limits)?;
    let content_limit = per_stream.min(PDF_CONTENT_STREAM_MAX);
    let options = lopdf::LoadOptions {
        max_decompressed_size: Some(per_stream),
        ..Default::default()
    };
    let doc = match lopdf::Document::load_mem_with_options(data, options) {
        Ok(doc) => doc,
        Err(e) => {
            // A document we cannot open that declares encryption is
            // encrypted; say so rather than "cannot be parsed".
            if data.windows(8).any(|w| w == b"/Encrypt") {
                return Err(ExtractError::Encrypted);
            }
            return Err(pdf_error(&e, limits));
        }
    };
    if doc.is_encrypted() || doc.was_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    // lopdf's lenient loading skips objects it cannot read (logging them):
    // what they held would go unscanned, so the document is unscannable.
    if has_skipped_objects(&doc) {
        return Err(ExtractError::Unparseable("objects that cannot be read"));
    }
    check_deadline(limits)?;
    let mut strings = String::new();
    for object in doc.objects.values() {
        if let Some(what) = unread_content(object) {
            return Err(ExtractError::Unsupported(what));
        }
        if let lopdf::Object::Stream(stream) = object {
            let kind = |key: &[u8]| {
                stream
                    .dict
                    .get(key)
                    .and_then(lopdf::Object::as_name)
                    .unwrap_or(b"")
                    .to_vec()
            };
            if kind(b"Type") == b"EmbeddedFile" {
                return Err(ExtractError::Unsupported("embedded files"));
            }
            if kind(b"Subtype") == b"Form" {
                let content = stream
                    .decompressed_content_with_limit(content_limit)
                    .map_err(|e| pdf_error(&e, limits))?;
                let shows_text = lopdf::content::Content::decode(&content)
                    .map_err(|e| pdf_error(&e, limits))?
                    .operations
                    .iter()
                    .any(|op| matches!(op.operator.as_str(), "Tj" | "TJ" | "'" | "\""));
                if shows_text {
                    return Err(ExtractError::Unsupported("text in form XObjects"));
                }
            }
        }
        collect_strings(object, &mut strings, limits)?;
    }
    let mut text = String::new();
    for (number, _) in doc.get_pages() {
        check_deadline(limits)?;
        for chunk in doc.extract_text_chunks_with_limit(&[number], content_limit) {
            let chunk = chunk.map_err(|e| pdf_error(&e, limits))?;
            push_bounded(&mut text, &chunk, limits)?;
        }
        text.push('\n');
    }
    if text.trim().is_empty() {
        return Err(ExtractError::NoText);
    }
    push_bounded(&mut text, &strings, limits)?;
    Ok(text)
}

/// Content a PDF reader shows that is not read here, found by the keys
/// that lead to it rather than by an optional `/Type`: embedded files
/// (`/EF` of a file specification, also without `/Type /EmbeddedFile`),
/// XFA forms (`/XFA` of the AcroForm), rich media and 3D content.
fn unread_content(object: &lopdf::Object) -> Option<&'static str> {
    // Nested dictionaries too (an AcroForm written inline in the
    // catalog), with an explicit stack so nesting cannot overflow ours.
    let mut stack = vec![object];
    while let Some(o) = stack.pop() {
        let dict = match o {
            lopdf::Object::Dictionary(d) => d,
            lopdf::Object::Stream(s) => &s.dict,
            lopdf::Object::Array(items) => {
                stack.extend(items.iter());
                continue;
            }
            _ => continue,
        };
        if dict.has(b"EF") {
            return Some("embedded files");
        }
        if dict.has(b"XFA") {
            return Some("XFA forms");
        }
        if dict.has(b"RichMediaContent") || dict.has(b"3DD") {
            return Some("rich media or 3D content");
        }
        stack.extend(dict.iter().map(|(_, v)| v));
    }
    None
}

/// Whether an object the cross-reference table lists as in use is not in
/// the loaded document.
fn has_skipped_objects(doc: &lopdf::Document) -> bool {
    doc.reference_table
        .entries
        .iter()
        .any(|(id, entry)| match entry {
            lopdf::xref::XrefEntry::Normal { generation, .. } => {
                !doc.objects.contains_key(&(*id, *generation))
            }
            lopdf::xref::XrefEntry::Compressed { .. } => !doc.objects.contains_key(&(*id, 0)),
            _ => false,
        })
}

/// Every string in `object` (dictionaries and arrays walked with an
/// explicit stack, so nesting cannot overflow ours), one per line.
fn collect_strings(
    object: &lopdf::Object,
    out: &mut String,
    limits: &Limits,
) -> Result<(), ExtractError> {
    let mut stack = vec![object];
    while let Some(o) = stack.pop() {
        match o {
            lopdf::Object::String(bytes, _) => {
                let s = pdf_string(bytes);
                push_bounded(out, &s, limits)?;
                out.push('\n');
            }
            lopdf::Object::Array(items) => stack.extend(items.iter()),
            lopdf::Object::Dictionary(d) => stack.extend(d.iter().map(|(_, v)| v)),
            lopdf::Object::Stream(s) => stack.extend(s.dict.iter().map(|(_, v)| v)),
            _ => {}
        }
    }
    Ok(())
}

/// A PDF text string: UTF-16BE or UTF-8 with a byte-order mark, else
/// PDFDocEncoding, read as Latin-1 (they agree on digits and letters).
fn pdf_string(bytes: &[u8]) -> String {
    if let Some(utf16) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = utf16
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    if let Some(utf8) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return String::from_utf8_lossy(utf8).into_owned();
    }
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// The content of a gzip file (every member), decompressed against the
/// budget: text as it is, a PDF or zip through its extractor. A gzip
/// inside it, or binary content, is not read.
pub fn gzip_text(data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    let mut inner = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take((limits.max_inflated as u64).saturating_add(1))
        .read_to_end(&mut inner)
        .map_err(|_| ExtractError::Unparseable("not valid gzip"))?;
    if inner.len() > limits.max_inflated {
        return Err(ExtractError::TooLarge(limits.max_inflated));
    }
    check_deadline(limits)?;
    match Kind::sniff(&inner) {
        Some(Kind::Gzip) => Err(ExtractError::Unsupported("nested compression")),
        Some(kind) => {
            let inner_limits = limits.nested(limits.max_inflated - inner.len())?;
            kind.extract(&inner, &inner_limits)
        }
        None => member_text(&inner),
    }
}

/// The text of content that claims no type (a gzip's content, a member of
/// a plain archive): UTF-8 or UTF-16 text, never binary bytes.
fn member_text(data: &[u8]) -> Result<String, ExtractError> {
    if super::sniff::binary_format(data).is_some() {
        return Err(ExtractError::Unsupported("binary content"));
    }
    let text = super::sniff::decode_text(data);
    if super::sniff::looks_binary(&text) {
        return Err(ExtractError::Unsupported("binary content"));
    }
    if super::sniff::unread_text_format(&text).is_some() {
        return Err(ExtractError::Unsupported("RTF or PostScript content"));
    }
    Ok(text)
}

/// Members of one archive: more than this is not a document.
const MAX_ZIP_MEMBERS: usize = 10_000;

/// Which kind of zip file: what its members mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZipFlavour {
    /// Office Open XML (`[Content_Types].xml`): DOCX, XLSX, PPTX.
    Ooxml,
    /// OpenDocument (`mimetype` member): ODT, ODS, ODP.
    Odf,
    /// Any other archive: every member is a file of its own.
    Plain,
}

/// The text of a zip file: for an Office Open XML (DOCX, XLSX, PPTX) or
/// OpenDocument (ODT, ODS, ODP) file, the character data of every XML
/// part (body, sheets and shared strings, slides, headers, footers,
/// notes, comments, tracked deletions, document properties), a paragraph,
/// cell or row per line; for a plain archive, every member read by what
/// it is (text, or a PDF, zip or gzip through its extractor, nested at
/// most [`Limits::depth`] deep). Member names are text too (a file name
/// can name the patient).
///
/// The archive's declared sizes are not trusted: every member is read
/// through a counter against one budget for the whole file, nested
/// archives included, so a zip bomb (one member, many members sharing one
/// compressed stream, or archives inside archives) stops at the budget.
/// Encrypted members, embedded objects, binary members of a plain
/// archive, and an Office file without its main part are unscannable. An
/// encrypted Office file is not a zip at all (it is an OLE container), so
/// it cannot be parsed. Pictures inside Office documents are not read.
pub fn zip_text(data: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|_| ExtractError::Unparseable("not a zip archive"))?;
    if archive.len() > MAX_ZIP_MEMBERS {
        return Err(ExtractError::Unparseable("too many archive members"));
    }
    let names: Vec<String> = (0..archive.len())
        .map(|i| {
            let member = archive
                .by_index_raw(i)
                .map_err(|_| ExtractError::Unparseable("damaged archive"))?;
            if member.encrypted() {
                return Err(ExtractError::Encrypted);
            }
            member
                .name()
                .map(|n| n.to_string())
                .map_err(|_| ExtractError::Unparseable("damaged archive"))
        })
        .collect::<Result<_, _>>()?;
    let flavour = if names.iter().any(|n| n == "[Content_Types].xml") {
        ZipFlavour::Ooxml
    } else if names.iter().any(|n| n == "mimetype")
        && names
            .iter()
            .any(|n| n == "content.xml" || n == "META-INF/manifest.xml")
    {
        ZipFlavour::Odf
    } else {
        ZipFlavour::Plain
    };
    if flavour == ZipFlavour::Ooxml
        && !names.iter().any(|n| {
            matches!(
                n.as_str(),
                "word/document.xml" | "xl/workbook.xml" | "ppt/presentation.xml"
            )
        })
    {
        return Err(ExtractError::Unparseable(
            "an Office file without its main part",
        ));
    }
    let mut budget = limits.max_inflated;
    let mut text = String::new();
    for name in &names {
        push_bounded(&mut text, name, limits)?;
        text.push('\n');
    }
    for (i, name) in names.iter().enumerate() {
        check_deadline(limits)?;
        if name.ends_with('/') {
            continue;
        }
        let office = flavour != ZipFlavour::Plain;
        // Relationship parts are XML too.
        let is_xml = name.ends_with(".xml") || (office && name.ends_with(".rels"));
        if office {
            // OpenDocument keeps an embedded object's own XML in
            // `Object N/` (read) and a picture of it in
            // `ObjectReplacements/` (a picture, like the others).
            if name.contains("/embeddings/") || name.starts_with("embeddings/") {
                return Err(ExtractError::Unsupported("embedded objects"));
            }
            if flavour == ZipFlavour::Odf && name == "mimetype" {
                continue;
            }
        }
        let member = archive
            .by_index(i)
            .map_err(|_| ExtractError::Unparseable("damaged archive"))?;
        let mut content = Vec::new();
        // One byte more than the budget tells "exactly at the budget" from
        // "over it".
        member
            .take((budget as u64).saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|_| ExtractError::Unparseable("damaged archive member"))?;
        if content.len() > budget {
            return Err(ExtractError::TooLarge(limits.max_inflated));
        }
        budget -= content.len();
        if office && !is_xml {
            // A picture is only a picture; any other part (a PDF or text
            // file slipped in beside a decoy main part, an altChunk, a
            // binary object) is not read, so the file is unscannable.
            if is_picture(name, &content) {
                continue;
            }
            return Err(ExtractError::Unsupported(
                "parts that are neither XML nor pictures",
            ));
        }
        if office || (is_xml && Kind::sniff(&content).is_none()) {
            xml_text(&content, &mut text, limits)?;
        } else {
            let inner_text = match Kind::sniff(&content) {
                Some(kind) => kind.extract(&content, &limits.nested(budget)?)?,
                None => member_text(&content)?,
            };
            push_bounded(&mut text, &inner_text, limits)?;
        }
        text.push('\n');
    }
    Ok(text)
}

/// Whether an Office or OpenDocument member is a picture: named as one,
/// and its bytes start as that kind of picture does.
fn is_picture(name: &str, data: &[u8]) -> bool {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let magic: &[&[u8]] = match ext.as_str() {
        "png" => &[b"\x89PNG\r\n\x1a\n"],
        "jpg" | "jpeg" | "jfif" => &[b"\xff\xd8\xff"],
        "gif" => &[b"GIF87a", b"GIF89a"],
        "bmp" | "dib" => &[b"BM"],
        "tif" | "tiff" | "wdp" | "jxr" => &[b"II*\0", b"MM\0*", b"II\xbc"],
        // EMF: record type 1 (EMR_HEADER); WMF: placeable or standard.
        "emf" => &[b"\x01\0\0\0"],
        "wmf" => &[b"\xd7\xcd\xc6\x9a", b"\x01\0\x09\0", b"\x02\0\x09\0"],
        "svm" => &[b"VCLMTF"],
        _ => return false,
    };
    magic.iter().any(|m| data.starts_with(m))
}

/// Appends the character data of one XML part to `out`: runs join (a
/// number split over runs stays one number); paragraphs, headings, table
/// rows and cells, spreadsheet cells and shared strings end a line (in
/// WordprocessingML, SpreadsheetML, PresentationML and OpenDocument);
/// tabs and breaks are white space. quick-xml
/// expands no entities of a DTD, so there is no entity bomb.
fn xml_text(xml: &[u8], out: &mut String, limits: &Limits) -> Result<(), ExtractError> {
    use quick_xml::events::Event;
    let xml = std::str::from_utf8(xml).map_err(|_| ExtractError::Unparseable("not UTF-8 XML"))?;
    let mut reader = quick_xml::Reader::from_str(xml);
    let bad = |_| ExtractError::Unparseable("malformed XML");
    let mut events = 0u32;
    loop {
        events = events.wrapping_add(1);
        if events % 4096 == 0 {
            check_deadline(limits)?;
        }
        match reader.read_event().map_err(bad)? {
            Event::Text(t) => push_bounded(out, &t.xml10_content(), limits)?,
            Event::CData(t) => push_bounded(out, &t.xml10_content(), limits)?,
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(bad)? {
                    Some(c) => c,
                    None => match r.as_ref() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        // Not a predefined entity: a DTD would have to
                        // define it, and we expand none.
                        _ => return Err(ExtractError::Unparseable("undefined XML entity")),
                    },
                };
                push_bounded(out, c.encode_utf8(&mut [0; 4]), limits)?;
            }
            Event::End(e) => {
                if matches!(
                    e.local_name().as_ref(),
                    "p" | "h" | "tr" | "tc" | "c" | "si" | "row" | "table-row" | "table-cell"
                ) {
                    out.push('\n');
                }
            }
            Event::Empty(e) => match e.local_name().as_ref() {
                "tab" => out.push('\t'),
                "s" => out.push(' '),
                "br" | "cr" | "line-break" => out.push('\n'),
                _ => {}
            },
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::detectors::{Detector, Detectors};
    use crate::policy::fixtures;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_inflated: 1 << 20,
            max_text: 1 << 20,
            deadline: Instant::now() + Duration::from_secs(30),
            depth: MAX_CONTAINER_DEPTH,
        }
    }

    fn ssns(text: &str) -> usize {
        Detectors::new().count(Detector::UsSsn, text)
    }

    #[test]
    fn ssn_in_a_pdf_page_with_a_compressed_content_stream() {
        let pdf = fixtures::pdf("Patient SSN 123-45-6789", None);
        let text = pdf_text(&pdf, &limits()).unwrap();
        assert_eq!(ssns(&text), 1, "{text:?}");
        // Rewritten by qpdf: object streams and a cross-reference stream.
        let pdf = fixtures::pdf_object_streams("Patient SSN 123-45-6789");
        assert!(
            pdf.windows(8).any(|w| w == b"/ObjStm "),
            "qpdf made object streams"
        );
        let text = pdf_text(&pdf, &limits()).unwrap();
        assert_eq!(ssns(&text), 1, "{text:?}");
        assert_eq!(
            Kind::of("application/octet-stream", None, &pdf),
            Some(Kind::Pdf)
        );
    }

    /// From review: lopdf's limit is per stream and it decodes every
    /// object stream while loading, so thousands of streams in a small
    /// file could expand to gigabytes. They share one document budget; a
    /// PDF whose streams would each get almost nothing is unscannable
    /// before anything is decoded.
    #[test]
    fn many_streams_share_one_document_budget() {
        let mut pdf = b"%PDF-1.4\n".to_vec();
        for i in 1..=2100 {
            pdf.extend_from_slice(
                format!("{i} 0 obj<</Length 1>>stream\nx\nendstream\nendobj\n").as_bytes(),
            );
        }
        assert_eq!(
            pdf_text(&pdf, &limits()),
            Err(ExtractError::TooLarge(PDF_DOCUMENT_BUDGET))
        );
        let few = b"%PDF-1.4\n1 0 obj<</Length 1>>stream\nx\nendstream\nendobj\n";
        let budget = pdf_stream_budget(few, &limits()).unwrap();
        assert!(budget <= limits().max_inflated && budget >= PDF_MIN_STREAM_BUDGET);
    }

    #[test]
    fn encrypted_pdfs_are_unscannable_with_or_without_a_user_password() {
        let plain = fixtures::pdf("Patient SSN 123-45-6789", None);
        for args in [
            &["--encrypt", "user", "owner", "256", "--"][..],
            &["--allow-weak-crypto", "--encrypt", "", "owner", "128", "--"][..],
            &["--allow-weak-crypto", "--encrypt", "u", "o", "40", "--"][..],
        ] {
            let pdf = fixtures::qpdf(&plain, args);
            assert_eq!(
                pdf_text(&pdf, &limits()),
                Err(ExtractError::Encrypted),
                "{args:?}"
            );
        }
    }

    /// A file specification whose embedded file stream has no `/Type`
    /// (optional in the spec; readers find it through `/EF`) and an XFA
    /// form: both unscannable.
    #[test]
    fn embedded_files_without_a_type_and_xfa_forms_are_unscannable() {
        let page = b"BT /F1 12 Tf 72 712 Td (Clinic letter) Tj ET";
        for (extra, why) in [
            (
                "/Names << /EmbeddedFiles << /Names [(labs.txt) 6 0 R] >> >>",
                "embedded files",
            ),
            ("/AcroForm << /Fields [] /XFA 7 0 R >>", "XFA forms"),
        ] {
            let mut content = format!("<< /Length {} >>\nstream\n", page.len()).into_bytes();
            content.extend_from_slice(page);
            content.extend_from_slice(b"\nendstream");
            let file = b"<< /Length 22 >>\nstream\nPatient SSN 123-45-6789\nendstream".to_vec();
            let objs: Vec<Vec<u8>> = vec![
                format!("<< /Type /Catalog /Pages 2 0 R {extra} >>").into_bytes(),
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
                content,
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
                if why == "embedded files" {
                    b"<< /Type /Filespec /F (labs.txt) /EF << /F 7 0 R >> >>".to_vec()
                } else {
                    b"<< >>".to_vec()
                },
                file,
            ];
            let mut pdf = b"%PDF-1.7\n".to_vec();
            let mut offsets = Vec::new();
            for (i, o) in objs.iter().enumerate() {
                offsets.push(pdf.len());
                pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
                pdf.extend_from_slice(o);
                pdf.extend_from_slice(b"\nendobj\n");
            }
            let xref = pdf.len();
            pdf.extend_from_slice(
                format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes(),
            );
            for o in offsets {
                pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
            }
            pdf.extend_from_slice(
                format!(
                    "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                    objs.len() + 1
                )
                .as_bytes(),
            );
            assert_eq!(
                pdf_text(&pdf, &limits()),
                Err(ExtractError::Unsupported(why))
            );
        }
    }

    /// lopdf's lenient loading skips an object it cannot read; whatever
    /// it held (form values, annotations) would go unscanned, so the
    /// document is unscannable, not the text of what was left.
    #[test]
    fn a_pdf_with_an_object_that_cannot_be_read_is_unscannable() {
        let pdf = fixtures::pdf("Patient SSN 123-45-6789", None);
        assert!(pdf_text(&pdf, &limits()).is_ok());
        let at = pdf
            .windows(14)
            .position(|w| w == b"/Type /Font /S" || w == b"/Type/Font/Sub")
            .expect("a font object");
        let start = pdf[..at]
            .windows(3)
            .rposition(|w| w == b"obj")
            .expect("obj");
        let mut broken = pdf.clone();
        // `obj <<` becomes `obj <)`: the dictionary cannot be parsed.
        broken[start + 5] = b')';
        assert_eq!(
            pdf_text(&broken, &limits()),
            Err(ExtractError::Unparseable("objects that cannot be read"))
        );
    }

    #[test]
    fn pdfs_that_cannot_be_read_completely_are_errors_not_empty_text() {
        // A page that only paints: a scan, as far as text goes.
        let scan = fixtures::pdf("", Some("q 0 0 1 rg 0 0 100 100 re f Q"));
        assert_eq!(pdf_text(&scan, &limits()), Err(ExtractError::NoText));
        // Cut short, or not a PDF at all.
        let pdf = fixtures::pdf("Patient SSN 123-45-6789", None);
        assert!(pdf_text(&pdf[..pdf.len() / 2], &limits()).is_err());
        assert!(matches!(
            pdf_text(b"%PDF-1.4\nnot really", &limits()),
            Err(ExtractError::Unparseable(_) | ExtractError::NoText)
        ));
        // A flate bomb in the page's content stream: 8 MiB of spaces
        // against a 1 MiB budget.
        let bomb = fixtures::pdf_bomb(8);
        assert!(bomb.len() < 100_000, "the bomb is small: {}", bomb.len());
        assert_eq!(
            pdf_text(&bomb, &limits()),
            Err(ExtractError::TooLarge(1 << 20))
        );
        // The deadline.
        let past = Limits {
            deadline: Instant::now(),
            ..limits()
        };
        assert_eq!(pdf_text(&pdf, &past), Err(ExtractError::Deadline));
    }

    #[test]
    fn form_field_values_in_a_pdf_are_read() {
        // A filled-in form: the value lives in the field, not on the page.
        let pdf = fixtures::pdf("Intake form", None);
        let at = pdf
            .windows(15)
            .position(|w| w == b"/Pages 2 0 R >>")
            .expect("the catalog");
        let mut edited = pdf[..at + 12].to_vec();
        edited.extend_from_slice(
            b" /AcroForm << /Fields [<< /FT /Tx /T (ssn) /V (123-45-6789) >>] >>",
        );
        edited.extend_from_slice(&pdf[at + 12..]);
        // qpdf repairs the offsets the edit moved.
        let pdf = fixtures::qpdf(&edited, &[]);
        let text = pdf_text(&pdf, &limits()).unwrap();
        assert_eq!(ssns(&text), 1, "{text:?}");
    }

    #[test]
    fn gzip_content_is_read_within_the_budget() {
        let gz = |script: &str| {
            fixtures::python(
                &format!("import gzip,sys\nsys.stdout.buffer.write(gzip.compress({script}))"),
                &[],
            )
        };
        let text = gzip_text(&gz("b'{\"note\": \"SSN 123-45-6789\"}'"), &limits()).unwrap();
        assert_eq!(ssns(&text), 1);
        assert_eq!(
            gzip_text(&gz("b' ' * (8 << 20)"), &limits()),
            Err(ExtractError::TooLarge(1 << 20))
        );
        assert_eq!(
            gzip_text(&gz("gzip.compress(b'x')"), &limits()),
            Err(ExtractError::Unsupported("nested compression"))
        );
        assert_eq!(
            gzip_text(&gz("b'\\x00\\x01\\x02 binary'"), &limits()),
            Err(ExtractError::Unsupported("binary content"))
        );
        // A zip inside the gzip is opened, within what is left of the budget.
        let zip = fixtures::zip(&[("notes.txt", b"SSN 123-45-6789")]);
        let text = gzip_text(
            &fixtures::python(
                "import gzip,sys\nsys.stdout.buffer.write(gzip.compress(bytes.fromhex(sys.argv[1])))",
                &[&hex::encode(&zip)],
            ),
            &limits(),
        )
        .unwrap();
        assert_eq!(ssns(&text), 1);
    }

    #[test]
    fn ssn_split_over_docx_runs_and_in_headers() {
        let body = "<w:p><w:r><w:t>SSN 123-</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t>45</w:t></w:r>\
                    <w:r><w:t xml:space=\"preserve\">&#45;6789</w:t></w:r></w:p>";
        let docx = fixtures::docx(body, &[]);
        let text = zip_text(&docx, &limits()).unwrap();
        assert_eq!(ssns(&text), 1, "{text:?}");
        // Paragraphs do not join.
        let docx = fixtures::docx(
            "<w:p><w:r><w:t>123-45</w:t></w:r></w:p><w:p><w:r><w:t>-6789</w:t></w:r></w:p>",
            &[],
        );
        assert_eq!(ssns(&zip_text(&docx, &limits()).unwrap()), 0);
        // A header part is read too.
        let header = "<w:hdr xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:p><w:r><w:t>SSN 123-45-6789</w:t></w:r></w:p></w:hdr>";
        let docx = fixtures::docx("<w:p/>", &[("word/header1.xml", header)]);
        assert_eq!(ssns(&zip_text(&docx, &limits()).unwrap()), 1);
        assert_eq!(
            Kind::of("application/octet-stream", Some("letter.docx"), &docx),
            Some(Kind::Zip)
        );
    }

    /// A decoy main part makes a zip an Office file; whatever else it
    /// carries that is neither XML nor a picture is not read, so the file
    /// is unscannable, never the text of the decoy alone.
    #[test]
    fn office_parts_that_are_neither_xml_nor_pictures_are_unscannable() {
        for (name, content) in [
            ("notes.txt", "Patient SSN 123-45-6789"),
            ("word/afchunk.htm", "<p>SSN 123-45-6789</p>"),
            ("word/labs.pdf", "%PDF-1.4 SSN 123-45-6789"),
            ("word/media/image1.png", "SSN 123-45-6789 (not a PNG)"),
        ] {
            let docx = fixtures::docx("<w:p><w:r><w:t>Hello</w:t></w:r></w:p>", &[(name, content)]);
            assert_eq!(
                zip_text(&docx, &limits()),
                Err(ExtractError::Unsupported(
                    "parts that are neither XML nor pictures"
                )),
                "{name}"
            );
        }
        let docx = fixtures::docx("<w:p><w:r><w:t>Hello</w:t></w:r></w:p>", &[]);
        assert!(zip_text(&docx, &limits()).is_ok());
    }

    #[test]
    fn docx_bombs_and_broken_archives_are_errors() {
        // 8 MiB of XML deflated to a few kilobytes, against a 1 MiB budget.
        let bomb = fixtures::docx_bomb(8);
        assert!(bomb.len() < 100_000, "the bomb is small: {}", bomb.len());
        assert_eq!(
            zip_text(&bomb, &limits()),
            Err(ExtractError::TooLarge(1 << 20))
        );
        let docx = fixtures::docx("<w:p><w:r><w:t>x</w:t></w:r></w:p>", &[]);
        assert!(matches!(
            zip_text(&docx[..docx.len() - 30], &limits()),
            Err(ExtractError::Unparseable(_))
        ));
        // An encrypted Word file is an OLE container, not a zip.
        assert!(matches!(
            zip_text(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest", &limits()),
            Err(ExtractError::Unparseable(_))
        ));
        // An Office package without its main part, and one with an
        // embedded object.
        let docx = fixtures::zip(&[("[Content_Types].xml", b"<Types/>")]);
        assert_eq!(
            zip_text(&docx, &limits()),
            Err(ExtractError::Unparseable(
                "an Office file without its main part"
            ))
        );
        let docx = fixtures::docx("<w:p/>", &[("word/embeddings/oleObject1.bin", "x")]);
        assert_eq!(
            zip_text(&docx, &limits()),
            Err(ExtractError::Unsupported("embedded objects"))
        );
        // Malformed XML and an entity no DTD may define for us.
        let docx = fixtures::docx("<w:p><w:t>&bomb;</w:t></w:p>", &[]);
        assert!(matches!(
            zip_text(&docx, &limits()),
            Err(ExtractError::Unparseable(_))
        ));
    }

    /// From review: a zip that is not an Office file was "cannot be
    /// parsed"; its members are read by what they are, names included,
    /// within one budget and a nesting limit.
    #[test]
    fn plain_zip_archives_are_read_member_by_member() {
        let pdf = fixtures::pdf("SSN 123-45-6789", None);
        let inner = fixtures::zip(&[("deep/notes.txt", b"SSN 123-45-6789")]);
        for (what, members) in [
            ("a text file", vec![("notes.txt", &b"SSN 123-45-6789"[..])]),
            (
                "a text file after others",
                vec![
                    ("a.txt", &b"hello"[..]),
                    ("dir/", &b""[..]),
                    ("b.csv", b"x,123-45-6789"),
                ],
            ),
            (
                "UTF-16 text",
                vec![(
                    "n.txt",
                    &b"\xff\xfe1\x002\x003\x00-\x004\x005\x00-\x006\x007\x008\x009\x00"[..],
                )],
            ),
            ("a PDF", vec![("labs.pdf", &pdf[..])]),
            ("a PDF with a misleading name", vec![("labs.txt", &pdf[..])]),
            ("a zip in the zip", vec![("more.zip", &inner[..])]),
            (
                "the SSN in a member name",
                vec![("Jane SSN 123-45-6789.txt", &b"hello"[..])],
            ),
            (
                "XML",
                vec![("r.xml", &b"<r><ssn>123-</ssn><x>45-6789</x></r>"[..])],
            ),
        ] {
            let zip = fixtures::zip(&members);
            assert_eq!(Kind::sniff(&zip), Some(Kind::Zip), "{what}");
            let text = zip_text(&zip, &limits()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(ssns(&text), 1, "{what}: {text:?}");
        }
        for (what, members, err) in [
            (
                "a picture",
                vec![("x.png", &b"\x89PNG\r\n\x1a\nrest"[..])],
                ExtractError::Unsupported("binary content"),
            ),
            (
                "binary bytes after text",
                vec![("a.txt", &b"hello"[..]), ("b.bin", b"\x00\x01\x02\x03")],
                ExtractError::Unsupported("binary content"),
            ),
            (
                "RTF",
                vec![("a.rtf", &b"{\\rtf1 123-{\\b 45}-6789}"[..])],
                ExtractError::Unsupported("RTF or PostScript content"),
            ),
        ] {
            assert_eq!(
                zip_text(&fixtures::zip(&members), &limits()),
                Err(err),
                "{what}"
            );
        }
        // Nested past the depth limit, at each depth.
        let mut zip = fixtures::zip(&[("notes.txt", b"SSN 123-45-6789")]);
        for level in 1..=MAX_CONTAINER_DEPTH + 1 {
            zip = fixtures::zip(&[("inner.zip", &zip)]);
            let r = zip_text(&zip, &limits());
            if level <= MAX_CONTAINER_DEPTH {
                assert_eq!(ssns(&r.unwrap()), 1, "level {level}");
            } else {
                assert_eq!(
                    r,
                    Err(ExtractError::Unsupported("archives nested too deep"))
                );
            }
        }
        // Two members of 600 KiB each against one 1 MiB budget; and a bomb
        // one level down.
        let half = vec![b' '; 600 << 10];
        let zip = fixtures::zip(&[("a.txt", &half), ("b.txt", &half)]);
        assert_eq!(
            zip_text(&zip, &limits()),
            Err(ExtractError::TooLarge(1 << 20))
        );
        let zip = fixtures::zip(&[
            ("a.txt", &half),
            ("in.zip", &fixtures::zip(&[("b.txt", &half)])),
        ]);
        assert!(matches!(
            zip_text(&zip, &limits()),
            Err(ExtractError::TooLarge(_))
        ));
    }

    #[test]
    fn spreadsheets_slides_and_opendocument_files_are_read() {
        let ct: &[u8] = b"<Types/>";
        let xlsx = fixtures::zip(&[
            ("[Content_Types].xml", ct),
            ("xl/workbook.xml", b"<workbook/>"),
            (
                "xl/sharedStrings.xml",
                b"<sst><si><t>SSN</t></si><si><r><t>123-45</t></r><r><t>-6789</t></r></si></sst>",
            ),
            ("xl/worksheets/sheet1.xml", b"<worksheet><sheetData><row><c t=\"s\"><v>0</v></c><c><v>123</v></c></row></sheetData></worksheet>"),
        ]);
        let pptx = fixtures::zip(&[
            ("[Content_Types].xml", ct),
            ("ppt/presentation.xml", b"<p:presentation xmlns:p=\"p\"/>"),
            ("ppt/slides/slide1.xml", b"<p:sld xmlns:p=\"p\" xmlns:a=\"a\"><a:p><a:r><a:t>SSN 123-45</a:t></a:r><a:r><a:t>-6789</a:t></a:r></a:p></p:sld>"),
        ]);
        let odt = fixtures::zip(&[
            ("mimetype", b"application/vnd.oasis.opendocument.text"),
            ("content.xml", b"<office:document-content xmlns:office=\"o\" xmlns:text=\"t\"><text:p>SSN 123-<text:span>45</text:span>-6789</text:p></office:document-content>"),
            ("Pictures/logo.png", b"\x89PNG\r\n\x1a\n"),
        ]);
        for (what, file) in [("xlsx", xlsx), ("pptx", pptx), ("odt", odt)] {
            let text = zip_text(&file, &limits()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(ssns(&text), 1, "{what}: {text:?}");
        }
        // Cells and shared strings do not join into one number.
        let xlsx = fixtures::zip(&[
            ("[Content_Types].xml", ct),
            ("xl/workbook.xml", b"<workbook/>"),
            (
                "xl/sharedStrings.xml",
                b"<sst><si><t>123-45</t></si><si><t>-6789</t></si></sst>",
            ),
        ]);
        assert_eq!(ssns(&zip_text(&xlsx, &limits()).unwrap()), 0);
        let xlsx = fixtures::zip(&[
            ("[Content_Types].xml", ct),
            ("xl/workbook.xml", b"<workbook/>"),
            ("xl/embeddings/oleObject1.bin", b"x"),
        ]);
        assert_eq!(
            zip_text(&xlsx, &limits()),
            Err(ExtractError::Unsupported("embedded objects"))
        );
        for (ct, name) in [
            (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                None,
            ),
            ("application/zip", None),
            ("application/octet-stream", Some("x.ODS")),
        ] {
            assert_eq!(Kind::of(ct, name, b"not a zip"), Some(Kind::Zip), "{ct}");
        }
    }
}
