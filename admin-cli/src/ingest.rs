//! `samvirke ingest csv|json FILE --dataset ID`: send sensor readings from
//! a file to a node.
//!
//! The dataset is fetched first and every row is checked here, against
//! the same rules the node applies (sensor id, time, location, known and
//! finite measures), so one bad row is skipped and reported with its line
//! number instead of making the node refuse a whole batch. Good rows go in
//! numbered batches over one `IngestBatches` stream; the node stores each
//! batch whole and durably and acknowledges it before reading the next, so
//! the report says exactly which batches are stored, even when the call
//! breaks.
//!
//! A file (not standard input) is ingested as a resumable session named by
//! a digest of the file, the dataset and the batch size: `--resume` asks
//! the node how many batches of it are stored, checks they are this file's
//! first batches (by their chain of digests), and sends only the rest.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use samvirke_node::data::geo::{check_lat, check_lon};
use samvirke_node::data::readings::{EARLIEST, FUTURE_ALLOWANCE, check_sensor_id};
use samvirke_node::ingest::session::{self, Digest32};
use samvirke_proto::v1::{IngestBatch, IngestSessionRequest, Location, Reading};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, NodeArgs};
use crate::output::{self, CSV_FIXED_COLUMNS};

/// How many rejected rows the summary lists one by one.
const LISTED_REJECTIONS: usize = 20;
/// A batch is sent early when its encoding reaches this size, so it stays
/// well below gRPC's default 4 MiB message limit whatever `--batch-size` is.
const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;
/// Batches read ahead of the network.
const QUEUED_BATCHES: usize = 4;

const EXIT_CODES: &str = "\
Exit status:
  0  every row was valid and the node stored every reading
  1  the node refused a batch (its message names the reading), could not
     be reached, or the file could not be read to the end; the report says
     which batches are stored, and --resume sends only the others
  2  the command line was wrong (as for every samvirke command)
  3  some rows were invalid: they were skipped (not sent) and are listed
     with their line numbers; every row sent was stored";

/// Exit status when rows were skipped (2 is the command-line error status).
const EXIT_ROWS_SKIPPED: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Readings from CSV: header `sensor_id,timestamp,lat,lon,<measure>...`.
    ///
    /// `timestamp` is RFC 3339 (2026-01-01T12:00:00Z) or integer Unix
    /// milliseconds; `lat` and `lon` may both be empty (no location); an
    /// empty measure cell is a missing value. The measure columns must be
    /// measures of the dataset, in any order and any subset. This is the
    /// format `query readings --format csv` and `gen-readings` write.
    #[command(after_help = EXIT_CODES)]
    Csv(IngestArgs),
    /// Readings from JSON: an array of objects, or one object per line.
    ///
    /// Each object is `{"sensor_id": "...", "at": "2026-01-01T12:00:00Z"
    /// (or Unix milliseconds), "values": {"pm2_5": 4.2, ...}, "lat": 56.15,
    /// "lon": 10.2}`; `lat`/`lon` may be left out together, and a value may
    /// be null (missing). This is the format `query readings --format json`
    /// writes.
    #[command(after_help = EXIT_CODES)]
    Json(IngestArgs),
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The file to read; `-` reads standard input.
    file: PathBuf,
    /// The sensor dataset the readings belong to.
    #[arg(long)]
    dataset: String,
    /// Readings per batch (each batch is stored whole or not at all).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// Ask the node which batches of this file it already stored (by an
    /// earlier run of the same command that was cut off) and send only the
    /// rest. The file, dataset and batch size must be the same as then.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(command: IngestCommand) -> anyhow::Result<ExitCode> {
    match command {
        IngestCommand::Csv(args) => api::block_on(ingest(args, Format::Csv)),
        IngestCommand::Json(args) => api::block_on(ingest(args, Format::Json)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Json,
}

// ---- Checking rows -------------------------------------------------------------------

/// A row that was not sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line in the file where the row starts.
    pub line: u64,
    pub reason: String,
}

/// One row of the file: where it is, and the reading or why it is refused.
#[derive(Debug)]
pub struct Row {
    /// 1-based line where the row starts.
    pub line: u64,
    /// Bytes of the file read once this row is (for progress).
    pub end: u64,
    pub reading: Result<Reading, String>,
}

/// The node's rules for one reading, for a given dataset and time.
#[derive(Debug, Clone)]
pub struct Validator {
    measures: Vec<String>,
    known: BTreeSet<String>,
    latest: OffsetDateTime,
}

impl Validator {
    /// Rules for a dataset with `measures`, as of `now`.
    pub fn new(measures: Vec<String>, now: OffsetDateTime) -> Validator {
        Validator {
            known: measures.iter().cloned().collect(),
            measures,
            latest: now + FUTURE_ALLOWANCE,
        }
    }

    fn known_list(&self) -> String {
        self.measures.join(", ")
    }

    fn check_measure_name(&self, name: &str) -> Result<(), String> {
        if self.known.contains(name) {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not a measure of the dataset (it has: {})",
                name.escape_debug(),
                self.known_list()
            ))
        }
    }

    /// Checks the parts of a reading and builds it.
    fn reading(
        &self,
        sensor_id: &str,
        at: OffsetDateTime,
        location: Option<(f64, f64)>,
        values: BTreeMap<String, f64>,
    ) -> Result<Reading, String> {
        check_sensor_id(sensor_id).map_err(|e| format!("sensor_id: {e}"))?;
        if at < EARLIEST {
            return Err(format!(
                "time {} is before {}, the earliest a node accepts",
                output::rfc3339(at),
                output::rfc3339(EARLIEST)
            ));
        }
        if at > self.latest {
            return Err(format!(
                "time {} is more than {} h in the future",
                output::rfc3339(at),
                FUTURE_ALLOWANCE.whole_hours()
            ));
        }
        if let Some((lat, lon)) = location {
            check_lat("lat", lat).map_err(|e| e.to_string())?;
            check_lon("lon", lon).map_err(|e| e.to_string())?;
        }
        for (name, value) in &values {
            self.check_measure_name(name)?;
            if !value.is_finite() {
                return Err(format!("{name}: {value} is not a finite number"));
            }
        }
        if values.is_empty() {
            return Err("has no values (every measure is empty)".to_string());
        }
        Ok(Reading {
            sensor_id: sensor_id.to_string(),
            at: Some(output::timestamp(at)),
            values,
            location: location.map(|(lat, lon)| Location { lat, lon }),
        })
    }
}

/// Parses a reading time: RFC 3339, or integer Unix milliseconds.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .ok_or_else(|| format!("`{text}` milliseconds is out of range"));
    }
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        format!(
            "`{}` is neither RFC 3339 (e.g. 2026-01-01T12:00:00Z) nor integer Unix milliseconds",
            text.escape_debug()
        )
    })
}

fn parse_number(column: &str, text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|_| format!("{column}: `{}` is not a number", text.escape_debug()))
}

// ---- CSV ---------------------------------------------------------------------------

/// Splits one CSV record (RFC 4180: commas, double quotes, `""` inside
/// quotes) into its fields. A record is read line by line until its
/// quotes balance, so line numbers stay exact (the csv crate reports the
/// position before skipped blank lines, and counts CRLF lines late).
pub fn split_record(record: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::new();
    let mut rest = record;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".to_string()),
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => value.push(c),
                }
            };
            fields.push(Cow::Owned(value));
            rest = &quoted[end..];
            match rest.strip_prefix(',') {
                Some(next) => rest = next,
                None if rest.trim().is_empty() => return Ok(fields),
                None => {
                    return Err(format!(
                        "field {} has text after its closing quote",
                        fields.len()
                    ));
                }
            }
        } else {
            match rest.find(',') {
                Some(comma) => {
                    fields.push(Cow::Borrowed(&rest[..comma]));
                    rest = &rest[comma + 1..];
                }
                None => {
                    fields.push(Cow::Borrowed(rest));
                    return Ok(fields);
                }
            }
        }
        // A field may be quoted after spaces: `a, "b"`.
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if trimmed.starts_with('"') {
            rest = trimmed;
        }
    }
}

/// Logical lines of a text file: physical lines joined while a quote is
/// open, with the line each starts on and the bytes read after it.
#[derive(Debug)]
struct Records<R: BufRead> {
    input: R,
    line: u64,
    bytes: u64,
    buffer: Vec<u8>,
}

/// A record's raw text (terminator removed), or why it is unreadable.
#[derive(Debug)]
struct RawRecord {
    line: u64,
    end: u64,
    text: Result<String, String>,
}

impl<R: BufRead> Records<R> {
    fn new(input: R) -> Self {
        Records {
            input,
            line: 0,
            bytes: 0,
            buffer: Vec::new(),
        }
    }

    /// The next record that is not blank.
    fn next_record(&mut self) -> io::Result<Option<RawRecord>> {
        loop {
            self.buffer.clear();
            let start = self.line + 1;
            loop {
                let n = self.input.read_until(b'\n', &mut self.buffer)?;
                if n == 0 {
                    break;
                }
                self.line += 1;
                self.bytes += n as u64;
                let quotes = self.buffer.iter().filter(|b| **b == b'"').count();
                if quotes % 2 == 0 {
                    break;
                }
            }
            if self.buffer.is_empty() {
                return Ok(None);
            }
            let mut raw: &[u8] = &self.buffer;
            if start == 1 {
                raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
            }
            raw = raw.strip_suffix(b"\n").unwrap_or(raw);
            raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(raw)
                .map(str::to_string)
                .map_err(|e| format!("is not valid UTF-8 (at byte {})", e.valid_up_to() + 1));
            return Ok(Some(RawRecord {
                line: start,
                end: self.bytes,
                text,
            }));
        }
    }
}

/// The rows of a readings CSV.
#[derive(Debug)]
pub struct CsvRows<R: BufRead> {
    records: Records<R>,
    /// Measure name of each column after the fixed four.
    columns: Vec<String>,
    validator: Validator,
}

impl<R: BufRead> CsvRows<R> {
    /// Reads and checks the header; a bad header is an error for the
    /// whole file, since every row would fail the same way.
    pub fn new(input: R, validator: Validator) -> anyhow::Result<CsvRows<R>> {
        let mut records = Records::new(input);
        let Some(header) = records.next_record().context("reading the CSV header")? else {
            bail!("the file is empty; a readings CSV starts with a header line");
        };
        let line = header.line;
        let text = header
            .text
            .map_err(|e| anyhow::anyhow!("line {line}: the header {e}"))?;
        let names: Vec<String> = split_record(&text)
            .map_err(|e| anyhow::anyhow!("line {line}: the header is not CSV: {e}"))?
            .iter()
            .map(|name| name.trim().to_string())
            .collect();
        let expected = CSV_FIXED_COLUMNS.join(",");
        if names.len() < CSV_FIXED_COLUMNS.len()
            || names[..CSV_FIXED_COLUMNS.len()] != CSV_FIXED_COLUMNS
        {
            bail!(
                "line {line}: the header must start with `{expected}` and then name measures; \
                 it is `{}`",
                names.join(",")
            );
        }
        let mut columns: Vec<String> = Vec::new();
        for name in &names[CSV_FIXED_COLUMNS.len()..] {
            validator
                .check_measure_name(name)
                .map_err(|e| anyhow::anyhow!("line {line}: header column {e}"))?;
            if columns.contains(name) {
                bail!("line {line}: the header names measure `{name}` twice");
            }
            columns.push(name.clone());
        }
        if columns.is_empty() {
            bail!(
                "line {line}: the header names no measure columns after `{expected}`; the \
                 dataset has: {}",
                validator.known_list()
            );
        }
        Ok(CsvRows {
            records,
            columns,
            validator,
        })
    }

    fn parse_record(&self, text: &str) -> Result<Reading, String> {
        let cells = split_record(text)?;
        let expected = CSV_FIXED_COLUMNS.len() + self.columns.len();
        if cells.len() != expected {
            return Err(format!(
                "has {} fields; the header has {expected}",
                cells.len()
            ));
        }
        let cell = |i: usize| cells[i].trim();
        let at = parse_time(cell(1)).map_err(|e| format!("timestamp: {e}"))?;
        let location = match (cell(2), cell(3)) {
            ("", "") => None,
            ("", _) | (_, "") => {
                return Err("lat and lon must both be given or both be empty".to_string());
            }
            (lat, lon) => Some((parse_number("lat", lat)?, parse_number("lon", lon)?)),
        };
        let mut values = BTreeMap::new();
        for (i, name) in self.columns.iter().enumerate() {
            let text = cell(CSV_FIXED_COLUMNS.len() + i);
            if !text.is_empty() {
                values.insert(name.clone(), parse_number(name, text)?);
            }
        }
        self.validator.reading(cell(0), at, location, values)
    }
}

impl<R: BufRead> Iterator for CsvRows<R> {
    type Item = anyhow::Result<Row>;

    fn next(&mut self) -> Option<anyhow::Result<Row>> {
        match self.records.next_record() {
            Ok(None) => None,
            Ok(Some(record)) => Some(Ok(Row {
                line: record.line,
                end: record.end,
                reading: record.text.and_then(|text| self.parse_record(&text)),
            })),
            Err(error) => Some(Err(anyhow::Error::new(error)
                .context(format!("reading line {} of the CSV", self.records.line + 1)))),
        }
    }
}

// ---- JSON ----------------------------------------------------------------------------

/// The rows of a readings JSON file: an array, or one object per line.
#[derive(Debug)]
pub enum JsonRows<R: BufRead> {
    Lines {
        reader: R,
        line: u64,
        bytes: u64,
        buffer: Vec<u8>,
        validator: Validator,
    },
    Array {
        data: Vec<u8>,
        pos: usize,
        line: u64,
        /// Elements parsed; the next one needs a comma before it.
        elements: u64,
        done: bool,
        validator: Validator,
    },
}

impl<R: BufRead> JsonRows<R> {
    /// Looks at the first character: `[` is an array (read whole, since an
    /// array cannot be resumed after a syntax error anyway), anything else
    /// is JSON lines (read line by line).
    pub fn new(mut input: R, validator: Validator) -> anyhow::Result<JsonRows<R>> {
        let mut skipped_lines = 0u64;
        let mut skipped_bytes = 0u64;
        let first = loop {
            let buffer = input.fill_buf().context("reading the JSON")?;
            if buffer.is_empty() {
                break None;
            }
            match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(at) => {
                    let first = buffer[at];
                    skipped_lines += count_newlines(&buffer[..at]);
                    skipped_bytes += at as u64;
                    input.consume(at);
                    break Some(first);
                }
                None => {
                    let n = buffer.len();
                    skipped_lines += count_newlines(buffer);
                    skipped_bytes += n as u64;
                    input.consume(n);
                }
            }
        };
        if first == Some(b'[') {
            let mut data = Vec::new();
            input
                .read_to_end(&mut data)
                .context("reading the JSON array")?;
            return Ok(JsonRows::Array {
                data,
                pos: 1,
                line: skipped_lines + 1,
                elements: 0,
                done: false,
                validator,
            });
        }
        Ok(JsonRows::Lines {
            reader: input,
            line: skipped_lines,
            bytes: skipped_bytes,
            buffer: Vec::new(),
            validator,
        })
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

impl<R: BufRead> Iterator for JsonRows<R> {
    type Item = anyhow::Result<Row>;

    fn next(&mut self) -> Option<anyhow::Result<Row>> {
        match self {
            JsonRows::Lines {
                reader,
                line,
                bytes,
                buffer,
                validator,
            } => loop {
                buffer.clear();
                match reader.read_until(b'\n', buffer) {
                    Ok(0) => return None,
                    Ok(n) => {
                        *line += 1;
                        *bytes += n as u64;
                        if buffer.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let reading = serde_json::from_slice::<Value>(buffer)
                            .map_err(|e| format!("not JSON: {e}"))
                            .and_then(|value| json_reading(&value, validator));
                        return Some(Ok(Row {
                            line: *line,
                            end: *bytes,
                            reading,
                        }));
                    }
                    Err(error) => {
                        return Some(Err(anyhow::Error::new(error)
                            .context(format!("reading line {} of the JSON", *line + 1))));
                    }
                }
            },
            JsonRows::Array {
                data,
                pos,
                line,
                elements,
                done,
                validator,
            } => {
                if *done {
                    return None;
                }
                let result = next_element(data, pos, line, elements, validator);
                match result {
                    Ok(Some(row)) => Some(Ok(row)),
                    Ok(None) => {
                        *done = true;
                        None
                    }
                    Err(error) => {
                        *done = true;
                        Some(Err(error))
                    }
                }
            }
        }
    }
}

/// Skips whitespace in `data` from `pos`, counting lines.
fn skip_whitespace(data: &[u8], pos: &mut usize, line: &mut u64) {
    while let Some(b) = data.get(*pos) {
        if !b.is_ascii_whitespace() {
            break;
        }
        if *b == b'\n' {
            *line += 1;
        }
        *pos += 1;
    }
}

/// The next element of a JSON array (`pos` is just past `[` or the
/// previous element), or `None` at the closing bracket.
fn next_element(
    data: &[u8],
    pos: &mut usize,
    line: &mut u64,
    elements: &mut u64,
    validator: &Validator,
) -> anyhow::Result<Option<Row>> {
    skip_whitespace(data, pos, line);
    match data.get(*pos) {
        Some(b']') => {
            *pos += 1;
            skip_whitespace(data, pos, line);
            if *pos < data.len() {
                bail!("line {line}: unexpected text after the closing `]` of the array");
            }
            return Ok(None);
        }
        Some(b',') if *elements > 0 => {
            *pos += 1;
            skip_whitespace(data, pos, line);
        }
        None => bail!("line {line}: the JSON array is not closed with `]`"),
        Some(_) if *elements > 0 => {
            bail!("line {line}: expected `,` or `]` after array element {elements}")
        }
        Some(_) => {}
    }
    let start_line = *line;
    let mut stream = serde_json::Deserializer::from_slice(&data[*pos..]).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(value)) => value,
        Some(Err(error)) => bail!(
            "line {}: the JSON array is malformed ({error}); nothing after this point was read",
            start_line + error.line().saturating_sub(1) as u64
        ),
        None => bail!("line {line}: the JSON array ends without `]`"),
    };
    let used = stream.byte_offset();
    *line += count_newlines(&data[*pos..*pos + used]);
    *pos += used;
    *elements += 1;
    Ok(Some(Row {
        line: start_line,
        // The array was read whole; `+ 1` counts the opening bracket.
        end: *pos as u64 + 1,
        reading: json_reading(&value, validator),
    }))
}

/// A reading from its JSON object.
fn json_reading(value: &Value, validator: &Validator) -> Result<Reading, String> {
    const KEYS: &str = "sensor_id, at, values, lat, lon";
    let Value::Object(object) = value else {
        return Err(format!("is not a JSON object with keys {KEYS}"));
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "sensor_id" | "at" | "values" | "lat" | "lon"))
    {
        return Err(format!(
            "unknown key `{}` (expected {KEYS})",
            key.escape_debug()
        ));
    }
    let sensor_id = match object.get("sensor_id") {
        Some(Value::String(id)) => id.as_str(),
        Some(_) => return Err("sensor_id: must be a string".to_string()),
        None => return Err("sensor_id: missing".to_string()),
    };
    let at = match object.get("at") {
        Some(Value::String(text)) => parse_time(text).map_err(|e| format!("at: {e}"))?,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ms) => parse_time(&ms.to_string()).map_err(|e| format!("at: {e}"))?,
            None => return Err(format!("at: {n} is not whole Unix milliseconds")),
        },
        Some(_) => {
            return Err("at: must be RFC 3339 text or integer Unix milliseconds".to_string());
        }
        None => return Err("at: missing".to_string()),
    };
    let coordinate = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(format!("{key}: must be a number")),
    };
    let location = match (coordinate("lat")?, coordinate("lon")?) {
        (None, None) => None,
        (Some(lat), Some(lon)) => Some((lat, lon)),
        _ => return Err("lat and lon must both be given or both be left out".to_string()),
    };
    let Some(Value::Object(given)) = object.get("values") else {
        return Err("values: must be an object of measure name to number".to_string());
    };
    let mut values = BTreeMap::new();
    for (name, value) in given {
        match value {
            Value::Null => {}
            Value::Number(n) => {
                let v = n
                    .as_f64()
                    .ok_or_else(|| format!("values.{name}: {n} is not a number"))?;
                values.insert(name.clone(), v);
            }
            _ => return Err(format!("values.{name}: must be a number or null")),
        }
    }
    validator.reading(sensor_id, at, location, values)
}

// ---- Sending -----------------------------------------------------------------------

/// One batch as the reading side cuts it.
#[derive(Debug)]
struct Batch {
    /// From 1, in file order.
    sequence: u64,
    readings: Vec<Reading>,
    /// [`session::batch_digest`] of the readings.
    digest: Digest32,
}

/// What the reading side did.
#[derive(Debug, Default)]
struct Produced {
    rows: u64,
    /// Good rows, put into batches.
    batched: u64,
    batches: u64,
    rejected: Vec<Rejected>,
    rejected_total: u64,
    /// Why reading stopped before the end of the file, if it did.
    fatal: Option<anyhow::Error>,
}

/// Reads rows, keeps the bad ones aside and cuts the good ones into
/// numbered batches. The same file, dataset and batch size always give
/// the same batches, which is what lets `--resume` skip some.
fn produce(
    rows: impl Iterator<Item = anyhow::Result<Row>>,
    dataset_id: &str,
    batch_size: usize,
    tx: &mpsc::Sender<Batch>,
    progress: &ProgressBar,
) -> Produced {
    let mut produced = Produced::default();
    let mut batch: Vec<Reading> = Vec::with_capacity(batch_size);
    let mut batch_bytes = 0usize;
    let send = |readings: Vec<Reading>, produced: &mut Produced| -> bool {
        let n = readings.len() as u64;
        let batch = Batch {
            sequence: produced.batches + 1,
            digest: session::batch_digest(dataset_id, &readings),
            readings,
        };
        if tx.blocking_send(batch).is_err() {
            // The sending side stopped (the node refused a batch or
            // could not be reached); it reports why.
            return false;
        }
        produced.batched += n;
        produced.batches += 1;
        true
    };
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                produced.fatal = Some(error);
                break;
            }
        };
        produced.rows += 1;
        if produced.rows % 512 == 0 {
            progress.set_position(row.end);
        }
        match row.reading {
            Ok(reading) => {
                batch_bytes += reading.encoded_len() + 4;
                batch.push(reading);
                if batch.len() >= batch_size || batch_bytes >= MAX_BATCH_BYTES {
                    progress.set_position(row.end);
                    batch_bytes = 0;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                    if !send(full, &mut produced) {
                        return produced;
                    }
                }
            }
            Err(reason) => {
                produced.rejected_total += 1;
                if produced.rejected.len() < LISTED_REJECTIONS {
                    produced.rejected.push(Rejected {
                        line: row.line,
                        reason,
                    });
                }
            }
        }
    }
    if !batch.is_empty() && produced.fatal.is_none() {
        send(batch, &mut produced);
    }
    produced
}

fn open(path: &Path) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    if path == Path::new("-") {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok((Box::new(file), size))
}

/// Progress templates: by bytes of a file, or bytes read from stdin.
const BAR_TEMPLATE: &str = "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                            ({bytes_per_sec}, {eta} left)";
const SPINNER_TEMPLATE: &str = "{spinner} [{elapsed_precise}] {bytes} read ({bytes_per_sec})";

fn progress_bar(size: Option<u64>) -> ProgressBar {
    // indicatif draws to stderr, and not at all when it is not a terminal.
    let (bar, template) = match size {
        Some(size) => (ProgressBar::new(size), BAR_TEMPLATE),
        None => (ProgressBar::no_length(), SPINNER_TEMPLATE),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Where the node's session for this file stands, as far as the CLI is
/// concerned.
#[derive(Debug, Clone, Default)]
struct Resume {
    /// The session id (none for standard input).
    session: Option<String>,
    /// Batches the node had stored before this run (skipped, not sent).
    acked: u64,
    /// Their chain of digests, as the node computed it.
    chain: Digest32,
}

/// What the sending side did.
#[derive(Debug, Default)]
struct Sent {
    /// Batches (and their readings) skipped because the node had them.
    skipped_batches: u64,
    skipped_readings: u64,
    /// Batches the node acknowledged in this run: the first and the last.
    first_acked: Option<u64>,
    last_acked: Option<u64>,
    acked_readings: u64,
    inserted: u64,
    replaced: u64,
    /// Batches handed to the connection and not acknowledged (number,
    /// readings), in order.
    unacknowledged: Vec<(u64, u64)>,
    /// Why the node ended the call, if it did so early.
    failure: Option<tonic::Status>,
    /// The resuming check failed: the node's session is not this file's.
    mismatch: Option<String>,
}

impl Sent {
    fn acked_batches(&self) -> u64 {
        match (self.first_acked, self.last_acked) {
            (Some(first), Some(last)) => last + 1 - first,
            _ => 0,
        }
    }

    /// The last batch of the file known to be stored.
    fn stored_through(&self) -> u64 {
        self.last_acked.unwrap_or(self.skipped_batches)
    }
}

/// Batches the CLI hands to the connection ahead of their
/// acknowledgement: one being stored while the next travels.
const WINDOW: usize = 2;

/// Skips the batches the node has, then sends the rest over one
/// `IngestBatches` call, keeping account of every acknowledgement.
async fn send(
    client: &mut crate::local::Local,
    dataset_id: &str,
    resume: &Resume,
    mut batches: mpsc::Receiver<Batch>,
) -> Sent {
    let mut sent = Sent::default();
    let mut chain = [0u8; 32];
    // 1. Batches the node has: check they are the ones it stored.
    let first = loop {
        let Some(batch) = batches.recv().await else {
            if sent.skipped_batches < resume.acked || chain != resume.chain {
                sent.mismatch = Some(format!(
                    "the node has {} batches of this session stored, but the file gives {} \
                     that do not match them",
                    resume.acked, sent.skipped_batches
                ));
            }
            return sent;
        };
        if batch.sequence > resume.acked {
            break batch;
        }
        chain = session::chain_next(&chain, &batch.digest);
        sent.skipped_batches += 1;
        sent.skipped_readings += batch.readings.len() as u64;
    };
    if chain != resume.chain {
        sent.mismatch = Some(format!(
            "the node's first {} batches of this session are not the file's first {} batches",
            resume.acked, resume.acked
        ));
        return sent;
    }

    // 2. The rest, acknowledged one by one.
    let (requests, rx) = mpsc::channel::<IngestBatch>(WINDOW);
    let request = |batch: Batch| IngestBatch {
        dataset_id: dataset_id.to_string(),
        sequence: batch.sequence,
        session_id: resume.session.clone().unwrap_or_default(),
        // A run that does not resume starts the session over.
        restart: resume.acked == 0 && batch.sequence == 1,
        readings: batch.readings,
    };
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    pending.push_back((first.sequence, first.readings.len() as u64));
    // The channel holds WINDOW requests and at most WINDOW are pending,
    // so this never waits.
    let _ = requests.send(request(first)).await;
    let mut requests = Some(requests);
    let mut acks = match client.ingest_batches(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            sent.unacknowledged = pending.into_iter().collect();
            sent.failure = Some(status);
            return sent;
        }
    };
    loop {
        let more = requests.is_some() && pending.len() < WINDOW;
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    match pending.pop_front() {
                        Some((sequence, _)) if sequence == ack.sequence => {}
                        other => {
                            if let Some(other) = other {
                                pending.push_front(other);
                            }
                            sent.failure = Some(tonic::Status::internal(format!(
                                "the node acknowledged batch {} out of turn",
                                ack.sequence
                            )));
                            break;
                        }
                    }
                    sent.first_acked.get_or_insert(ack.sequence);
                    sent.last_acked = Some(ack.sequence);
                    sent.acked_readings += ack.readings;
                    sent.inserted += ack.inserted;
                    sent.replaced += ack.replaced;
                }
                Ok(None) => {
                    if requests.is_some() || !pending.is_empty() {
                        sent.failure = Some(tonic::Status::unknown(
                            "the node ended the call before acknowledging every batch",
                        ));
                    }
                    break;
                }
                Err(status) => {
                    sent.failure = Some(status);
                    break;
                }
            },
            batch = batches.recv(), if more => match batch {
                Some(batch) => {
                    pending.push_back((batch.sequence, batch.readings.len() as u64));
                    if let Some(requests) = &requests {
                        let _ = requests.send(request(batch)).await;
                    }
                }
                // The file is read: end the stream; the node ends the call
                // after the last acknowledgement.
                None => requests = None,
            },
        }
    }
    sent.unacknowledged = pending.into_iter().collect();
    sent
}

async fn ingest(args: IngestArgs, format: Format) -> anyhow::Result<ExitCode> {
    let stdin = args.file == Path::new("-");
    if args.resume && stdin {
        bail!(
            "--resume needs a file: standard input cannot be read again to find the batches \
             the node already has"
        );
    }
    let mut client = args.node.connect().await?;
    let dataset = args.node.dataset(&mut client, &args.dataset).await?;
    if dataset.kind != "sensor" {
        bail!(
            "dataset `{}` is a {} dataset; readings go into sensor datasets",
            dataset.id,
            dataset.kind
        );
    }
    // The session: a digest of the file and how it is cut into batches.
    let mut resume = Resume::default();
    if !stdin {
        let kind = match format {
            Format::Csv => "csv",
            Format::Json => "json",
        };
        let (input, _) = open(&args.file)?;
        let id = session::file_session_id(kind, &dataset.id, args.batch_size, input)
            .with_context(|| format!("reading {}", args.file.display()))?;
        if args.resume {
            let state = client
                .ingest_session(IngestSessionRequest {
                    session_id: id.clone(),
                })
                .await
                .map_err(|status| {
                    args.node
                        .refused("say how far this file is stored", &status)
                })?
                .into_inner();
            if state.found {
                resume.acked = state.acked;
                resume.chain = <Digest32>::try_from(state.chain.as_slice()).unwrap_or_default();
            }
        }
        resume.session = Some(id);
    }
    let validator = Validator::new(output::measures(&dataset), OffsetDateTime::now_utc());
    let (input, size) = open(&args.file)?;
    let input = BufReader::with_capacity(256 * 1024, input);
    // Header problems and unreadable files stop here, before any call.
    let rows: Box<dyn Iterator<Item = anyhow::Result<Row>> + Send> = match format {
        Format::Csv => Box::new(CsvRows::new(input, validator)?),
        Format::Json => Box::new(JsonRows::new(input, validator)?),
    };

    let progress = progress_bar(size);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
    let dataset_id = dataset.id.clone();
    let batch_size = args.batch_size as usize;
    let reader_progress = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        produce(rows, &dataset_id, batch_size, &tx, &reader_progress)
    });
    let sent = send(&mut client, &dataset.id, &resume, rx).await;
    let produced = reader
        .await
        .context("the file reader stopped unexpectedly")?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();

    print!(
        "{}",
        summary(&args.file, &produced, &resume, &sent, elapsed)
    );
    if let Some(mismatch) = sent.mismatch {
        bail!(
            "cannot resume: {mismatch} (the rows this command accepts may have changed, for \
             instance readings that were too far in the future); nothing was sent. Ingest the \
             file without --resume to send it all again (re-sent readings replace, never \
             duplicate)"
        );
    }
    if let Some(status) = &sent.failure {
        let refused = args.node.refused("store the readings", status);
        return Err(if status.code() == tonic::Code::InvalidArgument {
            refused.context(
                "fix the reading named and ingest the file again with --resume (batches the \
                 node acknowledged are not sent again)",
            )
        } else if stdin {
            refused
        } else {
            refused.context(
                "run the same command with --resume to send only the batches the node does \
                 not have",
            )
        });
    }
    if let Some(fatal) = produced.fatal {
        return Err(fatal.context(format!(
            "stopped reading {} after {} rows; batches 1..={} of it are stored",
            args.file.display(),
            produced.rows,
            sent.stored_through()
        )));
    }
    Ok(if produced.rejected_total > 0 {
        ExitCode::from(EXIT_ROWS_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `batch a` or `batches a..=b`, and whether that is one batch.
fn batches_named(first: u64, last: u64) -> (String, bool) {
    if first == last {
        (format!("batch {first}"), true)
    } else {
        (format!("batches {first}..={last}"), false)
    }
}

/// The report printed at the end: what was read, skipped, acknowledged,
/// and, if the call failed, exactly which batches are stored.
fn summary(
    file: &Path,
    produced: &Produced,
    resume: &Resume,
    sent: &Sent,
    elapsed: Duration,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        produced.rows as f64 / seconds
    } else {
        0.0
    };
    let mut text = format!(
        "read {} rows from {} in {seconds:.1} s ({rate:.0} rows/s)\n",
        produced.rows,
        file.display()
    );
    if sent.skipped_batches > 0 {
        text.push_str(&format!(
            "skipped {} batches ({} readings) the node had already stored (session {})\n",
            sent.skipped_batches,
            sent.skipped_readings,
            resume.session.as_deref().unwrap_or("-")
        ));
    }
    if sent.mismatch.is_some() {
        return text;
    }
    if sent.failure.is_none() {
        text.push_str(&format!(
            "ingested {} readings in {} batches: {} new, {} replaced\n",
            sent.acked_readings,
            sent.acked_batches(),
            sent.inserted,
            sent.replaced
        ));
    } else if sent.acked_batches() > 0 {
        text.push_str(&format!(
            "before the call failed, the node acknowledged {} readings in {} batches: {} new, \
             {} replaced\n",
            sent.acked_readings,
            sent.acked_batches(),
            sent.inserted,
            sent.replaced
        ));
    }
    if let Some(status) = &sent.failure {
        let through = sent.stored_through();
        if through == 0 {
            text.push_str("no batch of the file is stored\n");
        } else {
            let (named, one) = batches_named(1, through);
            let verb = if one { "is" } else { "are" };
            text.push_str(&format!(
                "{named} of the file {verb} stored (acknowledged by the node)\n"
            ));
        }
        if let (Some(&(first, _)), Some(&(last, _))) =
            (sent.unacknowledged.first(), sent.unacknowledged.last())
        {
            let readings: u64 = sent.unacknowledged.iter().map(|(_, n)| n).sum();
            let (named, one) = batches_named(first, last);
            // The node answered with a refusal: it stores nothing of the
            // refused batch and reads nothing after it.
            let refused = matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::ResourceExhausted
            );
            text.push_str(&match (refused, one) {
                (true, true) => {
                    format!("{named} ({readings} readings) is not stored: the node refused it\n")
                }
                (true, false) => format!(
                    "{named} ({readings} readings) are not stored: the node refused batch \
                     {first} and read none after it\n"
                ),
                (false, true) => format!(
                    "{named} ({readings} readings) was sent but not acknowledged: it is stored \
                     whole or not at all, and --resume asks the node which\n"
                ),
                (false, false) => format!(
                    "{named} ({readings} readings) were sent but not acknowledged: each is \
                     stored whole or not at all, and --resume asks the node which\n"
                ),
            });
        }
        match sent
            .unacknowledged
            .last()
            .map_or(through, |&(last, _)| last)
        {
            0 => text.push_str("no batch was sent\n"),
            last => text.push_str(&format!("batches after {last} were not sent\n")),
        }
    }
    if produced.rejected_total > 0 {
        text.push_str(&format!(
            "rejected {} rows (not sent):\n",
            produced.rejected_total
        ));
        for rejected in &produced.rejected {
            text.push_str(&format!("  line {}: {}\n", rejected.line, rejected.reason));
        }
        let unlisted = produced.rejected_total - produced.rejected.len() as u64;
        if unlisted > 0 {
            text.push_str(&format!("  ... and {unlisted} more\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-03-01 0:00 UTC)
    }

    fn validator() -> Validator {
        Validator::new(
            vec!["pm2_5".to_string(), "pm10".to_string(), "no2".to_string()],
            now(),
        )
    }

    /// (line, reading or reason) of every row; panics on a fatal error.
    fn rows(
        iter: impl Iterator<Item = anyhow::Result<Row>>,
    ) -> Vec<(u64, Result<Reading, String>)> {
        iter.map(|row| {
            let row = row.expect("no fatal error");
            (row.line, row.reading)
        })
        .collect()
    }

    fn csv(text: &str) -> anyhow::Result<Vec<(u64, Result<Reading, String>)>> {
        Ok(rows(CsvRows::new(text.as_bytes(), validator())?))
    }

    fn json(text: &str) -> anyhow::Result<Vec<(u64, Result<Reading, String>)>> {
        Ok(rows(JsonRows::new(text.as_bytes(), validator())?))
    }

    fn reason(row: &(u64, Result<Reading, String>)) -> &str {
        match &row.1 {
            Ok(_) => panic!("line {} was accepted", row.0),
            Err(reason) => reason,
        }
    }

    #[test]
    fn times_are_rfc3339_or_milliseconds() {
        let at = time::macros::datetime!(2026-01-01 12:00 UTC);
        assert_eq!(parse_time("2026-01-01T12:00:00Z"), Ok(at));
        assert_eq!(parse_time("2026-01-01T13:00:00+01:00"), Ok(at));
        assert_eq!(parse_time("1767268800000"), Ok(at));
        assert_eq!(
            parse_time("1767268800123"),
            Ok(at + time::Duration::milliseconds(123))
        );
        assert!(parse_time("2026-01-01").is_err());
        assert!(parse_time("12.5").is_err());
        assert!(parse_time("").is_err());
        assert!(
            parse_time("99999999999999999999")
                .expect_err("overflow")
                .contains("out of range")
        );
    }

    #[test]
    fn csv_rows_are_checked_with_line_numbers() {
        let text = "\
sensor_id,timestamp,lat,lon,pm2_5,no2
s1,2026-01-01T00:00:00Z,56.15,10.2,4.5,12
s2,1767225600000,,,4.6,
s3,2026-01-01T00:00:00Z,56.15,10.2,,

s4,not-a-time,56.15,10.2,1,2
s5,2026-01-01T00:00:00Z,91,10.2,1,2
s6,2026-01-01T00:00:00Z,56.15,,1,2
s7,2026-01-01T00:00:00Z,56.15,10.2,abc,2
s8,2026-01-01T00:00:00Z,56.15,10.2,NaN,2
s9,2026-01-01T00:00:00Z,56.15,10.2,1
,2026-01-01T00:00:00Z,56.15,10.2,1,2
s10,1999-12-31T23:59:59Z,,,1,2
s11,2026-03-03T00:00:00Z,,,1,2
\"s,12\",2026-01-01T00:00:00.5Z,,,1,2
";
        let rows = csv(text).expect("header is fine");
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

        let first = rows[0].1.as_ref().expect("valid");
        assert_eq!(first.sensor_id, "s1");
        assert_eq!(first.values.get("pm2_5"), Some(&4.5));
        assert_eq!(first.values.get("no2"), Some(&12.0));
        assert_eq!(
            first.location,
            Some(Location {
                lat: 56.15,
                lon: 10.2
            })
        );

        let second = rows[1].1.as_ref().expect("valid");
        assert_eq!(second.location, None);
        assert_eq!(second.values.len(), 1, "empty cell is a missing value");
        assert_eq!(
            second.at,
            Some(output::timestamp(
                time::macros::datetime!(2026-01-01 0:00 UTC)
            ))
        );

        assert!(
            reason(&rows[2]).contains("no values"),
            "{}",
            reason(&rows[2])
        );
        assert!(reason(&rows[3]).starts_with("timestamp: `not-a-time`"));
        assert_eq!(reason(&rows[4]), "lat: 91 is outside -90..=90");
        assert!(reason(&rows[5]).contains("both"));
        assert_eq!(reason(&rows[6]), "pm2_5: `abc` is not a number");
        assert!(reason(&rows[7]).contains("not a finite number"));
        assert_eq!(reason(&rows[8]), "has 5 fields; the header has 6");
        assert!(reason(&rows[9]).starts_with("sensor_id:"));
        assert!(reason(&rows[10]).contains("before 2000-01-01"));
        assert!(reason(&rows[11]).contains("in the future"));
        let quoted = rows[12].1.as_ref().expect("quoted id");
        assert_eq!(quoted.sensor_id, "s,12");
        assert_eq!(quoted.at.map(|t| t.nanos), Some(500_000_000));
    }

    #[test]
    fn csv_line_numbers_survive_crlf_blank_lines_quotes_and_bad_bytes() {
        let mut bytes = "\u{feff}sensor_id,timestamp,lat,lon,no2\r\n\r\n\
                         s1,2026-01-01T00:00:00Z,,,1\r\n\
                         \"multi\nline\",2026-01-01T00:00:00Z,,,2\r\n\
                         \"say \"\"hi\"\"\", 2026-01-01T00:00:00Z , , ,3\r\n\
                         s4,2026-01-01T00:00:00Z,,,"
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(b"\xff\r\n");
        bytes.extend_from_slice(b"s5,2026-01-01T00:00:00Z,,,5\r\n\"open,quote\r\n");
        let rows: Vec<_> = CsvRows::new(bytes.as_slice(), validator())
            .expect("header with BOM")
            .map(|row| row.expect("row"))
            .collect();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4, 6, 7, 8, 9]);
        let ids: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.reading.as_ref().ok())
            .map(|r| r.sensor_id.as_str())
            .collect();
        assert_eq!(ids, vec!["s1", "say \"hi\"", "s5"]);
        let reasons: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.reading.as_ref().err())
            .map(String::as_str)
            .collect();
        // A sensor id may not hold a newline; the node says the same.
        assert!(reasons[0].starts_with("sensor_id: contains"), "{reasons:?}");
        assert!(reasons[1].contains("not valid UTF-8"), "{reasons:?}");
        assert!(reasons[2].contains("not closed"), "{reasons:?}");
        assert_eq!(rows.last().map(|r| r.end), Some(bytes.len() as u64));
    }

    #[test]
    fn split_record_follows_rfc_4180() {
        let fields = |text: &str| -> Vec<String> {
            split_record(text)
                .expect("valid")
                .into_iter()
                .map(Cow::into_owned)
                .collect()
        };
        assert_eq!(fields("a,b,,d"), vec!["a", "b", "", "d"]);
        assert_eq!(fields("\"a,b\",\"\",c"), vec!["a,b", "", "c"]);
        assert_eq!(fields("\"x\"\"y\""), vec!["x\"y"]);
        assert_eq!(fields(""), vec![""]);
        assert_eq!(fields("a,"), vec!["a", ""]);
        assert!(split_record("\"a\"b,c").is_err());
        assert!(split_record("\"a").is_err());
    }

    #[test]
    fn bad_csv_headers_stop_before_anything_is_read() {
        let err = csv("sensor,timestamp,lat,lon,pm2_5\n").expect_err("header");
        assert!(err.to_string().contains("must start with"), "{err}");
        let err = csv("sensor_id,timestamp,lat,lon,pm1\n").expect_err("unknown");
        assert!(
            err.to_string()
                .contains("`pm1` is not a measure of the dataset (it has: pm2_5, pm10, no2)"),
            "{err}"
        );
        let err = csv("sensor_id,timestamp,lat,lon,no2,no2\n").expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
        let err = csv("sensor_id,timestamp,lat,lon\n").expect_err("none");
        assert!(err.to_string().contains("no measure columns"), "{err}");
        assert!(csv("").is_err(), "an empty file has no header");
    }

    #[test]
    fn json_lines_are_checked_with_line_numbers() {
        let text = r#"{"sensor_id":"s1","at":"2026-01-01T00:00:00Z","values":{"pm2_5":4.5},"lat":56.1,"lon":10.2}

{"sensor_id":"s2","at":1767225600000,"values":{"no2":12,"pm10":null}}
{"sensor_id":"s3","at":"2026-01-01T00:00:00Z","values":{"pm1":1}}
{"sensor_id":"s4","at":"2026-01-01T00:00:00Z","values":{"no2":1},"extra":1}
not json
[1]
{"sensor_id":"s5","at":"yesterday","values":{"no2":1}}
{"sensor_id":"s6","at":"2026-01-01T00:00:00Z","values":{"no2":1},"lat":56.1}
{"sensor_id":"s7","at":"2026-01-01T00:00:00Z","values":{"no2":"1"}}
{"sensor_id":"s8","at":"2026-01-01T00:00:00Z","values":{"no2":1},"lat":56.1,"lon":200}
{"at":"2026-01-01T00:00:00Z","values":{"no2":1}}
"#;
        let rows = json(text).expect("json lines");
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let first = rows[0].1.as_ref().expect("valid");
        assert_eq!(
            first.location,
            Some(Location {
                lat: 56.1,
                lon: 10.2
            })
        );
        let second = rows[1].1.as_ref().expect("valid");
        assert_eq!(second.values.len(), 1, "null is a missing value");
        assert_eq!(second.location, None);
        assert!(reason(&rows[2]).contains("`pm1` is not a measure"));
        assert!(reason(&rows[3]).contains("unknown key `extra`"));
        assert!(reason(&rows[4]).starts_with("not JSON"));
        assert!(reason(&rows[5]).contains("not a JSON object"));
        assert!(reason(&rows[6]).starts_with("at: `yesterday`"));
        assert!(reason(&rows[7]).contains("both"));
        assert_eq!(reason(&rows[8]), "values.no2: must be a number or null");
        assert_eq!(reason(&rows[9]), "lon: 200 is outside -180..=180");
        assert_eq!(reason(&rows[10]), "sensor_id: missing");
    }

    #[test]
    fn json_arrays_give_element_lines_and_stop_on_syntax_errors() {
        let text = "\n  [\n  {\"sensor_id\":\"s1\",\"at\":\"2026-01-01T00:00:00Z\",\"values\":{\"no2\":1}},\n  {\"sensor_id\":\"s2\",\n   \"at\":\"2026-01-01T00:00:00Z\",\"values\":{}},\n  {\"sensor_id\":\"s3\",\"at\":1767225600000,\"values\":{\"pm10\":3}}\n]\n";
        let rows = json(text).expect("array");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].0, 3);
        assert!(rows[0].1.is_ok());
        assert_eq!(rows[1].0, 4);
        assert!(reason(&rows[1]).contains("no values"));
        assert_eq!(rows[2].0, 6);
        assert!(rows[2].1.is_ok());
        assert!(json("[]").expect("empty").is_empty());

        let broken = "[\n{\"sensor_id\":\"s1\",\"at\":\"2026-01-01T00:00:00Z\",\"values\":{\"no2\":1}},\n{\"sensor_id\": oops}\n]";
        let results: Vec<anyhow::Result<Row>> = JsonRows::new(broken.as_bytes(), validator())
            .expect("starts")
            .collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let err = results[1].as_ref().expect_err("syntax");
        assert!(err.to_string().starts_with("line 3:"), "{err}");

        let unclosed: Vec<anyhow::Result<Row>> = JsonRows::new(
            "[{\"sensor_id\":\"s1\",\"at\":1767225600000,\"values\":{\"no2\":1}}".as_bytes(),
            validator(),
        )
        .expect("starts")
        .collect();
        assert!(unclosed.last().expect("some").is_err());
    }

    #[test]
    fn batches_respect_the_size_and_bad_rows_are_kept_aside() {
        let mut text = String::from("sensor_id,timestamp,lat,lon,no2\n");
        for i in 0..25 {
            if i % 10 == 3 {
                text.push_str(&format!("s{i},bad,,,1\n"));
            } else {
                text.push_str(&format!("s{i},2026-01-01T00:00:00Z,,,{i}\n"));
            }
        }
        let rows = CsvRows::new(text.as_bytes(), validator()).expect("header");
        let (tx, mut rx) = mpsc::channel(100);
        let produced = produce(rows, "aarhus-air-quality", 10, &tx, &ProgressBar::hidden());
        drop(tx);
        let mut sizes = Vec::new();
        let mut numbers = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            assert_eq!(
                batch.digest,
                session::batch_digest("aarhus-air-quality", &batch.readings)
            );
            numbers.push(batch.sequence);
            sizes.push(batch.readings.len());
        }
        assert_eq!(sizes, vec![10, 10, 2]);
        assert_eq!(numbers, vec![1, 2, 3]);
        assert_eq!(
            (produced.rows, produced.batched, produced.batches),
            (25, 22, 3)
        );
        assert_eq!(produced.rejected_total, 3);
        assert_eq!(
            produced.rejected.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![5, 15, 25]
        );
        let text = summary(
            Path::new("r.csv"),
            &produced,
            &Resume::default(),
            &Sent::default(),
            Duration::from_secs(1),
        );
        assert!(text.contains("read 25 rows from r.csv"), "{text}");
        assert!(
            text.contains("rejected 3 rows (not sent):\n  line 5: timestamp:"),
            "{text}"
        );
    }

    #[test]
    fn progress_templates_are_valid() {
        for template in [BAR_TEMPLATE, SPINNER_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn the_summary_lists_twenty_rejections_then_counts() {
        let produced = Produced {
            rows: 100,
            batched: 70,
            batches: 1,
            rejected: (1..=20)
                .map(|line| Rejected {
                    line,
                    reason: "bad".to_string(),
                })
                .collect(),
            rejected_total: 30,
            fatal: None,
        };
        let sent = Sent {
            first_acked: Some(1),
            last_acked: Some(1),
            acked_readings: 70,
            inserted: 60,
            replaced: 10,
            ..Sent::default()
        };
        let text = summary(
            Path::new("x.json"),
            &produced,
            &Resume::default(),
            &sent,
            Duration::from_secs(2),
        );
        assert!(text.contains("(50 rows/s)"), "{text}");
        assert!(text.contains("ingested 70 readings in 1 batches: 60 new, 10 replaced"));
        assert!(
            text.contains("  line 20: bad\n  ... and 10 more\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_call_reports_exactly_which_batches_are_stored() {
        let produced = Produced {
            rows: 50,
            batched: 50,
            batches: 10,
            ..Produced::default()
        };
        let resume = Resume {
            session: Some("file-abc".to_string()),
            acked: 3,
            chain: [0; 32],
        };
        // Batches 1..=3 skipped, 4..=6 acknowledged, 7 and 8 in flight
        // when the connection broke.
        let broken = Sent {
            skipped_batches: 3,
            skipped_readings: 15,
            first_acked: Some(4),
            last_acked: Some(6),
            acked_readings: 15,
            inserted: 15,
            unacknowledged: vec![(7, 5), (8, 5)],
            failure: Some(tonic::Status::unavailable("connection reset")),
            ..Sent::default()
        };
        let text = summary(
            Path::new("r.csv"),
            &produced,
            &resume,
            &broken,
            Duration::from_secs(1),
        );
        for expected in [
            "skipped 3 batches (15 readings) the node had already stored (session file-abc)\n",
            "before the call failed, the node acknowledged 15 readings in 3 batches: 15 new, 0 \
             replaced\n",
            "batches 1..=6 of the file are stored (acknowledged by the node)\n",
            "batches 7..=8 (10 readings) were sent but not acknowledged: each is stored whole or \
             not at all",
            "batches after 8 were not sent\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("queued"), "{text}");

        // A refusal: the refused batch and everything after are not stored.
        let refused = Sent {
            unacknowledged: vec![(7, 5)],
            failure: Some(tonic::Status::invalid_argument("batch 7: reading[0] ...")),
            ..broken
        };
        let text = summary(
            Path::new("r.csv"),
            &produced,
            &resume,
            &refused,
            Duration::from_secs(1),
        );
        assert!(
            text.contains("batch 7 (5 readings) is not stored: the node refused it\n"),
            "{text}"
        );

        // Nothing acknowledged and nothing skipped.
        let nothing = Sent {
            unacknowledged: vec![(1, 5)],
            failure: Some(tonic::Status::unavailable("down")),
            ..Sent::default()
        };
        let text = summary(
            Path::new("r.csv"),
            &produced,
            &Resume::default(),
            &nothing,
            Duration::from_secs(1),
        );
        assert!(text.contains("no batch of the file is stored\n"), "{text}");
        assert!(!text.contains("acknowledged 0"), "{text}");
        assert!(
            text.contains("batch 1 (5 readings) was sent but not acknowledged"),
            "{text}"
        );
    }
}
