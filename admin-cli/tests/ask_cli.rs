//! `samvirke ask` as an analyst runs it: the real binary against real
//! nodes (in-process development nodes with real sled stores and mutual
//! TLS on loopback). Vejle (630) asks the fellowship; Aarhus (751) and
//! Silkeborg (740) let it read their air-quality readings under signed
//! agreements; Vejle's own readings come along.
//!
//! Covered:
//! - every output format carries exactly the rows the nodes hold, each
//!   tagged with its municipality and dataset: CSV (parsed, values read
//!   back bit for bit), JSON lines, GeoJSON (located readings as points, the
//!   others counted on stderr) and the table; and the status lines, one per
//!   partner and dataset, on stdout for tables and on stderr otherwise;
//! - exit codes: 0 when any source answered (also when a partner is down),
//!   2 when none did (the one partner asked is down, or not entitled).

use std::collections::BTreeMap;
use std::process::{Command, Output};

use samvirke_node::data::{Reading, sensor_dataset};
use samvirke_node::governance::{Consumers, DecisionRule, Operation, Scope};
use samvirke_node::wire;
use samvirke_tests::{FELLOWSHIP, GovernanceFixture, LocalApi, air_quality_readings};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const SILKEBORG: u32 = 740;
const EVERYONE: [u32; 3] = [VEJLE, SILKEBORG, AARHUS];
const DATA_FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const FROM: &str = "2026-03-01T00:00:00Z";
const UNTIL: &str = "2026-03-02T00:00:00Z";
/// Three sensors (the middle one without a location), every 10 minutes for
/// two hours.
const SENSORS: u32 = 3;
const STEPS: u32 = 12;

/// One measure value of one reading, as every format can state it:
/// municipality, name, dataset, sensor, time, lat, lon (bits), measure,
/// value (bits).
type Row = (
    u32,
    String,
    String,
    String,
    String,
    Option<u64>,
    Option<u64>,
    String,
    u64,
);

struct Fellowship {
    fx: GovernanceFixture,
    vejle: LocalApi,
    datasets: BTreeMap<u32, String>,
    readings: BTreeMap<u32, Vec<Reading>>,
}

impl Fellowship {
    async fn start() -> Fellowship {
        let now = OffsetDateTime::now_utc();
        let fx = GovernanceFixture::start(&EVERYONE, now).await;
        let apis: BTreeMap<u32, LocalApi> = EVERYONE
            .iter()
            .map(|code| (*code, LocalApi::of(fx.node(*code))))
            .collect();
        let mut datasets = BTreeMap::new();
        let mut readings = BTreeMap::new();
        for code in EVERYONE {
            let dataset = wire::dataset_to_proto(
                &sensor_dataset("air-quality", code).expect("an air-quality dataset"),
            );
            let data = air_quality_readings(code, SENSORS, STEPS, DATA_FROM);
            apis[&code].publish_with_readings(&dataset, &data).await;
            datasets.insert(code, dataset.id);
            readings.insert(code, data);
        }
        let roster = fx.anchor(DecisionRule::Quorum(1), &EVERYONE);
        for api in apis.values() {
            api.pin_roster(&roster).await;
        }
        for provider in [AARHUS, SILKEBORG] {
            let mut terms = fx.terms(provider, Consumers::Named(vec![VEJLE]));
            terms.scope = Scope {
                datasets: vec![datasets[&provider].clone()],
                kinds: Vec::new(),
                keywords: Vec::new(),
            };
            terms.operations = vec![Operation::Catalog, Operation::Read];
            terms.valid_from = now - time::Duration::days(1);
            terms.valid_until = now + time::Duration::days(30);
            let agreement = fx.agreement(&terms, &[provider, VEJLE]);
            for party in [provider, VEJLE] {
                assert_eq!(apis[&party].import_agreement(&agreement).await, "active");
            }
        }
        Fellowship {
            vejle: apis[&VEJLE].clone(),
            fx,
            datasets,
            readings,
        }
    }

    /// Runs `samvirke ask readings` at Vejle's node for the air-quality
    /// datasets of the day, with `extra` arguments.
    async fn ask(&self, extra: &[&str]) -> Output {
        let mut args: Vec<String> = [
            "ask",
            "readings",
            "--node",
            &self.vejle.endpoint,
            "--token",
            &self.vejle.token,
            "--keyword",
            "air-quality",
            "--from",
            FROM,
            "--until",
            UNTIL,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        // Off the async runtime: the nodes under test share it.
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_samvirke"))
                .args(&args)
                .output()
                .expect("run samvirke")
        })
        .await
        .expect("the CLI process task")
    }

    /// The rows the nodes of `codes` hold for the day.
    fn expected(&self, codes: &[u32]) -> Vec<Row> {
        let mut rows = Vec::new();
        for code in codes {
            let name = samvirke_node::fixtures::municipality(*code)
                .expect("a fixture municipality")
                .name;
            for reading in &self.readings[code] {
                for (measure, value) in &reading.values {
                    rows.push((
                        *code,
                        name.clone(),
                        self.datasets[code].clone(),
                        reading.sensor_id.clone(),
                        reading.at.format(&Rfc3339).expect("an RFC 3339 time"),
                        reading.location.map(|l| l.0.to_bits()),
                        reading.location.map(|l| l.1.to_bits()),
                        measure.clone(),
                        value.to_bits(),
                    ));
                }
            }
        }
        rows.sort();
        rows
    }

    fn located(&self, codes: &[u32]) -> usize {
        codes
            .iter()
            .map(|code| {
                self.readings[code]
                    .iter()
                    .filter(|r| r.location.is_some())
                    .count()
            })
            .sum()
    }

    fn unlocated(&self, codes: &[u32]) -> usize {
        codes
            .iter()
            .map(|code| {
                self.readings[code]
                    .iter()
                    .filter(|r| r.location.is_none())
                    .count()
            })
            .sum()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn exit_code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// The status lines after `Partners:` in `text`, split into cells:
/// municipality, name, dataset, status, rows, bytes, latency, receipt,
/// detail (empty when none).
fn statuses(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|line| *line != "Partners:").skip(1);
    let header = lines.next().expect("a status header after `Partners:`");
    assert!(
        header.trim_start().starts_with("municipality") && header.contains("status"),
        "{header}"
    );
    // Cells are separated by two spaces or more (names hold single ones);
    // the lines after the table (the summary) are prose.
    lines
        .map(|line| {
            line.trim()
                .split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_string)
                .collect::<Vec<String>>()
        })
        .take_while(|cells| cells.len() >= 8)
        .map(|mut cells| {
            if cells.len() == 8 {
                cells.push(String::new());
            }
            assert_eq!(cells.len(), 9, "a status line: {cells:?}");
            cells
        })
        .collect()
}

/// Asserts the status lines say `expected` (municipality, dataset, status)
/// and nothing else; returns them.
fn assert_statuses(text: &str, expected: &[(u32, &str, &str)]) -> Vec<Vec<String>> {
    let found = statuses(text);
    let mut said: Vec<(u32, String, String)> = found
        .iter()
        .map(|cells| {
            (
                cells[0].parse().expect("a municipality code"),
                cells[2].clone(),
                cells[3].clone(),
            )
        })
        .collect();
    said.sort();
    let mut wanted: Vec<(u32, String, String)> = expected
        .iter()
        .map(|(code, dataset, status)| (*code, dataset.to_string(), status.to_string()))
        .collect();
    wanted.sort();
    assert_eq!(said, wanted, "status lines in:\n{text}");
    found
}

fn f64_bits(text: &str) -> u64 {
    text.parse::<f64>()
        .unwrap_or_else(|e| panic!("`{text}` is a number: {e}"))
        .to_bits()
}

fn optional_bits(text: &str) -> Option<u64> {
    (!text.is_empty()).then(|| f64_bits(text))
}

fn json_bits(value: &Value) -> u64 {
    value.as_f64().expect("a JSON number").to_bits()
}

/// The long-form rows of one JSON reading object (`values` spread out).
fn json_reading_rows(object: &Value, location: Option<(u64, u64)>) -> Vec<Row> {
    let values = object["values"].as_object().expect("values");
    values
        .iter()
        .map(|(measure, value)| {
            (
                object["municipality"].as_u64().expect("municipality") as u32,
                object["name"].as_str().expect("name").to_string(),
                object["dataset"].as_str().expect("dataset").to_string(),
                object["sensor_id"].as_str().expect("sensor_id").to_string(),
                object["at"].as_str().expect("at").to_string(),
                location.map(|l| l.0),
                location.map(|l| l.1),
                measure.clone(),
                json_bits(value),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_carries_the_rows_and_a_status_per_source() {
    let fellowship = Fellowship::start().await;
    let expected = fellowship.expected(&EVERYONE);
    let all_ok: Vec<(u32, &str, &str)> = EVERYONE
        .iter()
        .map(|code| (*code, fellowship.datasets[code].as_str(), "ok"))
        .collect();
    let fellowship_args = ["--fellowship", FELLOWSHIP];

    // CSV: long form, numbers that read back exactly; statuses on stderr.
    let csv_run = fellowship
        .ask(&[&fellowship_args[..], &["--format", "csv"]].concat())
        .await;
    assert_eq!(exit_code(&csv_run), Some(0), "{}", text(&csv_run.stderr));
    let mut reader = csv::Reader::from_reader(csv_run.stdout.as_slice());
    assert_eq!(
        reader.headers().expect("a CSV header"),
        vec![
            "municipality",
            "name",
            "dataset",
            "sensor_id",
            "at",
            "lat",
            "lon",
            "measure",
            "value"
        ]
    );
    let mut rows: Vec<Row> = reader
        .records()
        .map(|record| {
            let r = record.expect("a CSV record");
            (
                r[0].parse().expect("a municipality code"),
                r[1].to_string(),
                r[2].to_string(),
                r[3].to_string(),
                r[4].to_string(),
                optional_bits(&r[5]),
                optional_bits(&r[6]),
                r[7].to_string(),
                f64_bits(&r[8]),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows.len(), expected.len());
    assert!(rows == expected, "the CSV rows are the nodes' readings");
    let stderr = text(&csv_run.stderr);
    let lines = assert_statuses(&stderr, &all_ok);
    for cells in &lines {
        let code: u32 = cells[0].parse().expect("a code");
        assert_eq!(
            cells[4],
            fellowship.readings[&code].len().to_string(),
            "rows of {code}"
        );
        if code == VEJLE {
            assert_eq!(cells[7], "-", "no receipt for this node's own data");
        } else {
            assert_ne!(cells[7], "-", "a receipt for a partner's answer");
        }
    }
    assert!(stderr.contains("3 of 3 asked answered in full"), "{stderr}");
    assert!(!text(&csv_run.stdout).contains("Partners:"));

    // JSON lines: one object per reading, tagged with its source.
    let json_run = fellowship
        .ask(&[&fellowship_args[..], &["--format", "json"]].concat())
        .await;
    assert_eq!(exit_code(&json_run), Some(0), "{}", text(&json_run.stderr));
    let stdout = text(&json_run.stdout);
    let objects: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(
        objects.len(),
        fellowship.located(&EVERYONE) + fellowship.unlocated(&EVERYONE)
    );
    let mut rows: Vec<Row> = Vec::new();
    for object in &objects {
        let location = match (object.get("lat"), object.get("lon")) {
            (Some(lat), Some(lon)) => Some((json_bits(lat), json_bits(lon))),
            (None, None) => None,
            _ => panic!("lat and lon come together: {object}"),
        };
        let municipality = object["municipality"].as_u64().expect("municipality") as u32;
        if municipality == VEJLE {
            assert!(object.get("agreement").is_none(), "own data: {object}");
        } else {
            assert!(object["agreement"].is_string(), "{object}");
        }
        rows.extend(json_reading_rows(object, location));
    }
    rows.sort();
    assert!(rows == expected, "the JSON rows are the nodes' readings");
    assert_statuses(&text(&json_run.stderr), &all_ok);

    // GeoJSON: located readings as points; the others counted.
    let geo_run = fellowship
        .ask(&[&fellowship_args[..], &["--format", "geojson"]].concat())
        .await;
    assert_eq!(exit_code(&geo_run), Some(0), "{}", text(&geo_run.stderr));
    let collection: Value = serde_json::from_slice(&geo_run.stdout).expect("GeoJSON");
    assert_eq!(collection["type"], "FeatureCollection");
    let features = collection["features"].as_array().expect("features");
    assert_eq!(features.len(), fellowship.located(&EVERYONE));
    let mut rows: Vec<Row> = Vec::new();
    for feature in features {
        assert_eq!(feature["type"], "Feature");
        assert_eq!(feature["geometry"]["type"], "Point");
        let coordinates = feature["geometry"]["coordinates"]
            .as_array()
            .expect("coordinates");
        let (lon, lat) = (json_bits(&coordinates[0]), json_bits(&coordinates[1]));
        rows.extend(json_reading_rows(&feature["properties"], Some((lat, lon))));
    }
    rows.sort();
    let located: Vec<Row> = expected
        .iter()
        .filter(|row| row.5.is_some())
        .cloned()
        .collect();
    assert!(rows == located, "the points are the located readings");
    let stderr = text(&geo_run.stderr);
    assert!(
        stderr.contains(&format!(
            "{} readings without a location were left out",
            fellowship.unlocated(&EVERYONE)
        )),
        "{stderr}"
    );
    assert_statuses(&stderr, &all_ok);

    // Table: one line per row, then the statuses, on stdout.
    let table_run = fellowship.ask(&fellowship_args).await;
    assert_eq!(
        exit_code(&table_run),
        Some(0),
        "{}",
        text(&table_run.stderr)
    );
    let stdout = text(&table_run.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("a table header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec![
            "municipality",
            "name",
            "dataset",
            "sensor_id",
            "at",
            "lat",
            "lon",
            "measure",
            "value"
        ]
    );
    let mut shown: Vec<(u32, String, String, String, String, String)> = lines
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // municipality, two words of name, dataset, sensor, at, then
            // lat and lon when located, measure, value.
            assert!(words.len() == 8 || words.len() == 10, "a row: {line}");
            let n = words.len();
            (
                words[0].parse().expect("a code"),
                words[3].to_string(),
                words[4].to_string(),
                words[5].to_string(),
                words[n - 2].to_string(),
                words[n - 1].to_string(),
            )
        })
        .collect();
    shown.sort();
    let mut wanted: Vec<(u32, String, String, String, String, String)> = expected
        .iter()
        .map(|row| {
            let value = f64::from_bits(row.8);
            (
                row.0,
                row.2.clone(),
                row.3.clone(),
                row.4.clone(),
                row.7.clone(),
                // Tables round to six decimals.
                format!("{value:.6}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string(),
            )
        })
        .collect();
    wanted.sort();
    assert_eq!(shown, wanted, "the table rows are the nodes' readings");
    assert_statuses(&stdout, &all_ok);

    fellowship.fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_code_says_whether_any_source_answered() {
    let mut fellowship = Fellowship::start().await;
    let silkeborg_air = fellowship.datasets[&SILKEBORG].clone();
    let vejle_air = fellowship.datasets[&VEJLE].clone();

    // Aarhus's node stops.
    let at = fellowship
        .fx
        .fed
        .nodes
        .iter()
        .position(|n| n.running.identity.municipality_code == AARHUS)
        .expect("Aarhus's node");
    let aarhus = fellowship.fx.fed.nodes.remove(at);
    aarhus.running.shutdown().await.expect("Aarhus stops");

    // A partial answer is an answer: exit 0, Aarhus reported unavailable.
    let partial = fellowship
        .ask(&[
            "--fellowship",
            FELLOWSHIP,
            "--format",
            "csv",
            "--deadline",
            "5",
        ])
        .await;
    let stderr = text(&partial.stderr);
    assert_eq!(exit_code(&partial), Some(0), "{stderr}");
    assert_statuses(
        &stderr,
        &[
            (AARHUS, "-", "unavailable"),
            (SILKEBORG, &silkeborg_air, "ok"),
            (VEJLE, &vejle_air, "ok"),
        ],
    );
    let rows = csv::Reader::from_reader(partial.stdout.as_slice())
        .records()
        .count();
    assert_eq!(rows, fellowship.expected(&[SILKEBORG, VEJLE]).len());

    // Only Aarhus asked, and it is down: no source answered, exit 2, and
    // the reason is on stderr.
    let none = fellowship
        .ask(&["--partner", "751", "--format", "csv", "--deadline", "5"])
        .await;
    let stderr = text(&none.stderr);
    assert_eq!(exit_code(&none), Some(2), "{stderr}");
    let lines = assert_statuses(&stderr, &[(AARHUS, "-", "unavailable")]);
    assert!(!lines[0][8].is_empty(), "the status says why: {stderr}");
    assert!(stderr.contains("0 of 1 asked answered in full"), "{stderr}");
    let rows = csv::Reader::from_reader(none.stdout.as_slice())
        .records()
        .count();
    assert_eq!(rows, 0, "no rows: {}", text(&none.stdout));

    // Silkeborg is up, but no dataset of the name asked is shared: not
    // entitled, so again none answered (also in a table).
    let refused = fellowship
        .ask(&["--partner", "740", "--dataset", "silkeborg-noise"])
        .await;
    let stdout = text(&refused.stdout);
    assert_eq!(
        exit_code(&refused),
        Some(2),
        "{stdout}{}",
        text(&refused.stderr)
    );
    assert_statuses(&stdout, &[(SILKEBORG, "-", "not entitled")]);

    fellowship.fx.shutdown().await;
}

/// Brute-force hourly cells (start, measure) -> (count, sum, min, max) of
/// `readings`.
fn hourly<'a>(
    readings: impl Iterator<Item = &'a Reading>,
) -> BTreeMap<(String, String), (u64, f64, f64, f64)> {
    let mut cells: BTreeMap<(String, String), (u64, f64, f64, f64)> = BTreeMap::new();
    for reading in readings {
        let start = reading.at.replace_minute(0).expect("an hour");
        let start = start.format(&Rfc3339).expect("an RFC 3339 time");
        for (measure, value) in &reading.values {
            let cell = cells.entry((start.clone(), measure.clone())).or_insert((
                0,
                0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ));
            cell.0 += 1;
            cell.1 += value;
            cell.2 = cell.2.min(*value);
            cell.3 = cell.3.max(*value);
        }
    }
    cells
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Asserts one bucket (count, min, max, avg, sum) is `cell`.
fn assert_bucket(what: &str, found: (u64, f64, f64, f64, f64), cell: (u64, f64, f64, f64)) {
    let (count, min, max, avg, sum) = found;
    assert_eq!(count, cell.0, "{what}: count");
    assert_eq!((min, max), (cell.2, cell.3), "{what}: min and max");
    assert!(close(sum, cell.1), "{what}: sum {sum} vs {}", cell.1);
    assert!(
        close(avg, cell.1 / cell.0 as f64),
        "{what}: avg {avg} vs {}",
        cell.1 / cell.0 as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_come_per_source_and_combined() {
    let fellowship = Fellowship::start().await;
    let combined = hourly(fellowship.readings.values().flatten());
    let per_source: BTreeMap<u32, _> = EVERYONE
        .iter()
        .map(|code| (*code, hourly(fellowship.readings[code].iter())))
        .collect();
    // Two hours, three measures.
    assert_eq!(combined.len(), 6);
    let bucket_args = ["--fellowship", FELLOWSHIP, "--bucket", "1h"];

    let csv_run = fellowship
        .ask(&[&bucket_args[..], &["--format", "csv"]].concat())
        .await;
    assert_eq!(exit_code(&csv_run), Some(0), "{}", text(&csv_run.stderr));
    let mut reader = csv::Reader::from_reader(csv_run.stdout.as_slice());
    assert_eq!(
        reader.headers().expect("a CSV header"),
        vec![
            "municipality",
            "name",
            "dataset",
            "start",
            "sensor_id",
            "measure",
            "count",
            "min",
            "max",
            "avg",
            "sum"
        ]
    );
    let (mut sources_seen, mut combined_seen) = (0, 0);
    for record in reader.records() {
        let r = record.expect("a CSV record");
        let found = (
            r[6].parse::<u64>().expect("a count"),
            r[7].parse::<f64>().expect("a min"),
            r[8].parse::<f64>().expect("a max"),
            r[9].parse::<f64>().expect("an avg"),
            r[10].parse::<f64>().expect("a sum"),
        );
        let key = (r[3].to_string(), r[5].to_string());
        assert_eq!(&r[4], "", "over all sensors");
        if &r[0] == "all" {
            assert_eq!(&r[1], "3 municipalities");
            assert_bucket(&format!("combined {key:?}"), found, combined[&key]);
            combined_seen += 1;
        } else {
            let code: u32 = r[0].parse().expect("a municipality code");
            assert_eq!(r[2], fellowship.datasets[&code]);
            assert_bucket(&format!("{code} {key:?}"), found, per_source[&code][&key]);
            sources_seen += 1;
        }
    }
    assert_eq!(
        (sources_seen, combined_seen),
        (3 * combined.len(), combined.len())
    );
    assert_statuses(
        &text(&csv_run.stderr),
        &EVERYONE
            .iter()
            .map(|code| (*code, fellowship.datasets[code].as_str(), "ok"))
            .collect::<Vec<_>>(),
    );

    let json_run = fellowship
        .ask(&[&bucket_args[..], &["--format", "json"]].concat())
        .await;
    assert_eq!(exit_code(&json_run), Some(0), "{}", text(&json_run.stderr));
    let (mut sources_seen, mut combined_seen) = (0, 0);
    for line in text(&json_run.stdout).lines() {
        let object: Value = serde_json::from_str(line).expect("a JSON line");
        let number = |field: &str| {
            object[field]
                .as_f64()
                .unwrap_or_else(|| panic!("`{field}` in {object}"))
        };
        let found = (
            object["count"].as_u64().expect("a count"),
            number("min"),
            number("max"),
            number("avg"),
            number("sum"),
        );
        let key = (
            object["start"].as_str().expect("a start").to_string(),
            object["measure"].as_str().expect("a measure").to_string(),
        );
        if object["combined"] == true {
            assert_eq!(object["municipalities"], serde_json::json!([630, 740, 751]));
            assert_bucket(&format!("combined {key:?}"), found, combined[&key]);
            combined_seen += 1;
        } else {
            let code = object["municipality"].as_u64().expect("municipality") as u32;
            assert_eq!(object["dataset"], fellowship.datasets[&code].as_str());
            assert!(object["sensor_id"].is_null(), "over all sensors: {object}");
            assert_bucket(&format!("{code} {key:?}"), found, per_source[&code][&key]);
            sources_seen += 1;
        }
    }
    assert_eq!(
        (sources_seen, combined_seen),
        (3 * combined.len(), combined.len())
    );

    // Buckets are no points: GeoJSON is refused before anything is asked.
    let geo_run = fellowship
        .ask(&[&bucket_args[..], &["--format", "geojson"]].concat())
        .await;
    assert_ne!(exit_code(&geo_run), Some(0));
    assert!(
        text(&geo_run.stderr).contains("--format geojson draws raw readings"),
        "{}",
        text(&geo_run.stderr)
    );
    assert!(geo_run.stdout.is_empty());

    fellowship.fx.shutdown().await;
}
