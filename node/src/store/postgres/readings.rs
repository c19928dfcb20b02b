//! [`ReadingTable`] in PostgreSQL: readings as rows of a month-partitioned
//! table, stored with binary `COPY`, read in pages by keyset, aggregated
//! with `date_bin` in SQL.
//!
//! Why pages and not one long cursor: a cursor holds a connection and a
//! snapshot for as long as the reader takes, and the reader is a partner
//! or an analyst who may be slow on purpose. A page is one short query
//! that resumes strictly after the last row returned (`(at, sensor)` is
//! unique within a dataset), so a slow reader costs nothing between pages
//! and memory is one page whatever the answer's size. Aggregations go
//! window by window for the same reason: a window holds a bounded number
//! of buckets, each bucket falls in exactly one window (windows are whole
//! buckets, aligned like them), and a window without data is skipped by
//! asking where the next reading is.

use std::pin::pin;

use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{PostgresStore, Shared, apply, db, pool_error};
use crate::store::table::{
    AreaFilter, ReadingTable, ScanPosition, SensorSummary, TableAggregation, TableBucket,
    TableIngest, TableRow, TableScan,
};
use crate::store::{Keyspace, StoreError, WriteBatch};

/// Months of partitions created ahead of the current one at start-up.
const MONTHS_AHEAD: i32 = 2;

/// A timestamp from milliseconds since the epoch.
fn at(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Backend(format!("time {ms} ms is out of range: {e}")))
}

/// Milliseconds since the epoch of a stored timestamp (always whole ms).
fn ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// Months since year 0 of a time: `year * 12 + month - 1`.
fn month_index(at: OffsetDateTime) -> i32 {
    at.year() * 12 + i32::from(u8::from(at.month())) - 1
}

fn month_start(index: i32) -> Result<time::Date, StoreError> {
    let month = u8::try_from(index.rem_euclid(12) + 1)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| StoreError::Backend(format!("month {index} is out of range")))?;
    time::Date::from_calendar_date(index.div_euclid(12), month, 1)
        .map_err(|e| StoreError::Backend(format!("month {index}: {e}")))
}

/// Creates the partitions for the current month and the next few.
pub(super) async fn prepare_partitions(shared: &Shared) -> Result<(), StoreError> {
    let now = month_index(OffsetDateTime::now_utc());
    ensure_partitions(shared, (now..=now + MONTHS_AHEAD).collect()).await
}

/// Creates missing month partitions for `months` (see [`month_index`]).
async fn ensure_partitions(shared: &Shared, months: Vec<i32>) -> Result<(), StoreError> {
    let missing: Vec<i32> = {
        let known = shared
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        months.into_iter().filter(|m| !known.contains(m)).collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut client = shared.readings.get().await.map_err(pool_error)?;
    for month in missing {
        let first = month_start(month)?;
        // Its own transaction: the partition's lock is held only while it
        // is created, not for a whole batch.
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT samvirke_readings_month($1)", &[&first])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        shared
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(month);
    }
    Ok(())
}

/// A query's text and parameters, built up together.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds a float parameter, typed so that it is never taken for `numeric`.
    fn float(&mut self, value: f64) -> String {
        format!("{}::float8", self.bind(value))
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn args(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The `WHERE` conditions of a scan over `[from_ms, until_ms)`.
fn scan_conditions(
    sql: &mut Sql,
    scan: &TableScan,
    from_ms: i64,
    until_ms: i64,
) -> Result<(), StoreError> {
    let dataset = sql.bind(dataset_column(scan.dataset)?);
    let from = sql.bind(at(from_ms)?);
    let until = sql.bind(at(until_ms)?);
    let sensors = sql.bind(scan.sensors.clone());
    sql.push(&format!(
        " WHERE dataset = {dataset} AND at >= {from} AND at < {until} AND sensor = ANY({sensors})"
    ));
    match scan.area {
        None => {}
        Some(AreaFilter::Box {
            min_lat,
            min_lon,
            max_lat,
            max_lon,
        }) => {
            let (a, b, c, d) = (
                sql.float(min_lat),
                sql.float(max_lat),
                sql.float(min_lon),
                sql.float(max_lon),
            );
            sql.push(&format!(
                " AND lat BETWEEN {a} AND {b} AND lon BETWEEN {c} AND {d}"
            ));
        }
        Some(AreaFilter::Circle { lat, lon, km }) => {
            // The haversine distance exactly as `data::geo::haversine_km`
            // computes it, so both backends draw the same circle.
            let (clat, clon, radius, earth) = (
                sql.float(lat),
                sql.float(lon),
                sql.float(km),
                sql.float(crate::data::geo::EARTH_RADIUS_KM),
            );
            sql.push(&format!(
                " AND lat IS NOT NULL AND 2.0::float8 * {earth} * asin(least(sqrt( \
                   (sin((radians(lat) - radians({clat})) / 2.0) * sin((radians(lat) - radians({clat})) / 2.0)) \
                   + cos(radians({clat})) * cos(radians(lat)) \
                   * (sin((radians(lon) - radians({clon})) / 2.0) * sin((radians(lon) - radians({clon})) / 2.0)) \
                 ), 1.0)) <= {radius}"
            ));
        }
    }
    if let Some(positions) = &scan.measures {
        let any: Vec<String> = positions
            .iter()
            .map(|p| format!("measures[{}] IS NOT NULL", p + 1))
            .collect();
        if any.is_empty() {
            sql.push(" AND false");
        } else {
            sql.push(&format!(" AND ({})", any.join(" OR ")));
        }
    }
    Ok(())
}

fn summary(row: &tokio_postgres::Row) -> SensorSummary {
    let located: Option<OffsetDateTime> = row.get(6);
    let (last_lat, last_lon): (Option<f64>, Option<f64>) = (row.get(4), row.get(5));
    let bounds: [Option<f64>; 4] = [row.get(7), row.get(8), row.get(9), row.get(10)];
    SensorSummary {
        sensor_id: row.get(0),
        count: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        first_ms: ms(row.get(2)),
        last_ms: ms(row.get(3)),
        last_location: match (last_lat, last_lon, located) {
            (Some(lat), Some(lon), Some(when)) => Some((lat, lon, ms(when))),
            _ => None,
        },
        bounds: match bounds {
            [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
            _ => None,
        },
    }
}

const SENSOR_COLUMNS: &str = "sensor, readings, first_at, last_at, last_lat, last_lon, \
     last_located_at, min_lat, min_lon, max_lat, max_lon";

/// The index entries of dataset `$1` recounted from its readings.
const RECOUNT: &str = "SELECT sensor, count(*), min(at), max(at), \
       (array_agg(lat ORDER BY at DESC) FILTER (WHERE lat IS NOT NULL))[1], \
       (array_agg(lon ORDER BY at DESC) FILTER (WHERE lat IS NOT NULL))[1], \
       max(at) FILTER (WHERE lat IS NOT NULL), \
       min(lat), min(lon), max(lat), max(lon) \
     FROM samvirke_readings WHERE dataset = $1 GROUP BY sensor ORDER BY sensor";

/// Merges the staged batch into the readings and the sensor index; returns
/// (rows new, rows written).
///
/// A row counts as new only if this statement inserted it: `DO NOTHING`
/// waits for another process storing the same sensor's same millisecond
/// and, once that one commits, leaves the row to it, so the two never both
/// count it. The `UPDATE` replaces rows stored before the statement began
/// (parts of one statement do not see each other's writes, so it never
/// touches the rows the `INSERT` just added); `$2` and `$3` bound the
/// batch's times so it reads only the partitions the batch falls in. A
/// row another process stored while this statement ran is neither, and
/// [`OVERWRITE_CONCURRENT`] then writes this batch's values over it.
const MERGE: &str = "
WITH inserted AS (
    INSERT INTO samvirke_readings (dataset, sensor, at, measures, lat, lon)
    SELECT $1, sensor, at, measures, lat, lon FROM samvirke_staging
    ON CONFLICT (dataset, sensor, at) DO NOTHING
    RETURNING sensor
), replaced AS (
    UPDATE samvirke_readings r
    SET measures = s.measures, lat = s.lat, lon = s.lon
    FROM samvirke_staging s
    WHERE r.dataset = $1 AND r.sensor = s.sensor AND r.at = s.at
        AND r.at BETWEEN $2 AND $3
    RETURNING 1
), added AS (
    SELECT sensor, count(*) AS added FROM inserted GROUP BY sensor
), per_sensor AS (
    SELECT sensor,
        min(at) AS first_at, max(at) AS last_at,
        (array_agg(lat ORDER BY at DESC) FILTER (WHERE lat IS NOT NULL))[1] AS last_lat,
        (array_agg(lon ORDER BY at DESC) FILTER (WHERE lat IS NOT NULL))[1] AS last_lon,
        max(at) FILTER (WHERE lat IS NOT NULL) AS last_located_at,
        min(lat) AS min_lat, min(lon) AS min_lon, max(lat) AS max_lat, max(lon) AS max_lon
    FROM samvirke_staging GROUP BY sensor
), indexed AS (
    INSERT INTO samvirke_sensors AS s (dataset, sensor, readings, first_at, last_at,
        last_lat, last_lon, last_located_at, min_lat, min_lon, max_lat, max_lon)
    SELECT $1, p.sensor, coalesce(a.added, 0), p.first_at, p.last_at, p.last_lat, p.last_lon,
        p.last_located_at, p.min_lat, p.min_lon, p.max_lat, p.max_lon
    FROM per_sensor p LEFT JOIN added a ON a.sensor = p.sensor ORDER BY p.sensor
    ON CONFLICT (dataset, sensor) DO UPDATE SET
        readings = s.readings + EXCLUDED.readings,
        first_at = least(s.first_at, EXCLUDED.first_at),
        last_at = greatest(s.last_at, EXCLUDED.last_at),
        last_lat = CASE WHEN EXCLUDED.last_located_at IS NOT NULL
            AND (s.last_located_at IS NULL OR EXCLUDED.last_located_at >= s.last_located_at)
            THEN EXCLUDED.last_lat ELSE s.last_lat END,
        last_lon = CASE WHEN EXCLUDED.last_located_at IS NOT NULL
            AND (s.last_located_at IS NULL OR EXCLUDED.last_located_at >= s.last_located_at)
            THEN EXCLUDED.last_lon ELSE s.last_lon END,
        last_located_at = greatest(s.last_located_at, EXCLUDED.last_located_at),
        min_lat = least(s.min_lat, EXCLUDED.min_lat),
        min_lon = least(s.min_lon, EXCLUDED.min_lon),
        max_lat = greatest(s.max_lat, EXCLUDED.max_lat),
        max_lon = greatest(s.max_lon, EXCLUDED.max_lon)
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted),
    (SELECT count(*) FROM inserted) + (SELECT count(*) FROM replaced)";

/// After [`MERGE`] wrote fewer rows than were staged: the rows another
/// process stored while it ran get this batch's values (a new statement
/// sees them), so the later batch wins as it does on one process.
const OVERWRITE_CONCURRENT: &str = "
UPDATE samvirke_readings r
SET measures = s.measures, lat = s.lat, lon = s.lon
FROM samvirke_staging s
WHERE r.dataset = $1 AND r.sensor = s.sensor AND r.at = s.at
    AND r.at BETWEEN $2 AND $3
    AND (r.measures, r.lat, r.lon) IS DISTINCT FROM (s.measures, s.lat, s.lon)";

/// SQLSTATEs after which a whole transaction is simply tried again:
/// deadlock and serialization failure (two processes updating the same
/// sensors' index entries in different orders).
fn retryable(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend(m) if m.starts_with("PostgreSQL 40P01") || m.starts_with("PostgreSQL 40001"))
}

/// The earliest and latest time of `rows` (not empty).
fn time_span(rows: &[TableRow]) -> Result<(OffsetDateTime, OffsetDateTime), StoreError> {
    let first = rows.iter().map(|r| r.ms).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.ms).max().unwrap_or(0);
    Ok((at(first)?, at(last)?))
}

async fn ingest_once(
    shared: &Shared,
    dataset: i32,
    rows: &[TableRow],
    also: &[(Keyspace, WriteBatch)],
) -> Result<TableIngest, StoreError> {
    let mut client = shared.readings.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db)?;
    let sink = tx
        .copy_in(
            "COPY samvirke_staging (sensor, at, measures, lat, lon) FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(db)?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::FLOAT8_ARRAY,
            Type::FLOAT8,
            Type::FLOAT8
        ],
    ));
    for row in rows {
        let when = at(row.ms)?;
        let (lat, lon) = match row.location {
            Some((lat, lon)) => (Some(lat), Some(lon)),
            None => (None, None),
        };
        writer
            .as_mut()
            .write(&[&row.sensor_id, &when, &row.values, &lat, &lon])
            .await
            .map_err(db)?;
    }
    writer.as_mut().finish().await.map_err(db)?;
    let (first, last) = time_span(rows)?;
    let counts = tx
        .query_one(MERGE, &[&dataset, &first, &last])
        .await
        .map_err(db)?;
    let (new, written): (i64, i64) = (counts.get(0), counts.get(1));
    let staged = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if written < staged {
        tx.execute(OVERWRITE_CONCURRENT, &[&dataset, &first, &last])
            .await
            .map_err(db)?;
    }
    apply(&tx, also.to_vec()).await?;
    tx.commit().await.map_err(db)?;
    // Every staged row is now stored with this batch's values: new if this
    // batch inserted it, replaced otherwise.
    Ok(TableIngest {
        new: u64::try_from(new).unwrap_or(0),
        replaced: u64::try_from(staged - new).unwrap_or(0),
    })
}

impl ReadingTable for PostgresStore {
    fn ingest(
        &self,
        dataset: u32,
        rows: Vec<TableRow>,
        also: Vec<(Keyspace, WriteBatch)>,
    ) -> Result<TableIngest, StoreError> {
        let dataset = dataset_column(dataset)?;
        let mut months: Vec<i32> = Vec::new();
        for row in &rows {
            let month = month_index(at(row.ms)?);
            if !months.contains(&month) {
                months.push(month);
            }
        }
        self.call(move |shared| async move {
            ensure_partitions(&shared, months).await?;
            let mut attempt = 0;
            loop {
                match ingest_once(&shared, dataset, &rows, &also).await {
                    Err(e) if retryable(&e) && attempt < 5 => attempt += 1,
                    outcome => return outcome,
                }
            }
        })
    }

    fn sensors(&self, dataset: u32) -> Result<Vec<SensorSummary>, StoreError> {
        let dataset = dataset_column(dataset)?;
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {SENSOR_COLUMNS} FROM samvirke_sensors WHERE dataset = $1 ORDER BY sensor"
                    ),
                    &[&dataset],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(summary).collect())
        })
    }

    fn sensor(&self, dataset: u32, sensor_id: &str) -> Result<Option<SensorSummary>, StoreError> {
        let dataset = dataset_column(dataset)?;
        let sensor_id = sensor_id.to_string();
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {SENSOR_COLUMNS} FROM samvirke_sensors WHERE dataset = $1 AND sensor = $2"
                    ),
                    &[&dataset, &sensor_id],
                )
                .await
                .map_err(db)?;
            Ok(row.as_ref().map(summary))
        })
    }

    fn recount(&self, dataset: u32) -> Result<Vec<SensorSummary>, StoreError> {
        let dataset = dataset_column(dataset)?;
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let rows = client.query(RECOUNT, &[&dataset]).await.map_err(db)?;
            Ok(rows.iter().map(summary).collect())
        })
    }

    fn replace_index(&self, dataset: u32, sensors: Vec<SensorSummary>) -> Result<(), StoreError> {
        let dataset = dataset_column(dataset)?;
        self.call(move |shared| async move {
            let mut client = shared.readings.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "DELETE FROM samvirke_sensors WHERE dataset = $1",
                &[&dataset],
            )
            .await
            .map_err(db)?;
            let insert = tx
                .prepare(&format!(
                    "INSERT INTO samvirke_sensors (dataset, {SENSOR_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .await
                .map_err(db)?;
            for s in sensors {
                let count = i64::try_from(s.count).unwrap_or(i64::MAX);
                let (lat, lon, located) = match s.last_location {
                    Some((lat, lon, when)) => (Some(lat), Some(lon), Some(at(when)?)),
                    None => (None, None, None),
                };
                let b = s.bounds.map(|b| b.map(Some)).unwrap_or([None; 4]);
                tx.execute(
                    &insert,
                    &[
                        &dataset,
                        &s.sensor_id,
                        &count,
                        &at(s.first_ms)?,
                        &at(s.last_ms)?,
                        &lat,
                        &lon,
                        &located,
                        &b[0],
                        &b[1],
                        &b[2],
                        &b[3],
                    ],
                )
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
    }

    fn scan_page(
        &self,
        scan: &TableScan,
        after: Option<&ScanPosition>,
        limit: usize,
    ) -> Result<Vec<TableRow>, StoreError> {
        let mut sql = Sql::default();
        sql.push("SELECT sensor, at, measures, lat, lon FROM samvirke_readings");
        scan_conditions(&mut sql, scan, scan.from_ms, scan.until_ms)?;
        if let Some(position) = after {
            let (t, s) = (
                sql.bind(at(position.ms)?),
                sql.bind(position.sensor_id.clone()),
            );
            if scan.descending {
                sql.push(&format!(" AND (at < {t} OR (at = {t} AND sensor > {s}))"));
            } else {
                sql.push(&format!(" AND (at, sensor) > ({t}, {s})"));
            }
        }
        let order = if scan.descending { "DESC" } else { "ASC" };
        sql.push(&format!(
            " ORDER BY at {order}, sensor ASC LIMIT {}",
            limit.max(1)
        ));
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let rows = client.query(&sql.text, &sql.args()).await.map_err(db)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let (lat, lon): (Option<f64>, Option<f64>) = (row.get(3), row.get(4));
                    TableRow {
                        sensor_id: row.get(0),
                        ms: ms(row.get(1)),
                        values: row.get(2),
                        location: lat.zip(lon),
                    }
                })
                .collect())
        })
    }

    fn first_time(&self, scan: &TableScan) -> Result<Option<i64>, StoreError> {
        let mut sql = Sql::default();
        sql.push("SELECT at FROM samvirke_readings");
        scan_conditions(&mut sql, scan, scan.from_ms, scan.until_ms)?;
        let order = if scan.descending { "DESC" } else { "ASC" };
        sql.push(&format!(" ORDER BY at {order} LIMIT 1"));
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let row = client.query_opt(&sql.text, &sql.args()).await.map_err(db)?;
            Ok(row.map(|row| ms(row.get(0))))
        })
    }

    fn aggregate_window(
        &self,
        aggregation: &TableAggregation,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<TableBucket>, StoreError> {
        let scan = &aggregation.scan;
        let mut sql = Sql::default();
        let bucket = format!("{}::bigint", sql.bind(aggregation.bucket_ms));
        let cell = format!("{}::bigint", sql.bind(aggregation.cell_ms));
        let (lower, upper): (Vec<Option<f64>>, Vec<Option<f64>>) = aggregation
            .clamp
            .iter()
            .map(|c| match c {
                Some((lo, hi)) => (Some(*lo), Some(*hi)),
                None => (None, None),
            })
            .unzip();
        let (lower, upper) = (sql.bind(lower), sql.bind(upper));
        let group = if aggregation.per_sensor {
            "sensor"
        } else {
            "''::text"
        };
        // `greatest`/`least` ignore NULLs: a measure without bounds is
        // left as it is. Sums add in the scan's time order (then sensor
        // order), as the key-value path does: floating-point addition depends on order,
        // and the same question must get the same bits every time.
        sql.push(&format!(
            "WITH r AS (SELECT sensor, at, {group} AS g, \
                date_bin({bucket} * interval '1 millisecond', at, timestamptz 'epoch') AS bucket, \
                date_bin({cell} * interval '1 millisecond', at, timestamptz 'epoch') AS cell, \
                m.pos::integer - 1 AS pos, \
                least(greatest(m.v, ({lower}::float8[])[m.pos]), ({upper}::float8[])[m.pos]) AS v \
             FROM samvirke_readings CROSS JOIN LATERAL unnest(measures) WITH ORDINALITY AS m(v, pos)"
        ));
        scan_conditions(
            &mut sql,
            scan,
            from_ms.max(scan.from_ms),
            until_ms.min(scan.until_ms),
        )?;
        sql.push(" AND m.v IS NOT NULL");
        if let Some(positions) = &scan.measures {
            let list: Vec<String> = positions.iter().map(|p| (p + 1).to_string()).collect();
            sql.push(&format!(" AND m.pos IN ({})", list.join(", ")));
        }
        let order = if scan.descending { "DESC" } else { "ASC" };
        sql.push(&format!(
            "), stats AS (SELECT bucket, g, pos, count(*) AS n, min(v) AS lo, max(v) AS hi, \
                sum(v ORDER BY at {order}, sensor) AS total, count(DISTINCT sensor) AS sensors \
             FROM r GROUP BY bucket, g, pos)"
        ));
        if aggregation.min_group > 0 {
            let min = format!(
                "{}::bigint",
                sql.bind(i64::try_from(aggregation.min_group).unwrap_or(i64::MAX))
            );
            let distinct = if aggregation.per_sensor {
                String::new()
            } else {
                format!(" OR count(DISTINCT sensor) < {min}")
            };
            let parts = if aggregation.per_sensor_parts {
                format!(
                    " UNION SELECT bucket, g, pos FROM r GROUP BY bucket, cell, sensor, g, pos \
                      HAVING count(*) < {min}"
                )
            } else {
                String::new()
            };
            sql.push(&format!(
                ", thin AS (SELECT bucket, g, pos FROM r GROUP BY bucket, cell, g, pos \
                    HAVING count(*) < {min}{distinct}{parts}) \
                 SELECT bucket, g, pos, n, lo, hi, total, sensors FROM stats s \
                 WHERE NOT EXISTS (SELECT 1 FROM thin t WHERE t.bucket = s.bucket AND t.g = s.g AND t.pos = s.pos) \
                 ORDER BY bucket {order}, g, pos"
            ));
        } else {
            sql.push(&format!(
                " SELECT bucket, g, pos, n, lo, hi, total, sensors FROM stats ORDER BY bucket {order}, g, pos"
            ));
        }
        let per_sensor = aggregation.per_sensor;
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let rows = client.query(&sql.text, &sql.args()).await.map_err(db)?;
            Ok(rows
                .iter()
                .map(|row| TableBucket {
                    start_ms: ms(row.get(0)),
                    sensor_id: per_sensor.then(|| row.get(1)),
                    measure: usize::try_from(row.get::<_, i32>(2)).unwrap_or(usize::MAX),
                    count: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                    min: row.get(4),
                    max: row.get(5),
                    sum: row.get(6),
                    distinct_sensors: u32::try_from(row.get::<_, i64>(7)).unwrap_or(u32::MAX),
                })
                .collect())
        })
    }

    fn total(&self) -> Result<u64, StoreError> {
        self.call(move |shared| async move {
            let client = shared.readings.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT count(*) FROM samvirke_readings", &[])
                .await
                .map_err(db)?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }
}

/// A catalog number as the `integer` column holds it.
fn dataset_column(number: u32) -> Result<i32, StoreError> {
    i32::try_from(number)
        .map_err(|_| StoreError::Backend(format!("dataset number {number} is out of range")))
}
