//! The PostgreSQL schema and its versioned migrations.
//!
//! `samvirke_schema` records every migration applied. Migrations run at
//! start-up (and by `samvirke-node migrate`) inside one transaction under
//! an advisory lock, so two node processes starting together apply each
//! migration once. A database whose schema is newer than this build is
//! refused and left untouched, as is a database that holds tables but not
//! ours.
//!
//! # Tables
//!
//! - `samvirke_kv (space, key, value)`: every keyspace but readings
//!   (governance documents, catalog, records, audit chain, checkpoints,
//!   receipts, replay nonces, budgets, ingest sessions), ordered by
//!   `(space, key)` bytewise like the sled trees. Changes to the keyspaces
//!   other processes must see at once are announced on the channel
//!   `samvirke_changes` (payload: the keyspace's name) by triggers.
//! - `samvirke_readings (dataset, sensor, at, measures, lat, lon)`:
//!   partitioned by month on `at`; primary key `(dataset, sensor, at)`
//!   (re-ingesting replaces), a second index `(dataset, at, sensor)` for
//!   scans across sensors in time order. `measures` holds the values by
//!   their position in the dataset's measure list (NULL where absent), so
//!   SQL can aggregate them. Sensor ids use the `C` collation: their order
//!   is byte order, the order every answer promises.
//! - `samvirke_sensors`: the sensor index (count, time span, last location,
//!   bounding box), kept in the same transaction as the readings.

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The advisory lock migrations hold ("Samvirke" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x5361_6d76_6972_6b65;

/// The channel change notifications are sent on.
pub const CHANGES_CHANNEL: &str = "samvirke_changes";

/// Migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(u32, &str)] = &[(1, V1)];

const V1: &str = r#"
CREATE TABLE samvirke_kv (
    space text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (space, key)
);

CREATE FUNCTION samvirke_kv_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('samvirke_changes', OLD.space);
    ELSE
        PERFORM pg_notify('samvirke_changes', NEW.space);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER samvirke_kv_written AFTER INSERT OR UPDATE ON samvirke_kv
    FOR EACH ROW WHEN (NEW.space IN ('rosters', 'agreements', 'quarantine', 'datasets'))
    EXECUTE FUNCTION samvirke_kv_changed();
CREATE TRIGGER samvirke_kv_deleted AFTER DELETE ON samvirke_kv
    FOR EACH ROW WHEN (OLD.space IN ('rosters', 'agreements', 'quarantine', 'datasets'))
    EXECUTE FUNCTION samvirke_kv_changed();

CREATE TABLE samvirke_readings (
    dataset integer NOT NULL,
    sensor text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL,
    measures double precision[] NOT NULL,
    lat double precision,
    lon double precision,
    PRIMARY KEY (dataset, sensor, at)
) PARTITION BY RANGE (at);

CREATE INDEX samvirke_readings_by_time ON samvirke_readings (dataset, at, sensor);

CREATE TABLE samvirke_sensors (
    dataset integer NOT NULL,
    sensor text COLLATE "C" NOT NULL,
    readings bigint NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    last_lat double precision,
    last_lon double precision,
    last_located_at timestamptz,
    min_lat double precision,
    min_lon double precision,
    max_lat double precision,
    max_lon double precision,
    PRIMARY KEY (dataset, sensor)
);

-- Creates the month partition holding `month` (its first day) if it is
-- missing; concurrent callers wait on a lock per partition.
CREATE FUNCTION samvirke_readings_month(month date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    name text := format('samvirke_readings_%s', to_char(month, 'YYYY_MM'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(name));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF samvirke_readings FOR VALUES FROM (%L) TO (%L)',
            name,
            (month::timestamp AT TIME ZONE 'UTC'),
            ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
    END IF;
END
$$;
"#;

/// The per-connection staging table batches are copied into before they
/// are merged into `samvirke_readings` (emptied at every commit).
pub const STAGING: &str = r#"
CREATE TEMP TABLE IF NOT EXISTS samvirke_staging (
    sensor text COLLATE "C" NOT NULL,
    at timestamptz NOT NULL,
    measures double precision[] NOT NULL,
    lat double precision,
    lon double precision
) ON COMMIT DELETE ROWS
"#;
