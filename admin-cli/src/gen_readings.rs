//! `samvirke gen-readings`: write deterministic synthetic readings as CSV
//! in the `ingest csv` format, offline. The same arguments always give the
//! same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args};
use samvirke_node::data::generate::{self, Generator};
use samvirke_node::wire;
use time::OffsetDateTime;

use crate::files;
use crate::output::{self, ReadingCsv};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("end").required(true).multiple(true).args(["until", "rows"])))]
pub struct GenArgs {
    /// Sensor kind: air-quality, waste-bin-fill, parking-occupancy,
    /// traffic-count, water-level, indoor-climate or noise.
    #[arg(long)]
    kind: String,
    /// Municipality code; sensors stand within 5 km of its town hall.
    #[arg(long)]
    code: u32,
    /// How many sensors.
    #[arg(long, default_value_t = 10)]
    sensors: u32,
    /// First instant (RFC 3339 or YYYY-MM-DD); readings fall on multiples
    /// of the kind's interval.
    #[arg(long, value_parser = parse_instant)]
    from: OffsetDateTime,
    /// End of the period (excluded).
    #[arg(long, value_parser = parse_instant)]
    until: Option<OffsetDateTime>,
    /// Stop after this many readings (instead of, or as well as, --until).
    /// Nodes refuse readings more than a day in the future, so for many
    /// rows use more sensors rather than a longer period.
    #[arg(long)]
    rows: Option<u64>,
    /// Seed; other seeds give other sensors and values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the CSV; standard output if not given.
    #[arg(long, value_name = "FILE.csv")]
    out: Option<PathBuf>,
}

fn parse_instant(text: &str) -> Result<OffsetDateTime, String> {
    files::instant(text).map_err(|e| format!("{e:#}"))
}

/// What was written.
#[derive(Debug, Default, PartialEq, Eq)]
struct Written {
    rows: u64,
    last: Option<OffsetDateTime>,
}

pub fn run(args: GenArgs) -> anyhow::Result<ExitCode> {
    let measures: Vec<String> = generate::sensor_kind(&args.kind)?
        .measures
        .into_iter()
        .map(|m| m.name)
        .collect();
    // Without --until the generator runs until --rows stops it.
    let until = args
        .until
        .unwrap_or(time::macros::datetime!(9999-01-01 0:00 UTC));
    if until <= args.from {
        anyhow::bail!("--until is not after --from");
    }
    let readings = generate::generate(
        &args.kind,
        args.code,
        args.sensors,
        args.from,
        until,
        args.seed,
    )?;
    let written = match &args.out {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let written = write_csv(readings, measures, args.rows, BufWriter::new(file))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} readings of {} sensors to {}",
                written.rows,
                args.sensors,
                path.display()
            );
            written
        }
        None => {
            let stdout = BufWriter::new(io::stdout().lock());
            match write_csv(readings, measures, args.rows, stdout) {
                Ok(written) => written,
                Err(error) => {
                    output::finish_output(Err(error))?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    if let Some(last) = written.last
        && last > OffsetDateTime::now_utc() + samvirke_node::data::readings::FUTURE_ALLOWANCE
    {
        eprintln!(
            "note: the last reading is at {}; nodes refuse readings more than a day in the \
             future, so `ingest` will skip those rows (use more --sensors or an earlier --from)",
            output::rfc3339(last)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the readings as CSV, at most `rows` of them.
fn write_csv<W: Write>(
    readings: Generator,
    measures: Vec<String>,
    rows: Option<u64>,
    out: W,
) -> anyhow::Result<Written> {
    let mut csv = ReadingCsv::new(out, measures)?;
    let mut written = Written::default();
    let limit = rows.unwrap_or(u64::MAX);
    for reading in readings {
        if written.rows >= limit {
            break;
        }
        written.last = Some(reading.at);
        csv.write(&wire::reading_to_proto(reading))?;
        written.rows += 1;
    }
    csv.into_inner()?.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{CsvRows, Validator};

    fn generated(seed: u64, until: OffsetDateTime, rows: Option<u64>) -> (Vec<u8>, Written) {
        let readings = generate::generate(
            "air-quality",
            751,
            3,
            time::macros::datetime!(2026-01-01 0:00 UTC),
            until,
            seed,
        )
        .expect("generator");
        let measures = vec!["pm2_5".into(), "pm10".into(), "no2".into()];
        let mut out = Vec::new();
        let written = write_csv(readings, measures, rows, &mut out).expect("write");
        (out, written)
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let until = time::macros::datetime!(2026-01-01 2:00 UTC);
        let (a, written) = generated(1, until, None);
        let (b, _) = generated(1, until, None);
        let (c, _) = generated(2, until, None);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Three sensors every 10 minutes for 2 hours.
        assert_eq!(written.rows, 36);
        let text = String::from_utf8(a).expect("utf8");
        assert!(
            text.starts_with("sensor_id,timestamp,lat,lon,pm2_5,pm10,no2\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 37);
    }

    #[test]
    fn rows_cap_the_output_and_it_reads_back() {
        let far = time::macros::datetime!(9999-01-01 0:00 UTC);
        let (capped, written) = generated(7, far, Some(100));
        assert_eq!(written.rows, 100);
        let (longer, _) = generated(7, far, Some(200));
        assert!(
            longer.starts_with(&capped),
            "a cap is a prefix of a larger cap"
        );

        let validator = Validator::new(
            vec!["pm2_5".into(), "pm10".into(), "no2".into()],
            time::macros::datetime!(2026-06-01 0:00 UTC),
        );
        let rows: Vec<_> = CsvRows::new(capped.as_slice(), validator)
            .expect("header")
            .map(|row| row.expect("row"))
            .collect();
        assert_eq!(rows.len(), 100);
        for row in &rows {
            let reading = row.reading.as_ref().expect("every generated row is valid");
            assert_eq!(reading.values.len(), 3);
            assert!(reading.location.is_some());
        }
    }
}
