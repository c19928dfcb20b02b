//! The data commands with the real `samvirke` binary against a real
//! in-process development node: `dataset publish` and `list`,
//! `gen-readings` into `ingest csv` (100 000 rows, re-ingest replaces),
//! bad rows listed with their lines (exit 3), `ingest json` as lines and
//! as an array, `query readings` in every format (CSV round trip, JSON
//! lines, GeoJSON points, table, buckets adding up to the raw count),
//! `records load-fixtures` with filtered lists, `records ... put FILE`
//! from CSV, JSON and TOML (a bad record stores nothing), and tokens that
//! may not ingest.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use samvirke_node::config::Config;
use samvirke_node::devnet::{DevFederation, DevNode};
use samvirke_node::provision::CONFIG_FILE;
use samvirke_node::server::{Listeners, Node};
use samvirke_proto::v1::CountReadingsRequest;
use samvirke_proto::v1::local_client::LocalClient;
use serde_json::Value;

const AIR: &str = "aarhus-air-quality";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs the binary off the async runtime (the node under test shares it).
async fn samvirke(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_samvirke"))
            .args(&args)
            .output()
            .expect("run samvirke")
    })
    .await
    .expect("the CLI process task")
}

/// A node's local API as the CLI reaches it: endpoint and token.
#[derive(Debug, Clone)]
struct Api {
    endpoint: String,
    token: String,
}

impl Api {
    fn of(node: &DevNode) -> Api {
        Api {
            endpoint: node.running.local_endpoint(),
            token: node.admin_token.to_string(),
        }
    }

    /// The same node with another token.
    fn with_token(&self, token: &str) -> Api {
        Api {
            endpoint: self.endpoint.clone(),
            token: token.to_string(),
        }
    }

    /// Runs `samvirke args... --node ENDPOINT --token TOKEN`.
    async fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--node".to_string(),
            self.endpoint.clone(),
            "--token".to_string(),
            self.token.clone(),
        ]);
        samvirke(all).await
    }

    /// Runs a command that must exit 0; returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "samvirke {args:?} failed ({:?}): {}{}",
            output.status.code(),
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    }

    /// Runs a command and asserts its exit status; returns the output.
    async fn exits(&self, code: i32, args: &[&str]) -> Output {
        let output = self.run(args).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "samvirke {args:?}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        output
    }

    /// How many readings the node holds in `dataset` (CountReadings).
    async fn count(&self, dataset: &str) -> u64 {
        let mut client = LocalClient::connect(self.endpoint.clone())
            .await
            .expect("connect to the local API");
        let mut request = tonic::Request::new(CountReadingsRequest {
            dataset_id: dataset.to_string(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("an ASCII header"),
        );
        client
            .count_readings(request)
            .await
            .expect("CountReadings")
            .into_inner()
            .count
    }
}

/// Starts one development node for Aarhus (751) under `dir`.
async fn aarhus(dir: &Path) -> DevFederation {
    DevFederation::start(&dir.join("fed"), &[751])
        .await
        .expect("start a development node")
}

/// Publishes the synthetic air-quality dataset of Aarhus.
async fn publish_air(api: &Api) {
    let text = api
        .ok(&[
            "dataset",
            "publish",
            "--sensor-kind",
            "air-quality",
            "--code",
            "751",
        ])
        .await;
    assert!(
        text.contains("published dataset `aarhus-air-quality`"),
        "{text}"
    );
}

/// `samvirke gen-readings` (offline) into `out`.
async fn gen_readings(out: &Path, sensors: u32, from: &str, rows: u64) {
    let output = samvirke(vec![
        "gen-readings".into(),
        "--kind".into(),
        "air-quality".into(),
        "--code".into(),
        "751".into(),
        "--sensors".into(),
        sensors.to_string(),
        "--from".into(),
        from.into(),
        "--rows".into(),
        rows.to_string(),
        "--out".into(),
        arg(out).into(),
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("wrote {rows} readings of {sensors} sensors")),
        "{}",
        stderr(&output)
    );
}

/// The `ingested N readings in B batches: I new, R replaced` numbers.
fn ingested(summary: &str) -> (u64, u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.starts_with("ingested "))
        .unwrap_or_else(|| panic!("no `ingested` line: {summary}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().expect("a number"))
        .collect();
    assert_eq!(numbers.len(), 4, "{line}");
    (numbers[0], numbers[2], numbers[3])
}

/// The `read N rows from FILE in S s (R rows/s)` line.
fn read_line(summary: &str) -> &str {
    summary
        .lines()
        .find(|l| l.starts_with("read "))
        .unwrap_or_else(|| panic!("no `read` line: {summary}"))
}

/// A dataset file with the air-quality measures under another id.
fn sensor_copy_toml(id: &str) -> String {
    format!(
        r#"id = "{id}"
title = "Air quality sensors, Aarhus (copy)"
description = "A copy of the synthetic air quality readings."
kind = "sensor"
owner = 751
theme = "environment"
keywords = ["air-quality"]
license = "CC-BY-4.0"
classification = "open"
update_interval_seconds = 600

[[schema]]
name = "pm2_5"
type = "number"
unit = "ug/m3"

[[schema]]
name = "pm10"
type = "number"
unit = "ug/m3"

[[schema]]
name = "no2"
type = "number"
unit = "ug/m3"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_published_listed_and_not_published_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);

    let empty = api.ok(&["dataset", "list"]).await;
    assert_eq!(empty.lines().count(), 1, "just the header: {empty}");

    publish_air(&api).await;
    let table = api.ok(&["dataset", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("id "), "{table}");
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[1].starts_with("aarhus-air-quality  sensor"),
        "{table}"
    );
    assert!(lines[1].ends_with("pm2_5,pm10,no2"), "{table}");

    let json = api.ok(&["dataset", "list", "--format", "json"]).await;
    let value: Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(value["id"], AIR);
    assert_eq!(value["kind"], "sensor");
    assert_eq!(value["owner"], 751);

    let again = api
        .run(&[
            "dataset",
            "publish",
            "--sensor-kind",
            "air-quality",
            "--code",
            "751",
        ])
        .await;
    assert!(!again.status.success(), "{}", stdout(&again));
    let message = stderr(&again);
    assert!(
        message.contains("refused to publish dataset `aarhus-air-quality`"),
        "{message}"
    );
    assert!(message.contains("(AlreadyExists)"), "{message}");
    assert!(
        message.contains("is already published; use update to change it"),
        "{message}"
    );
    let after = api.ok(&["dataset", "list"]).await;
    assert_eq!(after, table, "the catalog is unchanged");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_generated_rows_ingest_once_and_reingest_replaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    publish_air(&api).await;

    let file = dir.path().join("readings.csv");
    gen_readings(&file, 50, "2026-01-01", 100_000).await;
    let csv = std::fs::read_to_string(&file).expect("read the CSV");
    assert_eq!(csv.lines().count(), 100_001, "header and 100 000 rows");

    let first = api
        .ok(&["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    let read = read_line(&first);
    eprintln!("first ingest: {read}");
    assert!(read.starts_with("read 100000 rows from "), "{first}");
    assert!(read.ends_with(" rows/s)"), "{first}");
    let rate: f64 = read
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rate: {read}"));
    assert!(rate > 0.0, "{read}");
    assert_eq!(ingested(&first), (100_000, 100_000, 0), "{first}");
    assert!(!first.contains("rejected"), "{first}");
    assert_eq!(api.count(AIR).await, 100_000);

    let second = api
        .ok(&["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    eprintln!("re-ingest: {}", read_line(&second));
    assert!(
        read_line(&second).starts_with("read 100000 rows"),
        "{second}"
    );
    assert_eq!(
        ingested(&second),
        (100_000, 0, 100_000),
        "re-sent readings replace: {second}"
    );
    assert_eq!(api.count(AIR).await, 100_000, "never duplicated");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_listed_by_line_and_the_good_rows_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    publish_air(&api).await;

    let base = dir.path().join("base.csv");
    gen_readings(&base, 5, "2026-01-01", 100).await;
    api.ok(&["ingest", "csv", arg(&base), "--dataset", AIR])
        .await;
    assert_eq!(api.count(AIR).await, 100);

    // Line 1 is the header; good rows are on lines 2, 5, 8 and 11.
    let rows = [
        "sensor_id,timestamp,lat,lon,pm2_5,pm10,no2",
        "bad-test-1,2026-02-01T00:00:00Z,56.15,10.2,4.5,9.1,12",
        "bad-test-1,2026-02-01T00:10:00Z,56.15,10.2,NaN,9.1,12",
        "bad-test-1,2026-02-01T00:20:00Z,91,10.2,4.5,9.1,12",
        "bad-test-1,2026-02-01T00:30:00Z,,,4.5,,",
        "bad-test-1,2026-02-01T25:00:00Z,56.15,10.2,4.5,9.1,12",
        "bad-test-1,2026-02-01T00:50:00Z,56.15,10.2,abc,9.1,12",
        "bad-test-2,1767225600000,56.15,10.2,,,3",
        "bad-test-2,1999-12-31T23:59:59Z,56.15,10.2,1,2,3",
        "bad-test-2,2026-02-01T01:00:00Z,56.15,10.2,1,2",
        "\"bad,test,3\",2026-02-01T01:00:00Z,56.15,10.2,1,2,3",
        "bad-test-2,2026-02-01T01:10:00Z,56.15,,1,2,3",
        "",
    ];
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, rows.join("\n")).expect("write the CSV");

    let output = api
        .exits(3, &["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    let text = stdout(&output);
    assert!(read_line(&text).starts_with("read 11 rows"), "{text}");
    assert_eq!(ingested(&text), (4, 4, 0), "{text}");
    assert!(text.contains("rejected 7 rows (not sent):\n"), "{text}");
    for expected in [
        "  line 3: pm2_5: NaN is not a finite number\n",
        "  line 4: lat: 91 is outside -90..=90\n",
        "  line 6: timestamp: `2026-02-01T25:00:00Z` is neither RFC 3339",
        "  line 7: pm2_5: `abc` is not a number\n",
        "  line 9: time 1999-12-31T23:59:59Z is before 2000-01-01",
        "  line 10: has 6 fields; the header has 7\n",
        "  line 12: lat and lon must both be given or both be empty\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(api.count(AIR).await, 104, "exactly the four good rows");

    // A measure the dataset does not have stops the file at its header.
    let unknown = dir.path().join("unknown.csv");
    std::fs::write(
        &unknown,
        "sensor_id,timestamp,lat,lon,pm1\nbad-test-4,2026-02-01T00:00:00Z,,,1\n",
    )
    .expect("write the CSV");
    let output = api
        .exits(1, &["ingest", "csv", arg(&unknown), "--dataset", AIR])
        .await;
    let message = stderr(&output);
    assert!(
        message.contains(
            "line 1: header column `pm1` is not a measure of the dataset (it has: pm2_5, pm10, no2)"
        ),
        "{message}"
    );
    assert_eq!(api.count(AIR).await, 104, "nothing sent");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_and_json_arrays_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    publish_air(&api).await;

    let lines = dir.path().join("readings.jsonl");
    std::fs::write(
        &lines,
        concat!(
            r#"{"sensor_id":"json-1","at":"2026-03-01T00:00:00Z","values":{"pm2_5":4.5,"no2":12},"lat":56.15,"lon":10.2}"#,
            "\n\n",
            r#"{"sensor_id":"json-1","at":1772323800000,"values":{"pm10":7.5,"no2":null}}"#,
            "\n",
            r#"{"sensor_id":"json-2","at":"2026-03-01T01:00:00+01:00","values":{"no2":3}}"#,
            "\n",
        ),
    )
    .expect("write JSON lines");
    let text = api
        .ok(&["ingest", "json", arg(&lines), "--dataset", AIR])
        .await;
    assert!(read_line(&text).starts_with("read 3 rows"), "{text}");
    assert_eq!(ingested(&text), (3, 3, 0), "{text}");
    assert_eq!(api.count(AIR).await, 3);

    let array = dir.path().join("readings.json");
    std::fs::write(
        &array,
        r#"[
  {"sensor_id": "json-3", "at": "2026-03-02T00:00:00Z", "values": {"pm2_5": 1.5}, "lat": 56.1, "lon": 10.1},
  {"sensor_id": "json-3", "at": "2026-03-02T00:10:00Z", "values": {"pm2_5": 1.6}},
  {"sensor_id": "json-2", "at": "2026-03-01T00:00:00Z", "values": {"no2": 4}}
]
"#,
    )
    .expect("write a JSON array");
    let text = api
        .ok(&["ingest", "json", arg(&array), "--dataset", AIR])
        .await;
    assert!(read_line(&text).starts_with("read 3 rows"), "{text}");
    assert_eq!(
        ingested(&text),
        (3, 2, 1),
        "json-2 at 00:00Z is the same reading as 01:00+01:00: {text}"
    );
    assert_eq!(api.count(AIR).await, 5);

    // A measure the dataset lacks, in JSON, skips just that row.
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        concat!(
            r#"{"sensor_id":"json-4","at":"2026-03-03T00:00:00Z","values":{"pm1":1}}"#,
            "\n",
            r#"{"sensor_id":"json-4","at":"2026-03-03T00:00:00Z","values":{"no2":1}}"#,
            "\n",
        ),
    )
    .expect("write JSON lines");
    let output = api
        .exits(3, &["ingest", "json", arg(&mixed), "--dataset", AIR])
        .await;
    let text = stdout(&output);
    assert!(
        text.contains("  line 1: `pm1` is not a measure of the dataset"),
        "{text}"
    );
    assert_eq!(ingested(&text), (1, 1, 0), "{text}");
    assert_eq!(api.count(AIR).await, 6);

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_formats_round_trip_and_buckets_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    publish_air(&api).await;
    let copy_file = dir.path().join("copy.toml");
    std::fs::write(&copy_file, sensor_copy_toml("aarhus-air-copy")).expect("write dataset file");
    api.ok(&["dataset", "publish", "--file", arg(&copy_file)])
        .await;

    // Ten sensors every ten minutes for 24 hours.
    let file = dir.path().join("day.csv");
    gen_readings(&file, 10, "2026-01-01", 1440).await;
    api.ok(&["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    assert_eq!(api.count(AIR).await, 1440);

    // Six hours from 03:00: 36 instants of 10 sensors.
    let range = |dataset: &'static str, format: &'static str| {
        [
            "query",
            "readings",
            "--dataset",
            dataset,
            "--from",
            "2026-01-01T03:00:00Z",
            "--until",
            "2026-01-01T09:00:00Z",
            "--format",
            format,
        ]
    };

    // CSV: the ingest format; it goes into the copy and comes back the same.
    let csv = api.ok(&range(AIR, "csv")).await;
    assert!(
        csv.starts_with("sensor_id,timestamp,lat,lon,pm2_5,pm10,no2\n"),
        "{csv}"
    );
    let raw_rows = csv.lines().count() as u64 - 1;
    assert_eq!(raw_rows, 360);
    let exported = dir.path().join("exported.csv");
    std::fs::write(&exported, &csv).expect("write the export");
    let text = api
        .ok(&[
            "ingest",
            "csv",
            arg(&exported),
            "--dataset",
            "aarhus-air-copy",
        ])
        .await;
    assert_eq!(ingested(&text), (360, 360, 0), "{text}");
    assert_eq!(api.count("aarhus-air-copy").await, 360);
    let back = api.ok(&range("aarhus-air-copy", "csv")).await;
    assert_eq!(back, csv, "a CSV round trip changes nothing");

    // JSON lines: one reading per line, in the ingest json shape.
    let json = api.ok(&range(AIR, "json")).await;
    let readings: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(readings.len() as u64, raw_rows);
    let mut measured: BTreeMap<String, u64> = BTreeMap::new();
    for reading in &readings {
        assert!(reading["sensor_id"].is_string(), "{reading}");
        let at = reading["at"].as_str().expect("at is text");
        assert!(
            ("2026-01-01T03:00:00Z".."2026-01-01T09:00:00Z").contains(&at),
            "{at}"
        );
        assert!(
            reading["lat"].is_f64() && reading["lon"].is_f64(),
            "{reading}"
        );
        for (name, value) in reading["values"].as_object().expect("values") {
            if value.is_number() {
                *measured.entry(name.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(
        measured.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["no2", "pm10", "pm2_5"]
    );
    let exported = dir.path().join("exported.jsonl");
    std::fs::write(&exported, &json).expect("write the export");
    let text = api
        .ok(&[
            "ingest",
            "json",
            arg(&exported),
            "--dataset",
            "aarhus-air-copy",
        ])
        .await;
    assert_eq!(
        ingested(&text),
        (360, 0, 360),
        "the JSON export is the same readings: {text}"
    );

    // GeoJSON: a FeatureCollection of points, longitude first.
    let geojson = api.ok(&range(AIR, "geojson")).await;
    let collection: Value = serde_json::from_str(&geojson).expect("GeoJSON is JSON");
    assert_eq!(collection["type"], "FeatureCollection");
    let features = collection["features"].as_array().expect("features");
    assert_eq!(features.len() as u64, raw_rows, "every reading has a place");
    for (feature, reading) in features.iter().zip(&readings) {
        assert_eq!(feature["type"], "Feature");
        assert_eq!(feature["geometry"]["type"], "Point");
        assert_eq!(feature["geometry"]["coordinates"][0], reading["lon"]);
        assert_eq!(feature["geometry"]["coordinates"][1], reading["lat"]);
        assert_eq!(feature["properties"]["sensor_id"], reading["sensor_id"]);
        assert_eq!(feature["properties"]["at"], reading["at"]);
    }

    // Table: a header, one line per reading, and the count on stderr.
    let output = api.exits(0, &range(AIR, "table")).await;
    let table = stdout(&output);
    let header = table.lines().next().expect("a header");
    for column in ["sensor_id", "at", "lat", "lon", "pm2_5", "pm10", "no2"] {
        assert!(
            header.split_whitespace().any(|c| c == column),
            "{column} in {header}"
        );
    }
    assert_eq!(table.lines().count() as u64, raw_rows + 1);
    assert!(
        stderr(&output).contains(&format!("{raw_rows} readings")),
        "{}",
        stderr(&output)
    );

    // Hourly buckets over the same range: six per measure, whose counts
    // add up to the raw readings holding that measure.
    let mut bucketed = range(AIR, "csv").map(str::to_string).to_vec();
    bucketed.extend(["--bucket".to_string(), "1h".to_string()]);
    let bucketed: Vec<&str> = bucketed.iter().map(String::as_str).collect();
    let output = api.exits(0, &bucketed).await;
    assert!(!stderr(&output).contains("withheld"), "{}", stderr(&output));
    let buckets = stdout(&output);
    let mut lines = buckets.lines();
    assert_eq!(
        lines.next(),
        Some("start,sensor_id,measure,count,min,max,avg,sum,distinct_sensors")
    );
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_measure: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 9, "{line}");
        assert_eq!(cells[1], "", "over all sensors: {line}");
        assert_eq!(cells[8], "10", "ten sensors an hour: {line}");
        let count: u64 = cells[3].parse().expect("a count");
        *counted.entry(cells[2].to_string()).or_default() += count;
        *per_measure.entry(cells[2].to_string()).or_default() += 1;
    }
    assert_eq!(counted, measured, "bucket counts add up to the raw rows");
    assert!(per_measure.values().all(|n| *n == 6), "{per_measure:?}");

    let mut json_buckets = range(AIR, "json").map(str::to_string).to_vec();
    json_buckets.extend(["--bucket".to_string(), "1h".to_string()]);
    let json_buckets: Vec<&str> = json_buckets.iter().map(String::as_str).collect();
    let text = api.ok(&json_buckets).await;
    let total: u64 = text
        .lines()
        .map(|line| {
            let bucket: Value = serde_json::from_str(line).expect("a JSON line");
            bucket["count"].as_u64().expect("a count")
        })
        .sum();
    assert_eq!(total, measured.values().sum::<u64>());

    // GeoJSON has no shape for buckets.
    let mut refused = range(AIR, "geojson").map(str::to_string).to_vec();
    refused.extend(["--bucket".to_string(), "1h".to_string()]);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let output = api.run(&refused).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("--format geojson draws readings as points"),
        "{message}"
    );
    assert!(message.contains("buckets have no location"), "{message}");

    fed.shutdown().await.expect("shutdown");
}

const PILOTS_TOML: &str = r#"
id = "digit-pilots"
title = "DIGIT pilot results"
description = "Results of pilots run by DIGIT municipalities."
kind = "pilot"
owner = 751
theme = "digitalisation"
keywords = ["pilots"]
license = "CC-BY-4.0"
classification = "open"

[[schema]]
name = "title"
type = "text"

[[schema]]
name = "budget_dkk"
type = "number"
unit = "DKK"
"#;

const PROCUREMENTS_TOML: &str = r#"
id = "digit-procurements"
title = "DIGIT joint procurements"
description = "Outcomes of joint public procurements."
kind = "procurement"
owner = 751
theme = "procurement"
license = "CC-BY-4.0"
classification = "open"

[temporal]
from = "2018-01-01"

[[schema]]
name = "supplier"
type = "text"

[[schema]]
name = "value_dkk"
type = "number"
unit = "DKK"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_records_load_and_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    for (name, text) in [
        ("pilots.toml", PILOTS_TOML),
        ("procurements.toml", PROCUREMENTS_TOML),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write dataset file");
        api.ok(&["dataset", "publish", "--file", arg(&file)]).await;
    }
    let list = api.ok(&["dataset", "list"]).await;
    assert!(list.contains("digit-pilots"), "{list}");
    assert!(list.contains("digit-procurements"), "{list}");

    let load = [
        "records",
        "load-fixtures",
        "--pilots-dataset",
        "digit-pilots",
        "--procurements-dataset",
        "digit-procurements",
    ];
    let text = api.ok(&load).await;
    assert!(text.contains("pilots: "), "{text}");
    assert!(text.contains("stored in `digit-pilots`"), "{text}");
    assert!(text.contains(" replaced)"), "{text}");
    assert!(
        text.contains("0 replaced)\n"),
        "first load is all new: {text}"
    );
    let again = api.ok(&load).await;
    assert!(again.contains("(0 new, "), "a reload replaces: {again}");

    let procurements = api
        .ok(&[
            "records",
            "procurements",
            "list",
            "--supplier",
            "KMD",
            "--format",
            "json",
        ])
        .await;
    let found: Vec<Value> = procurements
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let mut ids: Vec<&str> = found
        .iter()
        .map(|p| p["id"].as_str().expect("an id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec!["digit-2020-care-system", "digit-2022-payroll-finance"],
        "{procurements}"
    );
    for procurement in &found {
        assert_eq!(procurement["dataset_id"], "digit-procurements");
        let suppliers = procurement["suppliers"].to_string();
        assert!(suppliers.contains("KMD"), "{procurement}");
    }
    let lower = api
        .ok(&[
            "records",
            "procurements",
            "list",
            "--supplier",
            "kmd",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(lower.lines().count(), 2, "any case: {lower}");

    let pilots = api
        .ok(&["records", "pilots", "list", "--phase", "operation"])
        .await;
    let lines: Vec<&str> = pilots.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two pilots: {pilots}");
    assert!(lines[0].starts_with("id "), "{pilots}");
    let mut ids: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec!["gladsaxe-green-it", "kalundborg-digitalisation"],
        "{pilots}"
    );
    for line in &lines[1..] {
        assert!(line.contains("operation"), "{pilots}");
    }

    // Records go only into a dataset of their kind.
    let output = api
        .run(&[
            "records",
            "load-fixtures",
            "--pilots-dataset",
            "digit-procurements",
            "--procurements-dataset",
            "digit-procurements",
        ])
        .await;
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("refused to store pilot"),
        "{}",
        stderr(&output)
    );

    fed.shutdown().await.expect("shutdown");
}

/// The README's steps for records on a fresh node: publish the two records
/// datasets from templates, load the fixture records, list KMD's tenders,
/// put the README's example CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_records_steps_work_on_a_fresh_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    let pilots = api
        .ok(&[
            "dataset",
            "publish",
            "--records-kind",
            "pilot",
            "--code",
            "751",
        ])
        .await;
    assert!(pilots.contains("`aarhus-pilot-results`"), "{pilots}");
    api.ok(&[
        "dataset",
        "publish",
        "--records-kind",
        "procurement",
        "--code",
        "751",
    ])
    .await;
    api.ok(&[
        "records",
        "load-fixtures",
        "--pilots-dataset",
        "aarhus-pilot-results",
        "--procurements-dataset",
        "aarhus-procurement-outcomes",
    ])
    .await;
    let listed = api
        .ok(&["records", "procurements", "list", "--supplier", "KMD"])
        .await;
    assert!(listed.contains("digit-2020-care-system"), "{listed}");
    assert!(listed.contains("digit-2022-payroll-finance"), "{listed}");

    // The README's `records procurements put tenders.csv` example, with the
    // CSV shown there.
    let readme = include_str!("../../README.md");
    let csv = readme
        .split("```csv\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a CSV example in the README");
    let tenders = dir.path().join("tenders.csv");
    std::fs::write(&tenders, csv).expect("write");
    let put = api
        .ok(&[
            "records",
            "procurements",
            "put",
            arg(&tenders),
            "--dataset",
            "aarhus-procurement-outcomes",
        ])
        .await;
    assert!(put.contains("procurements: 1 stored"), "{put}");
    let listed = api
        .ok(&["records", "procurements", "list", "--supplier", "KMD"])
        .await;
    assert_eq!(listed.lines().count(), 4, "a header and three: {listed}");
    assert!(listed.contains("aarhus-esdh-2025 "), "{listed}");

    // A dataset file missing keys names them all, and the required list.
    let file = dir.path().join("thin.toml");
    std::fs::write(
        &file,
        "id = \"aarhus-thin\"\ntitle = \"Thin\"\nkind = \"sensor\"\nowner = 751\n",
    )
    .expect("write");
    let refused = api
        .exits(1, &["dataset", "publish", "--file", arg(&file)])
        .await;
    let text = stderr(&refused);
    assert!(
        text.contains("missing required keys description, theme, license, classification, schema"),
        "{text}"
    );
    fed.shutdown().await.expect("shutdown");
}

/// Pilots from a CSV file and procurements from a JSON file and a TOML
/// file.
const PUT_PILOTS_CSV: &str = "\
id,title,municipalities,phase,technology,started,ended,budget_dkk,kpis,findings
aarhus-lights,Adaptive street lights,751;746,test,LoRaWAN;LED,2024-05,,1200000,energy_saved=31 percent,Works
aarhus-bins,Bin sensors,751,operation,LoRaWAN,2023,2024-12-31,300000,,Fewer trips
";

const PUT_PROCUREMENTS_JSON: &str = r#"[
  {"id": "aarhus-esdh-2025", "title": "ESDH system", "buyer_municipalities": [751],
   "procedure": "open", "cpv_codes": ["48000000-8"], "suppliers": ["KMD"],
   "value_dkk": 5400000, "awarded": "2025-02", "bids": 3, "status": "awarded",
   "complaints": [{"body": "Klagenaevnet for Udbud", "outcome": "dismissed"}]},
  {"id": "aarhus-payroll-2024", "title": "Payroll", "procedure": "restricted",
   "suppliers": ["Netcompany A/S"], "status": "in-tender"}
]"#;

const PUT_PROCUREMENTS_TOML: &str = r#"
[[procurement]]
id = "aarhus-parking-2026"
title = "Parking sensors"
buyer_municipalities = [751, 746]
procedure = "framework-mini-tender"
suppliers = ["KMD Logistics", "Acme A/S"]
value_dkk = 800000
awarded = "2026-01-15"
bids = 2
status = "awarded"
"#;

/// `records pilots|procurements put FILE`: CSV, JSON and TOML files stored
/// and listed; a file with a bad record is refused whole, naming where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_files_are_put_and_a_bad_record_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    for kind in ["pilot", "procurement"] {
        api.ok(&[
            "dataset",
            "publish",
            "--records-kind",
            kind,
            "--code",
            "751",
        ])
        .await;
    }
    let write = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write a records file");
        file
    };

    // Pilots from CSV.
    let pilots_csv = write("pilots.csv", PUT_PILOTS_CSV);
    let put = api
        .ok(&[
            "records",
            "pilots",
            "put",
            arg(&pilots_csv),
            "--dataset",
            "aarhus-pilot-results",
        ])
        .await;
    assert_eq!(
        put.trim(),
        "pilots: 2 stored in `aarhus-pilot-results` (2 new, 0 replaced)",
        "{put}"
    );
    let listed = api.ok(&["records", "pilots", "list"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two pilots: {listed}");
    assert!(lines[0].starts_with("id "), "{listed}");
    let mut ids: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["aarhus-bins", "aarhus-lights"], "{listed}");
    let json = api
        .ok(&["records", "pilots", "list", "--format", "json"])
        .await;
    let lights: Value = json
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .find(|p| p["id"] == "aarhus-lights")
        .unwrap_or_else(|| panic!("no aarhus-lights: {json}"));
    assert_eq!(lights["dataset_id"], "aarhus-pilot-results", "{lights}");
    assert_eq!(lights["title"], "Adaptive street lights", "{lights}");
    assert_eq!(lights["phase"], "test", "{lights}");
    assert_eq!(lights["municipalities"], serde_json::json!([751, 746]));
    assert_eq!(lights["technology"], serde_json::json!(["LoRaWAN", "LED"]));
    assert_eq!(lights["started"], "2024-05", "{lights}");
    assert_eq!(lights["ended"], Value::Null, "{lights}");
    assert_eq!(lights["budget_dkk"], 1_200_000, "{lights}");
    assert_eq!(lights["kpis"][0]["name"], "energy_saved", "{lights}");
    assert_eq!(lights["kpis"][0]["value"], 31.0, "{lights}");
    assert_eq!(lights["kpis"][0]["unit"], "percent", "{lights}");
    // Sending the same file again replaces.
    let again = api
        .ok(&[
            "records",
            "pilots",
            "put",
            arg(&pilots_csv),
            "--dataset",
            "aarhus-pilot-results",
        ])
        .await;
    assert!(again.contains("(0 new, 2 replaced)"), "{again}");

    // Procurements from JSON and from TOML.
    let json_file = write("procurements.json", PUT_PROCUREMENTS_JSON);
    let put = api
        .ok(&[
            "records",
            "procurements",
            "put",
            arg(&json_file),
            "--dataset",
            "aarhus-procurement-outcomes",
        ])
        .await;
    assert!(
        put.contains("procurements: 2 stored in `aarhus-procurement-outcomes` (2 new, 0 replaced)"),
        "{put}"
    );
    // The format from --format, whatever the file's name.
    let toml_file = write("procurements.txt", PUT_PROCUREMENTS_TOML);
    let put = api
        .ok(&[
            "records",
            "procurements",
            "put",
            arg(&toml_file),
            "--dataset",
            "aarhus-procurement-outcomes",
            "--format",
            "toml",
        ])
        .await;
    assert!(put.contains("procurements: 1 stored"), "{put}");

    let kmd = api
        .ok(&[
            "records",
            "procurements",
            "list",
            "--supplier",
            "KMD",
            "--format",
            "json",
        ])
        .await;
    let found: Vec<Value> = kmd
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let mut ids: Vec<&str> = found
        .iter()
        .map(|p| p["id"].as_str().expect("an id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec!["aarhus-esdh-2025", "aarhus-parking-2026"],
        "{kmd}"
    );
    let esdh = found
        .iter()
        .find(|p| p["id"] == "aarhus-esdh-2025")
        .expect("the ESDH tender");
    assert_eq!(esdh["dataset_id"], "aarhus-procurement-outcomes", "{esdh}");
    assert_eq!(esdh["procedure"], "open", "{esdh}");
    assert_eq!(esdh["cpv_codes"], serde_json::json!(["48000000-8"]));
    assert_eq!(esdh["value_dkk"], 5_400_000, "{esdh}");
    assert_eq!(esdh["awarded"], "2025-02", "{esdh}");
    assert_eq!(esdh["complaints"][0]["outcome"], "dismissed", "{esdh}");
    let parking = found
        .iter()
        .find(|p| p["id"] == "aarhus-parking-2026")
        .expect("the parking tender");
    assert_eq!(parking["procedure"], "framework-mini-tender", "{parking}");
    assert_eq!(parking["awarded"], "2026-01-15", "{parking}");
    assert_eq!(
        parking["buyer_municipalities"],
        serde_json::json!([751, 746])
    );
    let table = api
        .ok(&[
            "records",
            "procurements",
            "list",
            "--supplier",
            "netcompany",
        ])
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one tender: {table}");
    assert!(lines[1].starts_with("aarhus-payroll-2024 "), "{table}");

    // A bad date on CSV line 3: nothing of the file is stored.
    let bad_csv = write(
        "bad-pilots.csv",
        "id,title,phase,started\n\
         aarhus-new-one,Fine,test,2025-01\n\
         aarhus-new-two,Bad date,test,2025-jan\n",
    );
    let refused = api
        .exits(
            3,
            &[
                "records",
                "pilots",
                "put",
                arg(&bad_csv),
                "--dataset",
                "aarhus-pilot-results",
            ],
        )
        .await;
    let message = stderr(&refused);
    assert!(
        message.contains("1 problem; nothing was stored"),
        "{message}"
    );
    assert!(
        message.contains(
            "line 3 (id `aarhus-new-two`): started: `2025-jan` is not YYYY, YYYY-MM or YYYY-MM-DD"
        ),
        "{message}"
    );
    assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));
    let json = api
        .ok(&["records", "pilots", "list", "--format", "json"])
        .await;
    assert_eq!(json.lines().count(), 2, "still two pilots: {json}");
    assert!(!json.contains("aarhus-new-one"), "{json}");

    // A missing field in JSON record 2, and an unknown procedure in TOML.
    let before = api
        .ok(&["records", "procurements", "list", "--format", "json"])
        .await;
    assert_eq!(before.lines().count(), 3, "{before}");
    let bad_json = write(
        "bad-procurements.json",
        r#"[{"id": "aarhus-ok", "title": "Fine", "procedure": "open"},
            {"id": "aarhus-no-procedure", "title": "No procedure"}]"#,
    );
    let refused = api
        .exits(
            3,
            &[
                "records",
                "procurements",
                "put",
                arg(&bad_json),
                "--dataset",
                "aarhus-procurement-outcomes",
            ],
        )
        .await;
    let message = stderr(&refused);
    assert!(message.contains("nothing was stored"), "{message}");
    assert!(
        message.contains("record 2 (id `aarhus-no-procedure`): missing field `procedure`"),
        "{message}"
    );
    let bad_toml = write(
        "bad-procurements.toml",
        "[[procurement]]\nid = \"aarhus-ok\"\ntitle = \"Fine\"\nprocedure = \"open\"\n\n\
         [[procurement]]\nid = \"aarhus-odd\"\ntitle = \"Odd\"\nprocedure = \"auction\"\n",
    );
    let refused = api
        .exits(
            3,
            &[
                "records",
                "procurements",
                "put",
                arg(&bad_toml),
                "--dataset",
                "aarhus-procurement-outcomes",
            ],
        )
        .await;
    let message = stderr(&refused);
    assert!(
        message.contains(
            "[[procurement]] number 2 (id `aarhus-odd`): procedure: `auction` is not one of"
        ),
        "{message}"
    );
    let after = api
        .ok(&["records", "procurements", "list", "--format", "json"])
        .await;
    assert_eq!(after, before, "nothing stored");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_the_ingest_role_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let admin = Api::of(&fed.nodes[0]);
    publish_air(&admin).await;
    let file = dir.path().join("some.csv");
    gen_readings(&file, 2, "2026-01-01", 10).await;

    // A token the node does not know.
    let stranger = admin.with_token(&format!("svk_{}", "0".repeat(64)));
    let output = stranger
        .exits(1, &["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{} refused to list its datasets", admin.endpoint)),
        "{message}"
    );
    assert!(message.contains("Unauthenticated"), "{message}");
    assert!(message.contains("unknown or revoked token"), "{message}");
    let output = stranger
        .exits(
            1,
            &[
                "dataset",
                "publish",
                "--sensor-kind",
                "noise",
                "--code",
                "751",
            ],
        )
        .await;
    assert!(
        stderr(&output).contains("unknown or revoked token"),
        "{}",
        stderr(&output)
    );
    assert_eq!(admin.count(AIR).await, 0);

    // A read-only token made with `samvirke token new`, added to the
    // node's config; the node reads its tokens when it starts.
    let made = samvirke(
        ["token", "new", "--name", "analyst", "--role", "read"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(made.status.success(), "{}", stderr(&made));
    let made = stdout(&made);
    let secret = made
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("svk_"))
        .unwrap_or_else(|| panic!("no token printed: {made}"))
        .to_string();
    let entry = made
        .split_once("[[local.tokens]]")
        .map(|(_, rest)| format!("\n[[local.tokens]]{rest}"))
        .unwrap_or_else(|| panic!("no config entry printed: {made}"));
    let node_dir = fed.nodes[0].dir.clone();
    let config_path = node_dir.join(CONFIG_FILE);
    let mut config_text = std::fs::read_to_string(&config_path).expect("read node.toml");
    config_text.push_str(&entry);
    std::fs::write(&config_path, config_text).expect("write node.toml");
    fed.shutdown().await.expect("shutdown");

    let config = Config::load(&config_path).expect("the config with the new token loads");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let running = Node::open(config)
        .expect("reopen the node")
        .spawn(listeners);
    let admin = Api {
        endpoint: running.local_endpoint(),
        token: admin.token.clone(),
    };
    let analyst = admin.with_token(&secret);

    let list = analyst.ok(&["dataset", "list"]).await;
    assert!(list.contains(AIR), "the analyst may read: {list}");
    let output = analyst
        .exits(1, &["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    let message = stderr(&output);
    assert!(
        message.contains("refused to store the readings (PermissionDenied)"),
        "{message}"
    );
    assert!(
        message.contains("token `analyst` lacks role `ingest`"),
        "{message}"
    );
    assert!(!stdout(&output).contains("ingested"), "{}", stdout(&output));
    assert_eq!(admin.count(AIR).await, 0, "nothing stored");
    let output = analyst
        .exits(
            1,
            &[
                "dataset",
                "publish",
                "--sensor-kind",
                "noise",
                "--code",
                "751",
            ],
        )
        .await;
    assert!(
        stderr(&output).contains("lacks role `ingest`"),
        "{}",
        stderr(&output)
    );
    let output = analyst
        .exits(
            1,
            &[
                "records",
                "load-fixtures",
                "--pilots-dataset",
                "digit-pilots",
                "--procurements-dataset",
                "digit-procurements",
            ],
        )
        .await;
    assert!(
        stderr(&output).contains("lacks role `ingest`"),
        "{}",
        stderr(&output)
    );

    // The admin token still ingests after the restart.
    let text = admin
        .ok(&["ingest", "csv", arg(&file), "--dataset", AIR])
        .await;
    assert_eq!(ingested(&text), (10, 10, 0), "{text}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_exports_as_dcat_ap_dk_to_stdout_or_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = aarhus(dir.path()).await;
    let api = Api::of(&fed.nodes[0]);
    publish_air(&api).await;
    let http = fed.nodes[0]
        .running
        .http_endpoint()
        .expect("the HTTP API is on");

    let text = api.ok(&["catalog", "export", "--format", "dcat"]).await;
    let document: Value = serde_json::from_str(&text).expect("a JSON document");
    let graph = document["@graph"].as_array().expect("an @graph");
    let catalog = graph
        .iter()
        .find(|n| n["@type"] == "dcat:Catalog")
        .expect("a catalog");
    assert_eq!(
        catalog["dcat:dataset"][0]["@id"],
        "urn:samvirke:751:dataset:aarhus-air-quality"
    );
    let urls: Vec<&str> = graph
        .iter()
        .filter(|n| n["@type"] == "dcat:Distribution")
        .filter_map(|n| n["dcat:accessURL"]["@id"].as_str())
        .collect();
    assert_eq!(urls.len(), 3, "JSON, CSV and GeoJSON: {urls:?}");
    for url in urls {
        assert!(
            url.starts_with(&format!(
                "{http}/api/v1/datasets/aarhus-air-quality/readings"
            )),
            "{url}"
        );
    }

    // --out writes the same document (but for when it was made) to a file.
    let out = dir.path().join("catalog.jsonld");
    api.ok(&["catalog", "export", "--out", arg(&out)]).await;
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the file")).expect("JSON");
    assert_eq!(
        written["@graph"].as_array().map(Vec::len),
        Some(graph.len())
    );

    // A format there is no export for is refused by name; the fellowship
    // listing is still `samvirke catalog` without a subcommand.
    let refused = api
        .exits(2, &["catalog", "export", "--format", "csv"])
        .await;
    assert!(stderr(&refused).contains("csv"), "{}", stderr(&refused));
    let listing = api.ok(&["catalog"]).await;
    assert!(listing.starts_with("provider"), "{listing}");
}
