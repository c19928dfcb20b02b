//! Output shared by the data commands: times, aligned tables, JSON forms of
//! the protobuf messages (prost types have no `Serialize`), and the
//! readings CSV that `ingest csv`, `query readings --format csv` and
//! `gen-readings` all use.
//!
//! The readings CSV header is `sensor_id,timestamp,lat,lon,<measure>...`;
//! a missing location or value is an empty cell. Numbers are written in
//! Rust's shortest round-trip form, so a file written here reads back to
//! the same values.
//!
//! The readings JSON object is `{sensor_id, at, values, lat?, lon?}`, the
//! same shape `ingest json` reads.

use std::io::{self, Write};

/// The JSON shapes of rows, shared with the node's HTTP API so that both
/// give analysts the same documents.
pub use samvirke_node::http::formats::{
    bucket_json, dataset_json, measures, phase_word as phase_name, pilot_json,
    procedure_word as procedure_name, procurement_json, reading_feature, reading_json,
};

use anyhow::Context;
use clap::ValueEnum;
use samvirke_proto::v1::{Bucket, PartialDate, Pilot, Procurement, Reading};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The first four columns of a readings CSV; the measures follow.
pub const CSV_FIXED_COLUMNS: [&str; 4] = ["sensor_id", "timestamp", "lat", "lon"];

/// `--format` of the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Json,
}

// ---- Times ---------------------------------------------------------------------

/// A protobuf timestamp for an instant.
pub use samvirke_node::wire::timestamp;

/// The instant of a protobuf timestamp, if it is one.
pub fn instant(ts: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// An instant as RFC 3339 in UTC (fractions of a second only when present).
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        // Only years outside 0..=9999 fail; the Unix seconds still say when.
        .unwrap_or_else(|_| format!("{}s after 1970-01-01T00:00:00Z", at.unix_timestamp()))
}

/// A protobuf timestamp as RFC 3339; empty when absent.
pub fn show_timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        None => String::new(),
        Some(ts) => match instant(ts) {
            Some(at) => rfc3339(at),
            None => format!("<invalid time {}s {}ns>", ts.seconds, ts.nanos),
        },
    }
}

// ---- Writing to stdout ---------------------------------------------------------------

/// Treats a closed pipe (`samvirke ... | head`) as a normal end of output.
pub fn finish_output(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        Err(error)
            if error.downcast_ref::<csv::Error>().is_some_and(
                |e| matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe),
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Writes one JSON value on its own line.
pub fn json_line(out: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

// ---- Tables ----------------------------------------------------------------------

/// A table whose column widths are fixed when its header is written, so
/// rows can be printed as they arrive. Widths come from the header and the
/// first rows given; a longer cell later just pushes its row out of line.
#[derive(Debug)]
pub struct Table {
    widths: Vec<usize>,
    right: Vec<bool>,
}

impl Table {
    /// A table with `headers`, sized to fit them and `sample` rows;
    /// `right[i]` right-aligns column `i` (numbers).
    pub fn new(headers: &[String], right: Vec<bool>, sample: &[Vec<String>]) -> Table {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in sample {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        Table { widths, right }
    }

    /// One line of the table (no newline).
    pub fn line(&self, cells: &[String]) -> String {
        let mut line = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            let width = self.widths.get(i).copied().unwrap_or(0);
            let right = self.right.get(i).copied().unwrap_or(false);
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            if right {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i != last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        line
    }
}

/// Prints a whole table: header, then rows, columns aligned.
pub fn print_table(
    out: &mut impl Write,
    headers: &[&str],
    right: Vec<bool>,
    rows: &[Vec<String>],
) -> io::Result<()> {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let table = Table::new(&headers, right, rows);
    writeln!(out, "{}", table.line(&headers))?;
    for row in rows {
        writeln!(out, "{}", table.line(row))?;
    }
    Ok(())
}

/// A number for people: at most six decimals, trailing zeros dropped
/// (`8.700000000000001` shows as `8.7`); tiny values in exponent form.
/// Tables only: CSV and JSON keep every digit so they read back exactly.
pub fn short_number(value: f64) -> String {
    if value != 0.0 && value.abs() < 0.001 {
        return format!("{value:.3e}");
    }
    let text = format!("{value:.6}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Cuts text to `max` characters for a table cell, marking the cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

// ---- Readings ----------------------------------------------------------------------

/// Writes readings as CSV with the ingest header.
#[derive(Debug)]
pub struct ReadingCsv<W: Write> {
    writer: csv::Writer<W>,
    measures: Vec<String>,
    row: Vec<String>,
}

impl<W: Write> ReadingCsv<W> {
    /// Starts the file: writes the header for `measures`.
    pub fn new(out: W, measures: Vec<String>) -> anyhow::Result<ReadingCsv<W>> {
        let mut writer = csv::Writer::from_writer(out);
        let header = CSV_FIXED_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain(measures.iter().cloned());
        writer.write_record(header)?;
        Ok(ReadingCsv {
            writer,
            measures,
            row: Vec::new(),
        })
    }

    /// Writes one reading; values of measures not in the header are left out.
    pub fn write(&mut self, reading: &Reading) -> anyhow::Result<()> {
        self.row.clear();
        self.row.push(reading.sensor_id.clone());
        self.row.push(show_timestamp(reading.at.as_ref()));
        match reading.location {
            Some(location) => {
                self.row.push(location.lat.to_string());
                self.row.push(location.lon.to_string());
            }
            None => {
                self.row.push(String::new());
                self.row.push(String::new());
            }
        }
        for measure in &self.measures {
            self.row.push(
                reading
                    .values
                    .get(measure)
                    .map(f64::to_string)
                    .unwrap_or_default(),
            );
        }
        self.writer.write_record(&self.row)?;
        Ok(())
    }

    /// Flushes what is buffered (after each chunk of a streamed answer).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> anyhow::Result<W> {
        self.writer
            .into_inner()
            .map_err(|e| anyhow::anyhow!("{}", e.error()))
            .context("finishing the CSV output")
    }
}

/// Columns of the bucket table and CSV.
pub const BUCKET_COLUMNS: [&str; 9] = [
    "start",
    "sensor_id",
    "measure",
    "count",
    "min",
    "max",
    "avg",
    "sum",
    "distinct_sensors",
];

/// A bucket's cells, in [`BUCKET_COLUMNS`] order; `show` writes the numbers
/// (`f64::to_string` for CSV, [`short_number`] for tables). A value the
/// provider withheld (min and max of personal data, distinct sensors under
/// an aggregate-only agreement) is an empty cell.
pub fn bucket_cells(bucket: &Bucket, show: fn(f64) -> String) -> Vec<String> {
    vec![
        show_timestamp(bucket.start.as_ref()),
        bucket.sensor_id.clone(),
        bucket.measure.clone(),
        bucket.count.to_string(),
        bucket.min.map(show).unwrap_or_default(),
        bucket.max.map(show).unwrap_or_default(),
        show(bucket.avg),
        show(bucket.sum),
        bucket
            .distinct_sensors
            .map(|d| d.to_string())
            .unwrap_or_default(),
    ]
}

// ---- Catalog and records ---------------------------------------------------------------

/// A partial date as `2023`, `2023-05` or `2023-05-17`; empty when unset.
pub fn show_date(date: Option<&PartialDate>) -> String {
    match date {
        None => String::new(),
        Some(d) if d.year == 0 => String::new(),
        Some(d) => match (d.month, d.day) {
            (0, _) => format!("{}", d.year),
            (m, 0) => format!("{}-{m:02}", d.year),
            (m, d2) => format!("{}-{m:02}-{d2:02}", d.year),
        },
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Columns of the pilots table.
pub const PILOT_COLUMNS: [&str; 7] = [
    "id",
    "title",
    "phase",
    "municipalities",
    "technology",
    "started",
    "budget_dkk",
];

/// A pilot's table cells, in [`PILOT_COLUMNS`] order.
pub fn pilot_cells(pilot: &Pilot) -> Vec<String> {
    vec![
        pilot.id.clone(),
        cut(&pilot.title, 40),
        phase_name(pilot.phase),
        cut(&join(&pilot.municipalities), 24),
        cut(&pilot.technology.join(","), 30),
        show_date(pilot.started.as_ref()),
        if pilot.budget_dkk == 0 {
            String::new()
        } else {
            pilot.budget_dkk.to_string()
        },
    ]
}

/// Columns of the procurements table.
pub const PROCUREMENT_COLUMNS: [&str; 8] = [
    "id",
    "title",
    "buyers",
    "procedure",
    "suppliers",
    "value_dkk",
    "awarded",
    "complaints",
];

/// Who bought, in one cell: municipalities, fellowship, organisation or a count.
fn buyers(procurement: &Procurement) -> String {
    let mut parts = Vec::new();
    if !procurement.buyer_fellowship.is_empty() {
        parts.push(procurement.buyer_fellowship.clone());
    }
    if !procurement.buyer_organisation.is_empty() {
        parts.push(procurement.buyer_organisation.clone());
    }
    if !procurement.buyer_municipalities.is_empty() {
        parts.push(join(&procurement.buyer_municipalities));
    } else if procurement.buyer_count > 0 {
        parts.push(format!("{} municipalities", procurement.buyer_count));
    }
    parts.join("; ")
}

/// A procurement's table cells, in [`PROCUREMENT_COLUMNS`] order.
pub fn procurement_cells(procurement: &Procurement) -> Vec<String> {
    vec![
        procurement.id.clone(),
        cut(&procurement.title, 40),
        cut(&buyers(procurement), 30),
        procedure_name(procurement.procedure),
        cut(&procurement.suppliers.join(","), 30),
        if procurement.value_dkk == 0 {
            String::new()
        } else {
            procurement.value_dkk.to_string()
        },
        show_date(procurement.awarded.as_ref()),
        procurement.complaints.len().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use samvirke_proto::v1::{PilotPhase, Procedure};

    #[test]
    fn times_print_as_rfc3339_utc() {
        let at = time::macros::datetime!(2026-01-01 12:00:00.250 +01:00);
        assert_eq!(rfc3339(at), "2026-01-01T11:00:00.25Z");
        assert_eq!(
            rfc3339(time::macros::datetime!(2026-01-01 0:00 UTC)),
            "2026-01-01T00:00:00Z"
        );
        let ts = timestamp(at);
        assert_eq!(instant(&ts), Some(at));
        assert_eq!(show_timestamp(None), "");
    }

    #[test]
    fn tables_align_and_enum_names_read_well() {
        let mut out = Vec::new();
        print_table(
            &mut out,
            &["id", "n"],
            vec![false, true],
            &[
                vec!["a".into(), "1".into()],
                vec!["long-id".into(), "1234".into()],
            ],
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "id          n\na           1\nlong-id  1234\n"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(short_number(8.700000000000001), "8.7");
        assert_eq!(short_number(19.0), "19");
        assert_eq!(short_number(5.671483333333318), "5.671483");
        assert_eq!(short_number(-0.0000001), "-1.000e-7");
        assert_eq!(short_number(-0.0), "0");
        assert_eq!(short_number(1e20), "100000000000000000000");
        assert_eq!(
            phase_name(PilotPhase::Demonstration as i32),
            "demonstration"
        );
        assert_eq!(
            procedure_name(Procedure::FrameworkMiniTender as i32),
            "framework-mini-tender"
        );
        assert_eq!(phase_name(99), "unknown(99)");
    }
}
