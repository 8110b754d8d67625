//! Reading user tables (CSV, JSON arrays, JSON Lines) as text with exact locations, so every
//! stage that takes a user file (ingest, score) decodes it and reports its problems the same way.
//!
//! CSV cells are loaded with polars' CSV reader, every column read as text (no type inference:
//! "007" stays "007"). A `csv`-crate pass over the same text supplies what polars cannot: each
//! record's line number (for errors and `source_row`) and the refusal of ragged rows, which
//! polars would silently pad with nulls. Polars gets exactly the records the scan found (blank
//! lines, which only polars reads as rows, are cut out), and the two must agree on the count.

use std::fmt;
use std::path::{Path, PathBuf};

use encoding_rs::{Encoding, EUC_KR, UTF_8};
use polars::prelude::{CsvReadOptions, DataFrame, PolarsError, SerReader};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The text encoding a user file is decoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TextEncoding {
    /// A BOM if there is one, else UTF-8, else CP949 (which also reads EUC-KR).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// Windows code page 949 (Unified Hangul Code), a superset of EUC-KR.
    #[serde(rename = "cp949")]
    Cp949,
    /// Decoded as CP949, its superset: a valid EUC-KR file decodes identically.
    #[serde(rename = "euc-kr")]
    EucKr,
}

/// A file to read plus the name to show for it in messages (usually the path as configured).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub label: String,
}

impl Source {
    /// A source whose messages show `label` (e.g. `data/qa.csv`) instead of the resolved path.
    pub fn labelled(path: PathBuf, label: impl Into<String>) -> Self {
        Self {
            path,
            label: label.into(),
        }
    }
}

/// Where in a file a record starts, as a user would look for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A physical line (JSON Lines).
    Line(u64),
    /// A CSV record: the line it starts on and its 1-based number after the header.
    Record { line: u64, row: u64 },
    /// The 1-based position of an element in a top-level JSON array.
    Element(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "line {line}"),
            Location::Record { line, row } => write!(f, "line {line} (row {row})"),
            Location::Element(n) => write!(f, "record {n} of the array"),
        }
    }
}

/// Why a user table could not be read. Every message names the file and the place at fault.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot find {file} (looked for {}); check the path, which is relative to the directory holding pipeline.toml", resolved.display())]
    NotFound { file: String, resolved: PathBuf },
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is empty; it needs {needs}")]
    Empty { file: String, needs: &'static str },
    #[error("{file}: {at} cannot be decoded as {tried}; {advice}")]
    Undecodable {
        file: String,
        /// `line 3 (byte 57)`.
        at: String,
        tried: String,
        advice: String,
    },
    #[error("{file} has a header ({columns}) but no data rows; add rows below the header line")]
    HeaderOnly { file: String, columns: String },
    #[error("{file}: {location} has {found} fields but the header has {expected}; quote fields that contain the delimiter `{delimiter}` (\"a, b\"), or set the right delimiter")]
    Ragged {
        file: String,
        location: Location,
        expected: usize,
        found: usize,
        delimiter: String,
    },
    #[error(
        "{file}: line {line}, column {column}: invalid JSON: {message}; fix the syntax there{hint}"
    )]
    BadJson {
        file: String,
        line: usize,
        column: usize,
        message: String,
        hint: &'static str,
    },
    #[error("{file}: expected a JSON array of records ([{{...}}, {{...}}]) at the top level, found {found}{hint}")]
    NotAnArray {
        file: String,
        found: &'static str,
        hint: &'static str,
    },
    #[error("{file}: {location}: expected a JSON object ({{\"field\": \"text\", ...}}), found {found}; every record must be an object")]
    NotAnObject {
        file: String,
        location: Location,
        found: &'static str,
    },
    #[error("{file}: {location}: field `{field}` is {found}, expected text; make it a string")]
    NotText {
        file: String,
        location: Location,
        field: String,
        found: &'static str,
    },
    #[error("{file} holds no records ({detail}); add at least one record")]
    NoRecords { file: String, detail: &'static str },
    #[error("{file}: the CSV reader (polars) failed: {message}; check that every quoted field is closed and the delimiter `{delimiter}` is right, or convert the file to JSON Lines")]
    CsvLoad {
        file: String,
        message: String,
        delimiter: String,
    },
    #[error("{file}: line {line}: the field `{field}` has an unmatched quote (\") after its start, which the CSV reader takes as the start of a quoted field running on to the next quote in the file; quote the whole field and double the quotes inside it, or remove the quote")]
    StrayQuote {
        file: String,
        line: usize,
        /// The field as it is in the file, shortened.
        field: String,
    },
    #[error("{file}: the CSV reader (polars) found {loaded} records but the record scan found {scanned}; the file has unusual line breaks or quoting (lone carriage returns as line breaks, stray quotes); re-save it with \\n or \\r\\n line breaks and fully quoted fields, or convert it to JSON Lines")]
    CsvCountMismatch {
        file: String,
        loaded: usize,
        scanned: usize,
    },
}

/// A user file's text after decoding, and how it was decoded.
#[derive(Debug)]
pub struct Decoded {
    pub text: String,
    /// `utf-8`, `utf-8 (bom)`, `utf-16le (bom)`, `utf-16be (bom)` or `cp949`.
    pub encoding: &'static str,
}

/// Reads and decodes a whole file. Files are read at once: the parsers below need random
/// access for precise error locations, and a 1 GB table fits comfortably in memory.
pub fn read_text(source: &Source, choice: TextEncoding) -> Result<Decoded, TableError> {
    let bytes = std::fs::read(&source.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TableError::NotFound {
            file: source.label.clone(),
            resolved: source.path.clone(),
        },
        _ => TableError::Io {
            file: source.label.clone(),
            source: e,
        },
    })?;
    decode(bytes, choice, &source.label)
}

/// Decodes `bytes` as `choice` says; see [`TextEncoding`].
pub fn decode(bytes: Vec<u8>, choice: TextEncoding, file: &str) -> Result<Decoded, TableError> {
    match choice {
        TextEncoding::Auto => decode_auto(bytes, file),
        TextEncoding::Utf8 => decode_utf8(bytes, file, "utf-8"),
        TextEncoding::Cp949 | TextEncoding::EucKr => {
            decode_legacy(&bytes, EUC_KR, "cp949", file, "cp949/euc-kr".into())
        }
    }
}

fn decode_auto(bytes: Vec<u8>, file: &str) -> Result<Decoded, TableError> {
    if let Some((encoding, bom_len)) = Encoding::for_bom(&bytes) {
        if encoding == UTF_8 {
            return decode_utf8(bytes, file, "utf-8 (bom)");
        }
        let label = if encoding.name() == "UTF-16LE" {
            "utf-16le (bom)"
        } else {
            "utf-16be (bom)"
        };
        return decode_legacy(&bytes[bom_len..], encoding, label, file, label.into());
    }
    let err = match String::from_utf8(bytes) {
        Ok(text) => {
            return Ok(Decoded {
                text,
                encoding: "utf-8",
            })
        }
        Err(err) => err,
    };
    let valid_up_to = err.utf8_error().valid_up_to();
    let bytes = err.into_bytes();
    // A CP949 file fails UTF-8 at its first Korean character. If UTF-8 text with non-ASCII
    // characters came before the failure, the file is damaged UTF-8, and decoding it as CP949
    // would only produce mojibake.
    if !bytes[..valid_up_to].is_ascii() {
        return Err(TableError::Undecodable {
            file: file.to_string(),
            at: position(&bytes, valid_up_to),
            tried: "utf-8".into(),
            advice: "the text before it is valid utf-8, so the file looks damaged; fix or remove \
                     the bytes there, or re-save the file as UTF-8"
                .into(),
        });
    }
    let utf8_at = position(&bytes, valid_up_to);
    decode_legacy(
        &bytes,
        EUC_KR,
        "cp949",
        file,
        format!("utf-8 (fails at {utf8_at}) or cp949/euc-kr"),
    )
}

fn decode_utf8(mut bytes: Vec<u8>, file: &str, label: &'static str) -> Result<Decoded, TableError> {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Decoded {
            text,
            encoding: label,
        }),
        Err(err) => {
            let at = err.utf8_error().valid_up_to();
            Err(TableError::Undecodable {
                file: file.to_string(),
                at: position(err.as_bytes(), at),
                tried: "utf-8".into(),
                advice: "re-save the file as UTF-8, or set `encoding` to the file's encoding \
                         (\"cp949\" or \"euc-kr\" for Korean Windows files)"
                    .into(),
            })
        }
    }
}

/// Decodes with a non-UTF-8 encoding, refusing (rather than replacing) malformed bytes.
fn decode_legacy(
    bytes: &[u8],
    encoding: &'static Encoding,
    label: &'static str,
    file: &str,
    tried: String,
) -> Result<Decoded, TableError> {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(bytes.len())
        .unwrap_or(bytes.len().saturating_mul(3));
    let mut text = String::with_capacity(capacity);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut text, true);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(Decoded {
            text,
            encoding: label,
        }),
        encoding_rs::DecoderResult::Malformed(bad, after) => {
            let offset = read.saturating_sub(usize::from(bad) + usize::from(after));
            Err(TableError::Undecodable {
                file: file.to_string(),
                at: position(bytes, offset),
                tried,
                advice: "re-save the file as UTF-8, or set `encoding` to the file's real encoding"
                    .into(),
            })
        }
        // Unreachable with a buffer of the documented worst-case size; report it, not panic.
        encoding_rs::DecoderResult::OutputFull => Err(TableError::Undecodable {
            file: file.to_string(),
            at: position(bytes, read),
            tried,
            advice: "the decoder ran out of buffer; re-save the file as UTF-8".into(),
        }),
    }
}

/// `line 3 (byte 57)` for a byte offset, both 1-based as editors show them.
fn position(bytes: &[u8], offset: usize) -> String {
    let offset = offset.min(bytes.len());
    let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
    format!("line {line} (byte {})", offset + 1)
}

/// One CSV data record, reduced to the requested columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    pub location: Location,
    /// 1-based record number after the header.
    pub row: u64,
    /// One cell per requested column index; `None` where no index was requested.
    pub cells: Vec<Option<String>>,
}

/// A CSV document whose header has been read; rows are parsed on demand by [`CsvTable::rows`].
pub struct CsvTable<'t> {
    file: String,
    text: &'t str,
    /// Where the header line really starts (after any blank lines).
    header_start: usize,
    columns: Vec<String>,
    delimiter: u8,
    reader: csv::Reader<&'t [u8]>,
}

/// What the `csv`-crate pass learns about the data records.
struct Scan {
    /// Each record's location and 1-based number, in file order.
    records: Vec<(Location, u64)>,
    /// The byte range from the header to the end of the last record, without its line break.
    span: std::ops::Range<usize>,
    /// Line breaks between records that enclose blank lines (which the `csv` crate skips and
    /// polars would read as rows of nulls), as byte ranges to collapse into one `\n`.
    blank_gaps: Vec<std::ops::Range<usize>>,
}

impl<'t> CsvTable<'t> {
    /// Reads the header of `text`. Header names are trimmed; the BOM is already gone.
    pub fn open(text: &'t str, file: &str, delimiter: u8) -> Result<Self, TableError> {
        if text.trim().is_empty() {
            return Err(TableError::Empty {
                file: file.to_string(),
                needs: "a header line and at least one data row",
            });
        }
        // `flexible`: we check field counts ourselves to report them with the line number.
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(true)
            .from_reader(text.as_bytes());
        let header = reader.byte_headers().map_err(|e| csv_error(file, e))?;
        let scanned_from = header.position().map_or(0, |p| p.byte() as usize);
        let header_start = skip_line_breaks(text.as_bytes(), scanned_from).0;
        let columns = header
            .iter()
            .map(|name| String::from_utf8_lossy(name).trim().to_string())
            .collect();
        Ok(Self {
            file: file.to_string(),
            text,
            header_start,
            columns,
            delimiter,
            reader,
        })
    }

    /// The header's column names, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Every position at which `name` occurs in the header (more than one means ambiguous).
    pub fn positions(&self, name: &str) -> Vec<usize> {
        let found = self.columns.iter().enumerate();
        found.filter(|(_, c)| *c == name).map(|(i, _)| i).collect()
    }

    /// Parses every data record, keeping the cells at `picks` (empty cells are empty text).
    /// Refuses ragged records and a header with no data below it.
    pub fn rows(mut self, picks: &[Option<usize>]) -> Result<Vec<CsvRow>, TableError> {
        let scan = self.scan()?;
        let (frame, loaded) = self.load(&scan, picks)?;
        if frame.height() != scan.records.len() {
            if let Some(stray) = self.stray_quote() {
                return Err(stray);
            }
            return Err(TableError::CsvCountMismatch {
                file: self.file,
                loaded: frame.height(),
                scanned: scan.records.len(),
            });
        }
        let mut columns = Vec::with_capacity(picks.len());
        for pick in picks {
            let Some(index) = pick else {
                columns.push(None);
                continue;
            };
            let column = loaded
                .binary_search(index)
                .ok()
                .and_then(|at| frame.get_columns().get(at))
                .ok_or_else(|| self.load_error(format!("column {} was not loaded", index + 1)))?;
            let text = column.str().map_err(|e| self.load_error(e.to_string()))?;
            columns.push(Some(text.iter()));
        }
        let rows = scan
            .records
            .into_iter()
            .map(|(location, row)| {
                let cells = columns
                    .iter_mut()
                    .map(|column| {
                        let cell = column.as_mut().map(|c| c.next().flatten());
                        cell.map(|text| text.unwrap_or_default().to_string())
                    })
                    .collect();
                CsvRow {
                    location,
                    row,
                    cells,
                }
            })
            .collect();
        Ok(rows)
    }

    /// The `csv`-crate pass: where every record starts, refusing ragged records and a header
    /// with no data below it. Cells are not copied.
    fn scan(&mut self) -> Result<Scan, TableError> {
        let bytes = self.text.as_bytes();
        let mut records = Vec::new();
        let mut blank_gaps = Vec::new();
        let mut end = self.header_start;
        let mut record = csv::ByteRecord::new();
        let expected = self.columns.len();
        while self
            .reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(&self.file, e))?
        {
            // The `csv` crate positions a record where its search began: at the blank lines
            // it skipped, or at the `\n` of a preceding `\r\n`. Step over them.
            let (line, row) = match record.position() {
                Some(p) => {
                    let scanned_from = p.byte() as usize;
                    let (start, breaks) = skip_line_breaks(bytes, scanned_from);
                    // The gap from the previous record's line break to this record.
                    let gap = match scanned_from.checked_sub(1) {
                        Some(before) if matches!(bytes[before], b'\r' | b'\n') => before..start,
                        _ => scanned_from..start,
                    };
                    if bytes[gap.clone()].iter().filter(|&&b| b == b'\n').count() > 1 {
                        blank_gaps.push(gap);
                    }
                    (p.line() + breaks, p.record())
                }
                None => (0, records.len() as u64 + 1),
            };
            let location = Location::Record { line, row };
            if record.len() != expected {
                return Err(TableError::Ragged {
                    file: self.file.clone(),
                    location,
                    expected,
                    found: record.len(),
                    delimiter: self.delimiter_text(),
                });
            }
            records.push((location, row));
            // Just past the record's line break (its `\r` only, for `\r\n`), or the end.
            end = self.reader.position().byte() as usize;
        }
        if records.is_empty() {
            return Err(TableError::HeaderOnly {
                file: self.file.clone(),
                columns: self.columns.join(", "),
            });
        }
        if end > 0 && matches!(bytes[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        Ok(Scan {
            records,
            span: self.header_start..end,
            blank_gaps,
        })
    }

    /// The polars pass over the records the scan found: the picked columns (at least one, to
    /// count records), every cell as text. Returns the frame and the column indices it holds,
    /// in its column order (polars sorts a projection).
    fn load(
        &self,
        scan: &Scan,
        picks: &[Option<usize>],
    ) -> Result<(DataFrame, Vec<usize>), TableError> {
        let mut projection: Vec<usize> = picks.iter().flatten().copied().collect();
        projection.sort_unstable();
        projection.dedup();
        if projection.is_empty() {
            projection.push(0);
        }
        let input = collapse(self.text.as_bytes(), &scan.span, &scan.blank_gaps);
        let frame = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .with_projection(Some(projection.clone().into()))
            .map_parse_options(|options| {
                options
                    .with_separator(self.delimiter)
                    .with_quote_char(Some(b'"'))
            })
            .into_reader_with_file_handle(std::io::Cursor::new(input.as_ref()))
            .finish()
            .map_err(|e| self.polars_error(&e))?;
        if frame.width() != projection.len() {
            return Err(self.load_error(format!(
                "it returned {} columns where {} were asked for",
                frame.width(),
                projection.len()
            )));
        }
        Ok((frame, projection))
    }

    /// The first unquoted field holding an odd number of quotes, as a located error: the
    /// `csv` crate reads such a quote as text, polars as the start of a quoted field that
    /// swallows the lines up to the next quote (balanced quotes are text for both).
    fn stray_quote(&self) -> Option<TableError> {
        let (at, line) =
            find_stray_quote(&self.text.as_bytes()[self.header_start..], self.delimiter)?;
        let start = self.header_start + at;
        let rest = &self.text[start..];
        let end = rest
            .find(|c| c == char::from(self.delimiter) || c == '\n' || c == '\r')
            .unwrap_or(rest.len());
        let mut field: String = rest[..end].chars().take(60).collect();
        if field.len() < end {
            field.push_str("...");
        }
        let header_lines = self.text[..self.header_start].matches('\n').count();
        Some(TableError::StrayQuote {
            file: self.file.clone(),
            line: header_lines + line,
            field,
        })
    }

    /// A polars error without its advice for Python users, and with the line of the field it
    /// names where it names one.
    fn polars_error(&self, err: &PolarsError) -> TableError {
        if let Some(stray) = self.stray_quote() {
            return stray;
        }
        let full = err.to_string();
        // Parse errors wrap the cause: "... Original error: ```invalid csv file\n\nField `x` is
        // not properly escaped.```"; the rest suggests Python keyword arguments.
        let cause = full
            .split_once("Original error: ```")
            .map_or(full.as_str(), |(_, rest)| rest.trim_end_matches('`'));
        let field = cause
            .split_once("Field `")
            .and_then(|(_, rest)| rest.rsplit_once("` is not properly escaped"))
            .map(|(field, _)| field);
        let mut message = cause.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.chars().count() > 300 {
            message = message.chars().take(300).collect::<String>() + "...";
        }
        // A field spans no blank-line gap, so it appears in the file as polars quotes it.
        let found = field.and_then(|field| {
            let at = find(&self.text.as_bytes()[self.header_start..], field.as_bytes())?;
            let before = &self.text.as_bytes()[..self.header_start + at];
            Some(before.iter().filter(|&&b| b == b'\n').count() + 1)
        });
        if let Some(line) = found {
            message = format!("line {line}: {message}");
        }
        self.load_error(message)
    }

    fn load_error(&self, message: String) -> TableError {
        TableError::CsvLoad {
            file: self.file.clone(),
            message,
            delimiter: self.delimiter_text(),
        }
    }

    fn delimiter_text(&self) -> String {
        char::from(self.delimiter).escape_default().to_string()
    }
}

/// Where the first unquoted field with an odd number of quotes starts, and its 1-based line
/// in `bytes`. Quoted fields (`"a, ""b"""`) may span lines; text after a closing quote is left
/// to the readers' own errors.
fn find_stray_quote(bytes: &[u8], delimiter: u8) -> Option<(usize, usize)> {
    enum State {
        FieldStart,
        Unquoted { start: usize, quotes: usize },
        Quoted,
        QuoteInQuoted,
        AfterQuoted,
    }
    let mut state = State::FieldStart;
    let mut line = 1;
    let mut field_line = 1;
    for (i, &b) in bytes.iter().enumerate() {
        let ends_field = b == delimiter || b == b'\n' || b == b'\r';
        state = match state {
            State::Unquoted { start, quotes } if ends_field => {
                if quotes % 2 == 1 {
                    return Some((start, field_line));
                }
                State::FieldStart
            }
            State::FieldStart | State::QuoteInQuoted | State::AfterQuoted if ends_field => {
                State::FieldStart
            }
            State::FieldStart if b == b'"' => State::Quoted,
            State::FieldStart => {
                field_line = line;
                State::Unquoted {
                    start: i,
                    quotes: 0,
                }
            }
            State::Unquoted { start, quotes } => State::Unquoted {
                start,
                quotes: quotes + usize::from(b == b'"'),
            },
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::QuoteInQuoted if b == b'"' => State::Quoted,
            State::QuoteInQuoted | State::AfterQuoted => State::AfterQuoted,
        };
        if b == b'\n' {
            line += 1;
        }
    }
    match state {
        State::Unquoted { start, quotes } if quotes % 2 == 1 => Some((start, field_line)),
        _ => None,
    }
}

/// The first position at or after `from` that is not a line break, and how many `\n` it passed.
fn skip_line_breaks(bytes: &[u8], from: usize) -> (usize, u64) {
    let mut at = from.min(bytes.len());
    let mut newlines = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'\n' => newlines += 1,
            b'\r' => {}
            _ => break,
        }
        at += 1;
    }
    (at, newlines)
}

/// `bytes[span]` with every gap replaced by a single `\n`; borrowed when there is no gap.
fn collapse<'b>(
    bytes: &'b [u8],
    span: &std::ops::Range<usize>,
    gaps: &[std::ops::Range<usize>],
) -> std::borrow::Cow<'b, [u8]> {
    if gaps.is_empty() {
        return std::borrow::Cow::Borrowed(&bytes[span.clone()]);
    }
    let mut out = Vec::with_capacity(span.len());
    let mut at = span.start;
    for gap in gaps {
        out.extend_from_slice(&bytes[at..gap.start]);
        out.push(b'\n');
        at = gap.end;
    }
    out.extend_from_slice(&bytes[at..span.end]);
    std::borrow::Cow::Owned(out)
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn csv_error(file: &str, err: csv::Error) -> TableError {
    let at = err
        .position()
        .map_or_else(String::new, |p| format!(" at line {}", p.line()));
    TableError::Io {
        file: file.to_string(),
        source: std::io::Error::other(format!("csv{at}: {err}")),
    }
}

/// How a JSON file holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// One top-level array of objects.
    Array,
    /// One object per line (JSON Lines / NDJSON); blank lines are skipped.
    Lines,
}

/// One JSON record with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRecord {
    pub location: Location,
    /// 1-based: the array position, or the line number for JSON Lines.
    pub row: u64,
    pub fields: Map<String, Value>,
}

impl JsonRecord {
    /// The record's field names, comma-separated, for messages.
    pub fn field_names(&self) -> String {
        let names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        names.join(", ")
    }
}

/// Parses JSON or JSON Lines text into records (objects).
pub fn read_json(text: &str, file: &str, kind: JsonKind) -> Result<Vec<JsonRecord>, TableError> {
    if text.trim().is_empty() {
        let needs = match kind {
            JsonKind::Array => "a JSON array of records",
            JsonKind::Lines => "one JSON object per line",
        };
        return Err(TableError::Empty {
            file: file.to_string(),
            needs,
        });
    }
    let records = match kind {
        JsonKind::Array => read_json_array(text, file)?,
        JsonKind::Lines => read_json_lines(text, file)?,
    };
    if records.is_empty() {
        let detail = match kind {
            JsonKind::Array => "an empty array",
            JsonKind::Lines => "only blank lines",
        };
        return Err(TableError::NoRecords {
            file: file.to_string(),
            detail,
        });
    }
    Ok(records)
}

fn read_json_array(text: &str, file: &str) -> Result<Vec<JsonRecord>, TableError> {
    let value: Value = serde_json::from_str(text).map_err(|e| TableError::BadJson {
        file: file.to_string(),
        line: e.line(),
        column: e.column(),
        message: json_message(&e),
        hint: if looks_like_json_lines(text) {
            "; the file looks like JSON Lines (one object per line): set format = \"jsonl\""
        } else {
            ""
        },
    })?;
    let items = match value {
        Value::Array(items) => items,
        other => {
            return Err(TableError::NotAnArray {
                file: file.to_string(),
                found: kind_name(&other),
                hint: if other.is_object() {
                    "; wrap the records in [ ], or use JSON Lines (format = \"jsonl\")"
                } else {
                    ""
                },
            })
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let row = i as u64 + 1;
            into_record(item, Location::Element(row), row, file)
        })
        .collect()
}

fn read_json_lines(text: &str, file: &str) -> Result<Vec<JsonRecord>, TableError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| TableError::BadJson {
            file: file.to_string(),
            line: i + 1,
            column: e.column(),
            message: json_message(&e),
            hint: if i == 0 && line.trim_start().starts_with('[') {
                "; the file looks like a JSON array: set format = \"json\""
            } else {
                "; JSON Lines needs one complete object per line"
            },
        })?;
        records.push(into_record(value, Location::Line(number), number, file)?);
    }
    Ok(records)
}

fn into_record(
    value: Value,
    location: Location,
    row: u64,
    file: &str,
) -> Result<JsonRecord, TableError> {
    match value {
        Value::Object(fields) => Ok(JsonRecord {
            location,
            row,
            fields,
        }),
        other => Err(TableError::NotAnObject {
            file: file.to_string(),
            location,
            found: kind_name(&other),
        }),
    }
}

/// True when the first non-blank line is a whole JSON object and more lines follow.
fn looks_like_json_lines(text: &str) -> bool {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first_is_object = lines
        .next()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| v.is_object());
    first_is_object && lines.next().is_some()
}

/// serde_json's message without its own " at line L column C" suffix (we print both ourselves).
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// A record field as text: `None` when the field is absent; JSON null is empty text; numbers
/// and booleans are written as JSON writes them; arrays and objects are refused.
pub fn text_field(
    record: &JsonRecord,
    name: &str,
    file: &str,
) -> Result<Option<String>, TableError> {
    match record.fields.get(name) {
        None => Ok(None),
        Some(value) => value_text(value)
            .map(Some)
            .ok_or_else(|| TableError::NotText {
                file: file.to_string(),
                location: record.location,
                field: name.to_string(),
                found: kind_name(value),
            }),
    }
}

/// A scalar JSON value as text; `None` for arrays and objects.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// `an object`, `an array`, ... for messages.
pub fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The extension of `path`, lowercased, without the dot.
pub fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_rows(text: &str, picks: &[Option<usize>]) -> Result<Vec<CsvRow>, TableError> {
        CsvTable::open(text, "t.csv", b',')?.rows(picks)
    }

    #[test]
    fn csv_keeps_quoted_commas_and_newlines_and_numbers_lines() {
        let text = "q,a\n\"one, two\",\"line1\nline2\"\nx,\"say \"\"hi\"\"\"\n";
        let rows = csv_rows(text, &[Some(0), Some(1)]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cells[0].as_deref(), Some("one, two"));
        assert_eq!(rows[0].cells[1].as_deref(), Some("line1\nline2"));
        assert_eq!(rows[0].location, Location::Record { line: 2, row: 1 });
        // The second record starts on line 4 because the first spans two lines.
        assert_eq!(rows[1].location, Location::Record { line: 4, row: 2 });
        assert_eq!(rows[1].cells[1].as_deref(), Some("say \"hi\""));
    }

    #[test]
    fn csv_numeric_looking_cells_stay_exact_text() {
        let text = "id,value,flag\n007,1e3,true\n-0,1.50,NaN\n+42, 42 ,\n0x1F,\"3,000\",null\n";
        let rows = csv_rows(text, &[Some(0), Some(1), Some(2)]).unwrap();
        let cells: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.cells.iter().map(|c| c.as_deref().unwrap()).collect())
            .collect();
        assert_eq!(
            cells,
            vec![
                vec!["007", "1e3", "true"],
                vec!["-0", "1.50", "NaN"],
                vec!["+42", " 42 ", ""],
                vec!["0x1F", "3,000", "null"],
            ]
        );
    }

    #[test]
    fn csv_quoted_delimiters_and_newlines_with_other_delimiters_and_crlf() {
        let text = "q;a;c\r\n\"x; y\";\"first\r\nsecond; third\";\r\n\"\";plain;\"\"\"q\"\"\"\r\n";
        let rows = CsvTable::open(text, "t.csv", b';')
            .unwrap()
            .rows(&[Some(0), Some(1), Some(2)])
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cells[0].as_deref(), Some("x; y"));
        assert_eq!(rows[0].cells[1].as_deref(), Some("first\r\nsecond; third"));
        assert_eq!(rows[0].cells[2].as_deref(), Some(""));
        assert_eq!(rows[1].location, Location::Record { line: 4, row: 2 });
        assert_eq!(rows[1].cells[0].as_deref(), Some(""));
        assert_eq!(rows[1].cells[1].as_deref(), Some("plain"));
        assert_eq!(rows[1].cells[2].as_deref(), Some("\"q\""));

        let tsv = "q\ta\n\"tab\there\"\t\"multi\nline\"\n";
        let rows = CsvTable::open(tsv, "t.tsv", b'\t')
            .unwrap()
            .rows(&[Some(1), Some(0)])
            .unwrap();
        assert_eq!(rows[0].cells[0].as_deref(), Some("multi\nline"));
        assert_eq!(rows[0].cells[1].as_deref(), Some("tab\there"));
    }

    #[test]
    fn csv_blank_lines_and_repeated_or_unpicked_columns() {
        let text = "a,b,c\n1,2,3\n\n4,5,6\n\n";
        let rows = csv_rows(text, &[Some(2), None, Some(0), Some(2)]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1].cells,
            vec![Some("6".into()), None, Some("4".into()), Some("6".into())]
        );
        assert_eq!(rows[1].location, Location::Record { line: 4, row: 2 });
        let rows = csv_rows("a,b\n1,2\n3,4", &[None, None]).unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn csv_blank_lines_are_skipped_and_lines_count_them() {
        let text = "\n\na,b,c\n\n1,2,3\n\n\r\n4,5,6\n\n";
        let rows = csv_rows(text, &[Some(0), Some(2)]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].location, Location::Record { line: 5, row: 1 });
        assert_eq!(rows[1].location, Location::Record { line: 8, row: 2 });
        assert_eq!(rows[1].cells, vec![Some("4".into()), Some("6".into())]);
    }

    #[test]
    fn csv_crlf_lines_are_numbered_exactly() {
        let err = csv_rows("a,b\r\n\"1\r\n2\",3\r\n4\r\n", &[Some(0)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.csv: line 4 (row 2) has 1 fields but the header has 2"),
            "{err}"
        );
    }

    #[test]
    fn csv_badly_quoted_field_names_its_line_without_python_advice() {
        let err = csv_rows("a,b\n1,2\n\"x\"y,2\n", &[Some(0), Some(1)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.csv: the CSV reader (polars) failed: line 3: invalid csv file Field `\"x\"y` is \
             not properly escaped.; check that every quoted field is closed and the delimiter \
             `,` is right, or convert the file to JSON Lines"
        );
    }

    /// Issue 16: a stray quote inside a field failed with polars' "expected 1 rows, actual
    /// 655 rows" and no line, although the README promises one.
    #[test]
    fn a_stray_quote_inside_a_field_names_its_line() {
        let mut text = String::from("question,answer,category\n");
        for i in 0..40 {
            let q = if i == 9 {
                "What \"does ls do?"
            } else {
                "What does ls do?"
            };
            text.push_str(&format!("{q},\"lists, files\",cmd\n"));
        }
        let err = csv_rows(&text, &[Some(0), Some(1)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.csv: line 11: the field `What \"does ls do?` has an unmatched quote (\") after \
             its start, which the CSV reader takes as the start of a quoted field running on to \
             the next quote in the file; quote the whole field and double the quotes inside it, \
             or remove the quote"
        );
        // Balanced quotes inside a field are text for both readers.
        let rows = csv_rows("q,a\nHe said \"hi\" there,ok\n", &[Some(0), Some(1)]).unwrap();
        assert_eq!(rows[0].cells[0].as_deref(), Some("He said \"hi\" there"));
    }

    #[test]
    fn stray_quotes_are_found_past_quoted_fields_spanning_lines() {
        let text = b"a,b\n\"x\ny\",1\n\"p \"\"q\"\"\",2\nr \"s,3\n";
        assert_eq!(find_stray_quote(text, b','), Some((24, 5)));
        assert_eq!(find_stray_quote(b"a,b\n\"x\"y,1\n", b','), None);
        assert_eq!(find_stray_quote(b"a;b\nx \"y;1", b';'), Some((4, 2)));
    }

    #[test]
    fn csv_readers_disagreeing_on_the_record_count_is_an_error() {
        // Lone carriage returns end records for the `csv` crate but not for polars.
        let err = csv_rows("a,b\r1,2\r3,4\r", &[Some(0), Some(1)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "t.csv: the CSV reader (polars) found 0 records but the record scan found 2;"
            ),
            "{err}"
        );
    }

    #[test]
    fn csv_header_names_are_trimmed_and_unpicked_cells_are_none() {
        let table = CsvTable::open(" q , a\n1,2\n", "t.csv", b',').unwrap();
        assert_eq!(table.columns(), ["q", "a"]);
        assert_eq!(table.positions("a"), vec![1]);
        let rows = table.rows(&[None, Some(1)]).unwrap();
        assert_eq!(rows[0].cells, vec![None, Some("2".to_string())]);
    }

    #[test]
    fn csv_ragged_row_names_line_and_counts() {
        let err = csv_rows("a,b,c\n1,2,3\n4,5\n", &[Some(0)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.csv: line 3 (row 2) has 2 fields but the header has 3; quote fields that contain \
             the delimiter `,` (\"a, b\"), or set the right delimiter"
        );
    }

    #[test]
    fn csv_too_many_fields_is_ragged_too() {
        let err = csv_rows("a,b\n1,2,3\n", &[Some(0)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2 (row 1) has 3 fields but the header has 2"),
            "{err}"
        );
    }

    #[test]
    fn csv_empty_and_header_only_are_refused() {
        let err = CsvTable::open(" \n", "t.csv", b',')
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "t.csv is empty; it needs a header line and at least one data row"
        );
        let err = csv_rows("q,a\n", &[Some(0)]).unwrap_err().to_string();
        assert_eq!(
            err,
            "t.csv has a header (q, a) but no data rows; add rows below the header line"
        );
    }

    #[test]
    fn utf8_bom_is_stripped() {
        let decoded = decode(b"\xEF\xBB\xBFq,a\n".to_vec(), TextEncoding::Auto, "t").unwrap();
        assert_eq!(decoded.text, "q,a\n");
        assert_eq!(decoded.encoding, "utf-8 (bom)");
        let decoded = decode(b"\xEF\xBB\xBFq".to_vec(), TextEncoding::Utf8, "t").unwrap();
        assert_eq!(decoded.text, "q");
    }

    #[test]
    fn cp949_is_detected_and_decoded_exactly() {
        let original = "질문,답변\n안녕하세요,반갑습니다 똠방각하\n";
        let (bytes, _, unmappable) = EUC_KR.encode(original);
        assert!(!unmappable);
        let decoded = decode(bytes.to_vec(), TextEncoding::Auto, "t").unwrap();
        assert_eq!(decoded.text, original);
        assert_eq!(decoded.encoding, "cp949");
        let explicit = decode(bytes.to_vec(), TextEncoding::EucKr, "t").unwrap();
        assert_eq!(explicit.text, original);
    }

    #[test]
    fn utf16_with_bom_is_decoded() {
        let mut bytes = vec![0xFF, 0xFE];
        for unit in "q,a\n".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        let decoded = decode(bytes, TextEncoding::Auto, "t").unwrap();
        assert_eq!(decoded.text, "q,a\n");
        assert_eq!(decoded.encoding, "utf-16le (bom)");
    }

    #[test]
    fn undecodable_bytes_name_the_line_and_encodings_tried() {
        // 0xFF is neither UTF-8 nor a CP949 lead byte.
        let err = decode(
            b"q,a\nok,fine\nbad,\xFF\xFF\n".to_vec(),
            TextEncoding::Auto,
            "t.csv",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.csv: line 3 (byte 17) cannot be decoded as utf-8 (fails at line 3 (byte 17)) or \
             cp949/euc-kr; re-save the file as UTF-8, or set `encoding` to the file's real encoding"
        );
    }

    #[test]
    fn damaged_utf8_is_not_misread_as_cp949() {
        let err = decode(
            "q\n한국어\n".bytes().chain(*b"\xC0\n").collect(),
            TextEncoding::Auto,
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "t: line 3 (byte 13) cannot be decoded as utf-8; the text before it is valid utf-8"
            ),
            "{err}"
        );
    }

    #[test]
    fn explicit_utf8_refuses_cp949_bytes() {
        let (bytes, _, _) = EUC_KR.encode("a\n한\n");
        let err = decode(bytes.to_vec(), TextEncoding::Utf8, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t: line 2 (byte 3) cannot be decoded as utf-8; re-save"),
            "{err}"
        );
    }

    #[test]
    fn json_array_and_lines_are_read_with_locations() {
        let records =
            read_json(r#"[{"a": "x"}, {"a": 1, "b": null}]"#, "t", JsonKind::Array).unwrap();
        assert_eq!(records[1].location, Location::Element(2));
        assert_eq!(
            text_field(&records[1], "a", "t").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            text_field(&records[1], "b", "t").unwrap().as_deref(),
            Some("")
        );
        assert_eq!(text_field(&records[1], "c", "t").unwrap(), None);

        let records =
            read_json("{\"a\": \"x\"}\n\n{\"a\": \"y\"}\n", "t", JsonKind::Lines).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].location, Location::Line(3));
        assert_eq!(records[1].row, 3);
    }

    #[test]
    fn malformed_json_names_the_line() {
        let err = read_json(
            "[\n{\"a\": \"x\"},\n{\"a\" \"y\"}\n]",
            "t.json",
            JsonKind::Array,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.json: line 3, column 6: invalid JSON: expected `:`; fix the syntax there"
        );
        let err = read_json(
            "{\"a\": \"x\"}\n{\"a\": \"y\"\n",
            "t.jsonl",
            JsonKind::Lines,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("t.jsonl: line 2, column 9: invalid JSON: EOF while parsing an object; fix the syntax there; JSON Lines needs one complete object per line"), "{err}");
    }

    #[test]
    fn json_lines_in_a_json_file_get_a_hint() {
        let err = read_json("{\"a\": 1}\n{\"a\": 2}\n", "t.json", JsonKind::Array)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("set format = \"jsonl\""), "{err}");
    }

    #[test]
    fn json_shape_errors_are_named() {
        let err = read_json("{\"a\": 1}", "t.json", JsonKind::Array)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.json: expected a JSON array of records"),
            "{err}"
        );
        let err = read_json("[1]", "t.json", JsonKind::Array)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.json: record 1 of the array: expected a JSON object"),
            "{err}"
        );
        let err = read_json("[]", "t.json", JsonKind::Array)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.json holds no records (an empty array); add at least one record"
        );
        let records = read_json("{\"a\": [1]}", "t.jsonl", JsonKind::Lines).unwrap();
        let err = text_field(&records[0], "a", "t.jsonl")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.jsonl: line 1: field `a` is an array, expected text; make it a string"
        );
    }

    #[test]
    fn missing_file_says_where_it_looked() {
        let source = Source::labelled(PathBuf::from("/nonexistent/x.csv"), "data/x.csv");
        let err = read_text(&source, TextEncoding::Auto)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot find data/x.csv (looked for /nonexistent/x.csv); check the path, which is \
             relative to the directory holding pipeline.toml"
        );
    }
}
