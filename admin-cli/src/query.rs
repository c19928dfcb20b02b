//! `samvirke query readings`: ask a node for readings or time buckets and
//! print them as they stream in.
//!
//! Raw readings print as a table, as CSV with the `ingest csv` header (so
//! the output can be ingested again), as JSON lines in the `ingest json`
//! shape, or as a GeoJSON FeatureCollection of points. Buckets print as a
//! table, CSV or JSON lines.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use samvirke_proto::v1::{
    BoundingBox, Grouping, Order, Radius, Reading, ReadingChunk, ReadingQuery, reading_query,
};
use time::OffsetDateTime;

use crate::api::{self, NodeArgs};
use crate::files;
use crate::output::{self, BUCKET_COLUMNS, ReadingCsv, Table};

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Readings of a sensor dataset in [--from, --until), or aggregates with --bucket.
    ///
    /// Times are RFC 3339 (2026-01-01T06:00:00Z) or a date (2026-01-01,
    /// meaning 00:00 UTC). Output starts as soon as the first chunk arrives.
    Readings(ReadingsArgs),
}

/// `--format` of `query readings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    /// Aligned columns for people.
    Table,
    /// CSV; for readings the `ingest csv` format.
    Csv,
    /// One JSON object per line; for readings the `ingest json` format.
    Json,
    /// A GeoJSON FeatureCollection of points (readings only; readings
    /// without a location are left out and counted on stderr).
    Geojson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

#[derive(Debug, Args)]
pub struct ReadingsArgs {
    /// The sensor dataset.
    #[arg(long)]
    dataset: String,
    #[command(flatten)]
    shape: QueryShape,
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    format: QueryFormat,
    #[command(flatten)]
    node: NodeArgs,
}

/// What a readings question asks, shared by `query readings` (this node)
/// and `ask readings` (the partners).
#[derive(Debug, Args)]
pub struct QueryShape {
    /// Start of the period (included).
    #[arg(long, value_parser = parse_instant)]
    pub from: OffsetDateTime,
    /// End of the period (excluded).
    #[arg(long, value_parser = parse_instant)]
    pub until: OffsetDateTime,
    /// Only this sensor (repeat for several; partners with aggregate-only
    /// agreements refuse).
    #[arg(long = "sensor", value_name = "ID")]
    pub sensors: Vec<String>,
    /// Only readings inside this box (degrees).
    #[arg(long, value_name = "MIN_LAT,MIN_LON,MAX_LAT,MAX_LON", value_parser = parse_bbox,
          allow_hyphen_values = true, conflicts_with = "near")]
    pub bbox: Option<BoundingBox>,
    /// Only readings within KM kilometres of a point.
    #[arg(long, value_name = "LAT,LON,KM", value_parser = parse_near, allow_hyphen_values = true)]
    pub near: Option<Radius>,
    /// Only this measure (repeat for several; default: all).
    #[arg(long = "measure", value_name = "NAME")]
    pub measures: Vec<String>,
    /// Time order.
    #[arg(long, value_enum, default_value_t = OrderArg::Asc)]
    pub order: OrderArg,
    /// At most this many readings (or buckets), from each dataset.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Aggregate into buckets of this size: 30s, 15m, 1h, 1d, ...
    #[arg(long, value_parser = parse_bucket)]
    pub bucket: Option<String>,
    /// With --bucket: one series per sensor instead of over all sensors.
    #[arg(long, requires = "bucket")]
    pub per_sensor: bool,
}

impl QueryShape {
    /// The period must not be empty.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.until <= self.from {
            bail!(
                "--until {} is not after --from {}",
                output::rfc3339(self.until),
                output::rfc3339(self.from)
            );
        }
        Ok(())
    }

    /// The question, of `dataset_id` (empty: whichever the asking picks).
    pub fn to_query(&self, dataset_id: String) -> ReadingQuery {
        let area = match (self.bbox, self.near) {
            (Some(bbox), _) => Some(reading_query::Area::Bbox(bbox)),
            (None, Some(radius)) => Some(reading_query::Area::Radius(radius)),
            (None, None) => None,
        };
        ReadingQuery {
            dataset_id,
            from: Some(output::timestamp(self.from)),
            until: Some(output::timestamp(self.until)),
            sensor_ids: self.sensors.clone(),
            area,
            measures: self.measures.clone(),
            order: match self.order {
                OrderArg::Asc => Order::Ascending,
                OrderArg::Desc => Order::Descending,
            } as i32,
            limit: self.limit.unwrap_or(0),
            bucket: self.bucket.clone().unwrap_or_default(),
            grouping: if self.per_sensor {
                Grouping::PerSensor
            } else {
                Grouping::AllSensors
            } as i32,
        }
    }
}

pub fn run(command: QueryCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueryCommand::Readings(args) => api::block_on(readings(args)),
    }
}

// ---- Argument parsing ---------------------------------------------------------------

pub fn parse_instant(text: &str) -> Result<OffsetDateTime, String> {
    files::instant(text).map_err(|e| format!("{e:#}"))
}

/// Comma-separated numbers, exactly `n` of them.
fn numbers(text: &str, n: usize, shape: &str) -> Result<Vec<f64>, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != n {
        return Err(format!("`{text}` is not {shape}"));
    }
    parts
        .iter()
        .map(|p| {
            p.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{p}` in `{text}` is not a number"))
        })
        .collect()
}

fn check_lat(what: &str, lat: f64) -> Result<(), String> {
    if (-90.0..=90.0).contains(&lat) {
        Ok(())
    } else {
        Err(format!("{what} {lat} is outside -90..=90"))
    }
}

fn check_lon(what: &str, lon: f64) -> Result<(), String> {
    if (-180.0..=180.0).contains(&lon) {
        Ok(())
    } else {
        Err(format!("{what} {lon} is outside -180..=180"))
    }
}

/// `min_lat,min_lon,max_lat,max_lon`.
pub fn parse_bbox(text: &str) -> Result<BoundingBox, String> {
    let v = numbers(text, 4, "min_lat,min_lon,max_lat,max_lon")?;
    let bbox = BoundingBox {
        min_lat: v[0],
        min_lon: v[1],
        max_lat: v[2],
        max_lon: v[3],
    };
    check_lat("min_lat", bbox.min_lat)?;
    check_lon("min_lon", bbox.min_lon)?;
    check_lat("max_lat", bbox.max_lat)?;
    check_lon("max_lon", bbox.max_lon)?;
    if bbox.max_lat < bbox.min_lat {
        return Err(format!(
            "max_lat {} is below min_lat {} (the order is min_lat,min_lon,max_lat,max_lon)",
            bbox.max_lat, bbox.min_lat
        ));
    }
    if bbox.max_lon < bbox.min_lon {
        return Err(format!(
            "max_lon {} is below min_lon {} (the order is min_lat,min_lon,max_lat,max_lon)",
            bbox.max_lon, bbox.min_lon
        ));
    }
    Ok(bbox)
}

/// `lat,lon,km`.
pub fn parse_near(text: &str) -> Result<Radius, String> {
    let v = numbers(text, 3, "lat,lon,km")?;
    check_lat("lat", v[0])?;
    check_lon("lon", v[1])?;
    if v[2] <= 0.0 {
        return Err(format!("the radius {} km must be more than 0", v[2]));
    }
    Ok(Radius {
        lat: v[0],
        lon: v[1],
        km: v[2],
    })
}

pub fn parse_bucket(text: &str) -> Result<String, String> {
    samvirke_node::data::parse_bucket(text)
        .map(|_| text.to_string())
        .map_err(|e| e.reason)
}

// ---- Printing ----------------------------------------------------------------------------

/// How many rows were printed, and what was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    pub rows: u64,
    /// Readings without a location (GeoJSON only).
    pub unlocated: u64,
    /// Buckets the node withheld as too small.
    pub suppressed: u64,
}

/// Prints a streamed answer in one format, chunk by chunk.
#[derive(Debug)]
pub struct Printer<W: Write> {
    kind: PrinterKind<W>,
    printed: Printed,
}

#[derive(Debug)]
enum PrinterKind<W: Write> {
    Table {
        out: W,
        headers: Vec<String>,
        right: Vec<bool>,
        /// Sized from the first chunk, when it comes.
        table: Option<Table>,
        measures: Vec<String>,
    },
    ReadingCsv(ReadingCsv<W>),
    BucketCsv(csv::Writer<W>),
    Json(W),
    GeoJson {
        out: W,
        features: u64,
    },
}

impl<W: Write> Printer<W> {
    /// A printer for readings with `measures` columns, or for buckets.
    pub fn new(
        format: QueryFormat,
        buckets: bool,
        measures: Vec<String>,
        mut out: W,
    ) -> anyhow::Result<Printer<W>> {
        let kind = match (format, buckets) {
            (QueryFormat::Table, false) => {
                let headers: Vec<String> = ["sensor_id", "at", "lat", "lon"]
                    .iter()
                    .map(|h| h.to_string())
                    .chain(measures.iter().cloned())
                    .collect();
                let right = (0..headers.len()).map(|i| i >= 2).collect();
                PrinterKind::Table {
                    out,
                    headers,
                    right,
                    table: None,
                    measures,
                }
            }
            (QueryFormat::Table, true) => PrinterKind::Table {
                out,
                headers: BUCKET_COLUMNS.iter().map(|h| h.to_string()).collect(),
                right: (0..BUCKET_COLUMNS.len()).map(|i| i >= 3).collect(),
                table: None,
                measures,
            },
            (QueryFormat::Csv, false) => PrinterKind::ReadingCsv(ReadingCsv::new(out, measures)?),
            (QueryFormat::Csv, true) => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(BUCKET_COLUMNS)?;
                PrinterKind::BucketCsv(writer)
            }
            (QueryFormat::Json, _) => PrinterKind::Json(out),
            (QueryFormat::Geojson, false) => {
                out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")?;
                PrinterKind::GeoJson { out, features: 0 }
            }
            (QueryFormat::Geojson, true) => bail!(
                "--format geojson draws readings as points, and buckets have no location; \
                 use --format table, csv or json with --bucket"
            ),
        };
        Ok(Printer {
            kind,
            printed: Printed::default(),
        })
    }

    /// Prints one chunk and flushes it.
    pub fn chunk(&mut self, chunk: &ReadingChunk) -> anyhow::Result<()> {
        self.printed.suppressed += u64::from(chunk.suppressed_buckets);
        self.printed.rows += (chunk.readings.len() + chunk.buckets.len()) as u64;
        match &mut self.kind {
            PrinterKind::Table {
                out,
                headers,
                right,
                table,
                measures,
            } => {
                let rows: Vec<Vec<String>> = chunk
                    .readings
                    .iter()
                    .map(|r| reading_cells(r, measures))
                    .chain(
                        chunk
                            .buckets
                            .iter()
                            .map(|b| output::bucket_cells(b, output::short_number)),
                    )
                    .collect();
                if rows.is_empty() {
                    return Ok(());
                }
                let table = match table {
                    Some(table) => table,
                    None => {
                        let made = Table::new(headers, std::mem::take(right), &rows);
                        writeln!(out, "{}", made.line(headers))?;
                        table.insert(made)
                    }
                };
                for row in &rows {
                    writeln!(out, "{}", table.line(row))?;
                }
                out.flush()?;
            }
            PrinterKind::ReadingCsv(writer) => {
                for reading in &chunk.readings {
                    writer.write(reading)?;
                }
                writer.flush()?;
            }
            PrinterKind::BucketCsv(writer) => {
                for bucket in &chunk.buckets {
                    writer.write_record(output::bucket_cells(bucket, |v| v.to_string()))?;
                }
                writer.flush()?;
            }
            PrinterKind::Json(out) => {
                for reading in &chunk.readings {
                    output::json_line(out, &output::reading_json(reading))?;
                }
                for bucket in &chunk.buckets {
                    output::json_line(out, &output::bucket_json(bucket))?;
                }
                out.flush()?;
            }
            PrinterKind::GeoJson { out, features } => {
                for reading in &chunk.readings {
                    match output::reading_feature(reading) {
                        Some(feature) => {
                            if *features > 0 {
                                out.write_all(b",")?;
                            }
                            serde_json::to_writer(&mut *out, &feature)?;
                            *features += 1;
                        }
                        None => self.printed.unlocated += 1,
                    }
                }
                out.flush()?;
            }
        }
        Ok(())
    }

    /// Ends the output (closes the GeoJSON, prints a lone table header).
    pub fn finish(self) -> anyhow::Result<(W, Printed)> {
        let out = match self.kind {
            PrinterKind::Table {
                mut out,
                headers,
                right,
                table,
                ..
            } => {
                if table.is_none() {
                    let table = Table::new(&headers, right, &[]);
                    writeln!(out, "{}", table.line(&headers))?;
                }
                out
            }
            PrinterKind::ReadingCsv(writer) => writer.into_inner()?,
            PrinterKind::BucketCsv(writer) => writer
                .into_inner()
                .map_err(|e| anyhow::anyhow!("finishing the CSV output: {}", e.error()))?,
            PrinterKind::Json(out) => out,
            PrinterKind::GeoJson { mut out, .. } => {
                out.write_all(b"]}\n")?;
                out
            }
        };
        let mut out = out;
        out.flush()?;
        Ok((out, self.printed))
    }
}

fn reading_cells(reading: &Reading, measures: &[String]) -> Vec<String> {
    let mut cells = vec![
        reading.sensor_id.clone(),
        output::show_timestamp(reading.at.as_ref()),
    ];
    match reading.location {
        Some(l) => {
            cells.push(format!("{:.5}", l.lat));
            cells.push(format!("{:.5}", l.lon));
        }
        None => {
            cells.push(String::new());
            cells.push(String::new());
        }
    }
    for measure in measures {
        cells.push(
            reading
                .values
                .get(measure)
                .map(|v| output::short_number(*v))
                .unwrap_or_default(),
        );
    }
    cells
}

// ---- The command -----------------------------------------------------------------------

async fn readings(args: ReadingsArgs) -> anyhow::Result<ExitCode> {
    args.shape.check()?;
    let buckets = args.shape.bucket.is_some();
    if buckets && args.format == QueryFormat::Geojson {
        // Refused before connecting; the printer says why.
        Printer::new(args.format, true, Vec::new(), io::sink())?;
    }
    let mut client = args.node.connect().await?;
    let dataset = args.node.dataset(&mut client, &args.dataset).await?;
    if dataset.kind != "sensor" {
        bail!(
            "dataset `{}` is a {} dataset; only sensor datasets have readings",
            dataset.id,
            dataset.kind
        );
    }
    let known = output::measures(&dataset);
    for measure in &args.shape.measures {
        if !known.contains(measure) {
            bail!(
                "`{measure}` is not a measure of `{}` (it has: {})",
                dataset.id,
                known.join(", ")
            );
        }
    }
    let columns = if args.shape.measures.is_empty() {
        known
    } else {
        args.shape.measures.clone()
    };

    let query = args.shape.to_query(args.dataset.clone());
    let mut stream = client
        .query_readings(query)
        .await
        .map_err(|status| args.node.refused("answer the query", &status))?
        .into_inner();
    let stdout = BufWriter::new(io::stdout().lock());
    let mut printer = Printer::new(args.format, buckets, columns, stdout)?;
    let mut failure = None;
    let streamed = async {
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => printer.chunk(&chunk)?,
                Ok(None) => break,
                Err(status) => {
                    failure = Some(args.node.refused("finish the query", &status));
                    break;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    let finished = streamed.and_then(|()| printer.finish());
    let printed = match finished {
        Ok((_, printed)) => printed,
        Err(error) => {
            output::finish_output(Err(error))?;
            // The reader went away (`| head`): that is a normal end.
            return Ok(ExitCode::SUCCESS);
        }
    };
    if printed.unlocated > 0 {
        eprintln!(
            "left out {} readings without a location (GeoJSON needs a point)",
            printed.unlocated
        );
    }
    if printed.suppressed > 0 {
        eprintln!(
            "{} buckets withheld: they describe fewer readings or sensors than the \
             agreement's minimum group size",
            printed.suppressed
        );
    }
    if args.format == QueryFormat::Table {
        eprintln!(
            "{} {}",
            printed.rows,
            if buckets { "buckets" } else { "readings" }
        );
    }
    if let Some(error) = failure {
        return Err(error.context("the answer was cut short; what came before is printed"));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{CsvRows, JsonRows, Validator};
    use samvirke_proto::v1::{Bucket, Location};

    #[test]
    fn boxes_and_circles_are_checked() {
        let bbox = parse_bbox("56.1, 10.1,56.2,10.3").expect("bbox");
        assert_eq!(
            (bbox.min_lat, bbox.min_lon, bbox.max_lat, bbox.max_lon),
            (56.1, 10.1, 56.2, 10.3)
        );
        assert!(parse_bbox("-10,-20,10,20").is_ok(), "negative degrees");
        assert!(
            parse_bbox("56.1,10.1,56.2")
                .expect_err("3")
                .contains("is not")
        );
        assert!(
            parse_bbox("56.2,10.1,56.1,10.3")
                .expect_err("order")
                .contains("max_lat")
        );
        assert!(
            parse_bbox("56.1,10.3,56.2,10.1")
                .expect_err("order")
                .contains("max_lon")
        );
        assert!(
            parse_bbox("91,10,92,11")
                .expect_err("lat")
                .contains("outside")
        );
        assert!(
            parse_bbox("a,b,c,d")
                .expect_err("nan")
                .contains("not a number")
        );
        assert!(parse_bbox("NaN,1,2,3").is_err());

        let near = parse_near("56.15,10.2,2.5").expect("near");
        assert_eq!((near.lat, near.lon, near.km), (56.15, 10.2, 2.5));
        assert!(
            parse_near("56.15,10.2,0")
                .expect_err("zero")
                .contains("more than 0")
        );
        assert!(
            parse_near("56.15,190,1")
                .expect_err("lon")
                .contains("outside")
        );
        assert!(parse_near("56.15,10.2").is_err());

        assert_eq!(parse_bucket("15m"), Ok("15m".to_string()));
        assert!(parse_bucket("15x").is_err());
        assert!(parse_bucket("0h").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            parse_instant("2026-01-01"),
            Ok(time::macros::datetime!(2026-01-01 0:00 UTC))
        );
        assert_eq!(
            parse_instant("2026-01-01T06:30:00+01:00"),
            Ok(time::macros::datetime!(2026-01-01 5:30 UTC))
        );
        assert!(parse_instant("yesterday").is_err());
    }

    fn reading(sensor: &str, minute: i64, location: bool, values: &[(&str, f64)]) -> Reading {
        let at = time::macros::datetime!(2026-01-01 0:00 UTC) + time::Duration::minutes(minute);
        Reading {
            sensor_id: sensor.to_string(),
            at: Some(output::timestamp(at)),
            values: values
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect::<std::collections::BTreeMap<_, _>>(),
            location: location.then_some(Location {
                lat: 56.153_412_345_678_9,
                lon: -10.2,
            }),
        }
    }

    fn sample() -> Vec<ReadingChunk> {
        vec![
            ReadingChunk {
                readings: vec![
                    reading("s1", 0, true, &[("pm2_5", 4.1), ("no2", 0.1 + 0.2)]),
                    reading("s,2", 1, false, &[("no2", 12.0)]),
                ],
                ..Default::default()
            },
            ReadingChunk {
                readings: vec![
                    reading("s3", 2, true, &[("pm2_5", 1e-7), ("no2", 1e20)]),
                    // Values one ulp off a short decimal, as the generator makes.
                    reading(
                        "s4",
                        3,
                        true,
                        &[("pm2_5", 15.700000000000001), ("no2", 8.700000000000001)],
                    ),
                ],
                ..Default::default()
            },
        ]
    }

    fn print(format: QueryFormat, chunks: &[ReadingChunk], buckets: bool) -> (String, Printed) {
        let measures = vec!["pm2_5".to_string(), "no2".to_string()];
        let mut printer = Printer::new(format, buckets, measures, Vec::new()).expect("printer");
        for chunk in chunks {
            printer.chunk(chunk).expect("chunk");
        }
        let (out, printed) = printer.finish().expect("finish");
        (String::from_utf8(out).expect("utf8"), printed)
    }

    #[test]
    fn csv_output_reads_back_through_the_ingest_parser() {
        let (text, printed) = print(QueryFormat::Csv, &sample(), false);
        assert_eq!(printed.rows, 4);
        assert!(
            text.starts_with("sensor_id,timestamp,lat,lon,pm2_5,no2\n"),
            "{text}"
        );
        assert!(
            text.contains("\"s,2\",2026-01-01T00:01:00Z,,,,12\n"),
            "{text}"
        );
        let validator = Validator::new(
            vec!["pm2_5".into(), "pm10".into(), "no2".into()],
            time::macros::datetime!(2026-03-01 0:00 UTC),
        );
        let back: Vec<Reading> = CsvRows::new(text.as_bytes(), validator)
            .expect("header")
            .map(|row| row.expect("row").reading.expect("valid"))
            .collect();
        let original: Vec<Reading> = sample().into_iter().flat_map(|c| c.readings).collect();
        assert_eq!(
            back, original,
            "exact round trip, including 0.1 + 0.2 and 1e-7"
        );
    }

    #[test]
    fn json_output_reads_back_through_the_ingest_parser() {
        let (text, _) = print(QueryFormat::Json, &sample(), false);
        assert_eq!(text.lines().count(), 4);
        let validator = Validator::new(
            vec!["pm2_5".into(), "no2".into()],
            time::macros::datetime!(2026-03-01 0:00 UTC),
        );
        let back: Vec<Reading> = JsonRows::new(text.as_bytes(), validator)
            .expect("lines")
            .map(|row| row.expect("row").reading.expect("valid"))
            .collect();
        let original: Vec<Reading> = sample().into_iter().flat_map(|c| c.readings).collect();
        assert_eq!(back, original);
    }

    #[test]
    fn geojson_is_a_feature_collection_of_located_readings() {
        let (text, printed) = print(QueryFormat::Geojson, &sample(), false);
        assert_eq!(printed.unlocated, 1);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["type"], "FeatureCollection");
        let features = value["features"].as_array().expect("features");
        assert_eq!(features.len(), 3);
        let first = &features[0];
        assert_eq!(first["type"], "Feature");
        assert_eq!(first["geometry"]["type"], "Point");
        assert_eq!(first["geometry"]["coordinates"][0], -10.2, "lon first");
        assert_eq!(first["geometry"]["coordinates"][1], 56.153_412_345_678_9);
        assert_eq!(first["properties"]["sensor_id"], "s1");
        assert_eq!(first["properties"]["at"], "2026-01-01T00:00:00Z");
        assert_eq!(first["properties"]["values"]["pm2_5"], 4.1);
        assert_eq!(features[1]["properties"]["sensor_id"], "s3");

        let (empty, _) = print(QueryFormat::Geojson, &[], false);
        let value: serde_json::Value = serde_json::from_str(&empty).expect("valid JSON");
        assert_eq!(value["features"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn tables_align_readings_and_buckets() {
        let (text, _) = print(QueryFormat::Table, &sample(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("sensor_id  at "), "{text}");
        assert!(
            lines[4].ends_with("15.7  8.7"),
            "tables round for people: {text}"
        );
        assert!(lines[1].contains("56.15341  -10.20000"), "{text}");
        assert_eq!(
            lines[0].find("pm2_5").map(|i| i + 5),
            lines[1].find("4.1").map(|i| i + 3),
            "{text}"
        );

        let (empty, _) = print(QueryFormat::Table, &[], false);
        assert_eq!(empty, "sensor_id  at  lat  lon  pm2_5  no2\n");

        let bucket = Bucket {
            start: Some(output::timestamp(
                time::macros::datetime!(2026-01-01 0:00 UTC),
            )),
            sensor_id: String::new(),
            measure: "no2".to_string(),
            count: 6,
            min: Some(1.0),
            max: Some(3.0),
            sum: 12.0,
            avg: 2.0,
            distinct_sensors: Some(2),
        };
        let chunks = vec![ReadingChunk {
            buckets: vec![bucket],
            suppressed_buckets: 3,
            ..Default::default()
        }];
        let (text, printed) = print(QueryFormat::Table, &chunks, true);
        assert_eq!(printed.suppressed, 3);
        assert!(text.starts_with("start                 sensor_id  measure  count  min  max  avg  sum  distinct_sensors\n"), "{text}");
        let (csv_text, _) = print(QueryFormat::Csv, &chunks, true);
        assert_eq!(
            csv_text,
            "start,sensor_id,measure,count,min,max,avg,sum,distinct_sensors\n\
             2026-01-01T00:00:00Z,,no2,6,1,3,2,12,2\n"
        );
        let (json_text, _) = print(QueryFormat::Json, &chunks, true);
        let value: serde_json::Value = serde_json::from_str(json_text.trim()).expect("json");
        assert_eq!(value["sensor_id"], serde_json::Value::Null);
        assert_eq!(value["avg"], 2.0);
        assert_eq!(value["distinct_sensors"], 2);

        let err = Printer::new(QueryFormat::Geojson, true, Vec::new(), Vec::new())
            .expect_err("geojson buckets");
        assert!(
            err.to_string().contains("buckets have no location"),
            "{err}"
        );
    }

    #[test]
    fn queries_carry_every_option() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: QueryCommand,
        }
        let cli = Cli::try_parse_from([
            "q",
            "readings",
            "--dataset",
            "aarhus-air-quality",
            "--from",
            "2026-01-01",
            "--until",
            "2026-01-02T00:00:00Z",
            "--sensor",
            "a",
            "--sensor",
            "b",
            "--near",
            "56.1,10.2,3",
            "--measure",
            "no2",
            "--order",
            "desc",
            "--limit",
            "10",
            "--bucket",
            "1h",
            "--per-sensor",
            "--token",
            "t",
        ])
        .expect("parses");
        let QueryCommand::Readings(args) = cli.command;
        let query = args.shape.to_query(args.dataset.clone());
        assert_eq!(query.sensor_ids, vec!["a", "b"]);
        assert_eq!(query.order, Order::Descending as i32);
        assert_eq!(query.grouping, Grouping::PerSensor as i32);
        assert_eq!(query.limit, 10);
        assert_eq!(query.bucket, "1h");
        assert!(matches!(query.area, Some(reading_query::Area::Radius(r)) if r.km == 3.0));
        assert_eq!(query.from.map(|t| t.seconds), Some(1_767_225_600));

        let both = Cli::try_parse_from([
            "q",
            "readings",
            "--dataset",
            "d-d-d",
            "--from",
            "2026-01-01",
            "--until",
            "2026-01-02",
            "--bbox",
            "1,2,3,4",
            "--near",
            "1,2,3",
            "--token",
            "t",
        ]);
        assert!(both.is_err(), "--bbox and --near conflict");
        let per_sensor_alone = Cli::try_parse_from([
            "q",
            "readings",
            "--dataset",
            "d-d-d",
            "--from",
            "2026-01-01",
            "--until",
            "2026-01-02",
            "--per-sensor",
            "--token",
            "t",
        ]);
        assert!(per_sensor_alone.is_err(), "--per-sensor needs --bucket");
    }
}
