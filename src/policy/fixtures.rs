//! Documents for the content-scan tests, made by tools we did not write:
//! Python's `zlib` and `zipfile` write them, qpdf rewrites (object and
//! cross-reference streams) and encrypts them. Both are test packages
//! (`deploy/lib.sh`).

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs a Python script with `args`, returns its standard output.
pub fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (a test package)");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A one-page PDF whose page shows `text` (Helvetica, WinAnsi) from a
/// Flate-compressed content stream; `raw_content` replaces the text
/// operators when given (e.g. a page that only paints).
pub fn pdf(text: &str, raw_content: Option<&str>) -> Vec<u8> {
    const SCRIPT: &str = r#"
import sys, zlib
text, raw = sys.argv[1], sys.argv[2]
if raw.startswith("SPACES:"):
    content = b" " * (int(raw[7:]) << 20)
else:
    content = raw.encode() if raw else b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"
comp = zlib.compress(content)
objs = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(comp) + comp + b"\nendstream",
]
out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
offsets = []
for i, o in enumerate(objs, 1):
    offsets.append(len(out))
    out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
xref = len(out)
out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
for off in offsets:
    out += b"%010d 00000 n \n" % off
out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
sys.stdout.buffer.write(out)
"#;
    python(SCRIPT, &[text, raw_content.unwrap_or("")])
}

/// A PDF whose page content stream is `mib` MiB of spaces, deflated to a
/// few kilobytes (a flate bomb for the limits).
pub fn pdf_bomb(mib: usize) -> Vec<u8> {
    pdf("", Some(&format!("SPACES:{mib}")))
}

/// `pdf` passed through `qpdf` with `args` (e.g. `--encrypt ...`).
pub fn qpdf(pdf: &[u8], args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.pdf");
    let output = dir.path().join("out.pdf");
    std::fs::write(&input, pdf).expect("write the input PDF");
    let out = Command::new("qpdf")
        .args(args)
        .arg(&input)
        .arg(&output)
        .stdin(Stdio::null())
        .output()
        .expect("qpdf runs (a test package: apt-get install qpdf)");
    // 3 is "succeeded with warnings".
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qpdf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&output).expect("qpdf wrote the output PDF")
}

/// The same PDF rewritten by qpdf with object streams and a
/// cross-reference stream (what current writers produce).
pub fn pdf_object_streams(text: &str) -> Vec<u8> {
    qpdf(
        &pdf(text, None),
        &["--object-streams=generate", "--compress-streams=y"],
    )
}

/// A DOCX (Python's `zipfile`, deflated) whose `word/document.xml` body is
/// `body_xml` (inside `<w:body>`); `extra` adds members (name, content).
pub fn docx(body_xml: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    const SCRIPT: &str = r#"
import io, sys, zipfile
body = sys.argv[1]
extra = sys.argv[2:]
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("[Content_Types].xml", '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
    z.writestr("_rels/.rels", '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>')
    z.writestr("word/document.xml", '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="%s"><w:body>%s</w:body></w:document>' % (W, body))
    for i in range(0, len(extra), 2):
        z.writestr(extra[i], extra[i + 1])
sys.stdout.buffer.write(buf.getvalue())
"#;
    let mut args = vec![body_xml];
    for (name, content) in extra {
        args.push(name);
        args.push(content);
    }
    python(SCRIPT, &args)
}

/// A DOCX whose `word/document.xml` is `mib` MiB of spaces around one
/// paragraph: a few hundred kilobytes deflated (a zip bomb for the limits).
pub fn docx_bomb(mib: usize) -> Vec<u8> {
    const SCRIPT: &str = r#"
import io, sys, zipfile
n = int(sys.argv[1]) << 20
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
doc = ('<w:document xmlns:w="%s"><w:body><w:p><w:r><w:t>SSN 123-45-6789</w:t></w:r></w:p>' % W) + " " * n + "</w:body></w:document>"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("word/document.xml", doc)
sys.stdout.buffer.write(buf.getvalue())
"#;
    python(SCRIPT, &[&mib.to_string()])
}

/// Base64 with line breaks, as MIME writes it (Python's `base64`).
pub fn base64_mime(data: &[u8]) -> String {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import base64,sys; sys.stdout.write(base64.encodebytes(sys.stdin.buffer.read()).decode().replace('\\n','\\r\\n'))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 ends");
    String::from_utf8(out.stdout).expect("base64 is ASCII")
}

/// A multipart/mixed message with a text body and one attachment
/// (`content_type`, file name, base64 of `data`).
pub fn with_attachment(body: &str, content_type: &str, name: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: a@clinic.example\r\nTo: b@x.example\r\nSubject: results\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         {body}\r\n--b1\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}--b1--\r\n",
        base64_mime(data)
    )
    .into_bytes()
}

/// A zip archive (Python's `zipfile`, deflated) of `members` (name,
/// content), in order.
pub fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    const SCRIPT: &str = r#"
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for line in sys.stdin.read().splitlines():
        name, content = line.split(" ")
        z.writestr(bytes.fromhex(name).decode(), bytes.fromhex(content))
sys.stdout.buffer.write(buf.getvalue())
"#;
    let input: String = members
        .iter()
        .map(|(name, content)| format!("{} {}\n", hex::encode(name), hex::encode(content)))
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("python3 ends");
    writer.join().expect("writer").expect("write to python3");
    assert!(out.status.success(), "python3 zip failed");
    out.stdout
}
