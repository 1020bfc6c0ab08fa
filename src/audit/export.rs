//! `sealgate audit export`, and reading rows back for `probe` and tests.

use std::io::Write;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::chain::{COLUMNS, StoredRow, format_ts};
use super::db::Db;
use super::error::AuditError;
use super::verify::PAGE;

/// Output format of [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row, CRLF line ends. An empty field is
    /// SQL NULL; an empty string is written as `""`. A value a spreadsheet
    /// would run as a formula (first character `=`, `+`, `-`, `@`, tab or
    /// CR, per OWASP's CSV injection advice), or that starts with `'`, is
    /// written quoted with a `'` in front; strip one leading `'` from a
    /// field to get the stored value back and re-hash the rows exactly.
    Csv,
    /// One JSON object: `{"format", "rows": [...], "row_count",
    /// "chain_head": {"seq", "row_hash"}}`; `evidence` stays the exact
    /// stored text, so the rows can be re-hashed exactly.
    Json,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<ExportFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            other => Err(format!("unknown export format {other:?}: use csv or json")),
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows written.
    pub rows: u64,
    /// Sequence number of the first row written.
    pub first_seq: Option<i64>,
    /// Sequence number of the last row written.
    pub last_seq: Option<i64>,
    /// `row_hash` of the last row written: the chain head at export time.
    pub head: Option<String>,
}

/// Writes the audit rows to `out`, oldest first.
///
/// With `since`, the export starts at the first row (by `seq`) whose
/// timestamp is at or after `since` and runs to the head without skipping
/// any row, so the exported rows form an unbroken piece of the chain that
/// can be checked on its own; after a database outage a few of them may be
/// timestamped slightly before `since`. The last row's `row_hash` (also in
/// the returned summary, and as `chain_head` in JSON) is the chain head.
pub async fn export(
    database_url: &str,
    format: ExportFormat,
    since: Option<DateTime<Utc>>,
    out: &mut (dyn Write + Send),
) -> Result<ExportSummary, AuditError> {
    let db = Db::open(database_url).await?;
    let result = export_rows(&db, format, since, out).await;
    db.close().await;
    result
}

async fn export_rows(
    db: &Db,
    format: ExportFormat,
    since: Option<DateTime<Utc>>,
    out: &mut (dyn Write + Send),
) -> Result<ExportSummary, AuditError> {
    let mut summary = ExportSummary {
        rows: 0,
        first_seq: None,
        last_seq: None,
        head: None,
    };
    let mut after = match since {
        None => Some(i64::MIN),
        Some(ts) => db
            .first_seq_since(&format_ts(&ts))
            .await?
            .map(|seq| seq.saturating_sub(1)),
    };

    match format {
        ExportFormat::Csv => write_csv_record(out, COLUMNS.iter().map(|c| Some(*c)))?,
        ExportFormat::Json => out
            .write_all(b"{\"format\":\"sealgate-audit-export/1\",\"rows\":[")
            .map_err(AuditError::Output)?,
    }

    while let Some(from) = after {
        let rows = db.page(from, PAGE).await?;
        after = rows.last().map(|r| r.seq);
        for row in &rows {
            match format {
                ExportFormat::Csv => {
                    let values = row.values();
                    write_csv_record(out, values.iter().map(|v| v.as_deref()))?;
                }
                ExportFormat::Json => {
                    if summary.rows > 0 {
                        out.write_all(b",").map_err(AuditError::Output)?;
                    }
                    out.write_all(b"\n").map_err(AuditError::Output)?;
                    serde_json::to_writer(&mut *out, row)
                        .map_err(|e| AuditError::Output(e.into()))?;
                }
            }
            summary.rows += 1;
            summary.first_seq.get_or_insert(row.seq);
            summary.last_seq = Some(row.seq);
            summary.head = Some(row.row_hash.clone());
        }
    }

    if format == ExportFormat::Json {
        let head = match (summary.last_seq, &summary.head) {
            (Some(seq), Some(hash)) => serde_json::json!({"seq": seq, "row_hash": hash}),
            _ => serde_json::Value::Null,
        };
        write!(
            out,
            "\n],\"row_count\":{},\"chain_head\":{head}}}\n",
            summary.rows
        )
        .map_err(AuditError::Output)?;
    }
    out.flush().map_err(AuditError::Output)?;
    Ok(summary)
}

/// One CSV record: fields with a comma, quote, CR or LF, and empty
/// strings, are quoted; `None` (NULL) is an empty unquoted field; a field
/// that could run as a formula is defused with a leading `'`.
fn write_csv_record<'a>(
    out: &mut (dyn Write + Send),
    fields: impl Iterator<Item = Option<&'a str>>,
) -> Result<(), AuditError> {
    let mut line = String::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        match field {
            None => {}
            Some(s) if starts_like_formula(s) => {
                line.push_str("\"'");
                line.push_str(&s.replace('"', "\"\""));
                line.push('"');
            }
            Some(s) if s.is_empty() || s.contains([',', '"', '\r', '\n']) => {
                line.push('"');
                line.push_str(&s.replace('"', "\"\""));
                line.push('"');
            }
            Some(s) => line.push_str(s),
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes()).map_err(AuditError::Output)
}

/// Whether a spreadsheet could take the cell for a formula (or it already
/// starts with the `'` that marks a defused one, which keeps the escape
/// reversible). Sender addresses are chosen by whoever sends mail through
/// the gateway, so `=HYPERLINK(...)@x.test` is a real possibility.
fn starts_like_formula(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r', '\''])
}

/// Every audit row for one spool id, oldest first.
pub async fn rows_for_queue_id(
    database_url: &str,
    queue_id: &str,
) -> Result<Vec<StoredRow>, AuditError> {
    let db = Db::open(database_url).await?;
    let result = db.rows_for_queue_id(queue_id).await;
    db.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let mut out = Vec::new();
        let fields = [
            Some("plain"),
            None,
            Some(""),
            Some("a,b"),
            Some("say \"hi\""),
            Some("two\r\nlines"),
        ];
        write_csv_record(&mut out, fields.into_iter()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,,\"\",\"a,b\",\"say \"\"hi\"\"\",\"two\r\nlines\"\r\n"
        );
    }

    fn csv_cell(value: &str) -> String {
        let mut out = Vec::new();
        write_csv_record(&mut out, [Some(value)].into_iter()).unwrap();
        let mut s = String::from_utf8(out).unwrap();
        assert!(s.ends_with("\r\n"));
        s.truncate(s.len() - 2);
        s
    }

    #[test]
    fn csv_defuses_every_formula_start() {
        let cases = [
            ("=1+1", "\"'=1+1\""),
            ("+1", "\"'+1\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\t=1", "\"'\t=1\""),
            ("\r=1", "\"'\r=1\""),
            ("'=1", "\"''=1\""),
            (
                "=HYPERLINK(\"http://evil.test\",\"x\")@x.test",
                "\"'=HYPERLINK(\"\"http://evil.test\"\",\"\"x\"\")@x.test\"",
            ),
        ];
        for (value, want) in cases {
            let got = csv_cell(value);
            assert_eq!(got, want, "{value:?}");
            // Reversible: unquote, strip the one `'`, get the value back.
            let inner = &got[1..got.len() - 1];
            let unquoted = inner.replace("\"\"", "\"");
            assert_eq!(unquoted.strip_prefix('\'').unwrap(), value);
        }
    }

    #[test]
    fn csv_leaves_harmless_cells_alone() {
        // Dangerous characters anywhere but first are not a formula.
        for value in [
            "a=b",
            "patient@x.test",
            "2025-03-01T12:00:00Z",
            "12",
            "x-y",
            " =1",
        ] {
            assert_eq!(csv_cell(value), value, "{value:?}");
        }
        // Every other leading ASCII character is left as it is.
        for b in 0x20u8..0x7f {
            let value = format!("{}x", b as char);
            let dangerous = matches!(b, b'=' | b'+' | b'-' | b'@' | b'\'');
            let needs_quotes = matches!(b, b',' | b'"');
            let got = csv_cell(&value);
            assert_eq!(got.starts_with("\"'"), dangerous, "{value:?} -> {got}");
            if !dangerous && !needs_quotes {
                assert_eq!(got, value);
            }
        }
    }

    #[test]
    fn format_names() {
        assert_eq!("CSV".parse::<ExportFormat>(), Ok(ExportFormat::Csv));
        assert_eq!("json".parse::<ExportFormat>(), Ok(ExportFormat::Json));
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}

#[cfg(test)]
mod db_tests {
    use chrono::TimeZone;

    use super::*;
    use crate::audit::verify::tests::fill;
    use crate::audit::writer::tests::sqlite_url;
    use crate::audit::{GENESIS_HASH, verify};

    #[tokio::test]
    async fn json_export_rehashes_and_ends_with_head() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 4).await;

        let mut out = Vec::new();
        let summary = export(&url, ExportFormat::Json, None, &mut out)
            .await
            .unwrap();
        assert_eq!(summary.rows, 4);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let rows: Vec<StoredRow> = serde_json::from_value(doc["rows"].clone()).unwrap();
        assert_eq!(rows.len(), 4);
        let mut prev = GENESIS_HASH.to_string();
        for row in &rows {
            assert_eq!(row.prev_hash, prev);
            assert_eq!(row.compute_hash(), row.row_hash);
            prev = row.row_hash.clone();
        }
        let head = verify(&url).await.unwrap().head.unwrap();
        assert_eq!(doc["chain_head"]["row_hash"], serde_json::json!(head));
        assert_eq!(doc["chain_head"]["seq"], serde_json::json!(4));
        assert_eq!(summary.head, Some(head));
    }

    #[tokio::test]
    async fn csv_export_since() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir.path().join("audit.db"));
        fill(&url, &dir.path().join("j"), 5).await;

        // sample_event(n) is timestamped 12:00:00 plus n milliseconds.
        let since = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().unwrap()
            + chrono::Duration::milliseconds(2);
        let mut out = Vec::new();
        let summary = export(&url, ExportFormat::Csv, Some(since), &mut out)
            .await
            .unwrap();
        assert_eq!((summary.rows, summary.first_seq), (3, Some(3)));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        // Header, three rows, and the empty string after the last CRLF.
        assert_eq!(lines.len(), 5);
        assert!(lines[1].starts_with("3,"), "{}", lines[1]);
        // The SMTP reply holds a comma and quotes; body_sha256 is NULL.
        assert!(
            lines[1].contains(",\"250 2.0.0 Ok, \"\"queued\"\"\","),
            "{}",
            lines[1]
        );
        assert!(lines[3].ends_with(summary.head.as_deref().unwrap()));

        // Nothing at or after a later time: header only.
        let mut out = Vec::new();
        let later = since + chrono::Duration::days(1);
        let summary = export(&url, ExportFormat::Csv, Some(later), &mut out)
            .await
            .unwrap();
        assert_eq!(summary.rows, 0);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }
}
