//! The data core: the dataset catalog and sensor readings, as a library
//! layer over [`Store`](crate::store::Store). No gRPC here: the local and
//! peer services call this API and map its errors to statuses; access
//! decisions (agreements) are made by the caller, which this module helps
//! with by describing datasets as agreements see them
//! ([`Dataset::as_ref`]), naming personal fields ([`Dataset::personal_fields`],
//! [`strip_fields`]) and suppressing small aggregate groups
//! ([`suppress_small_groups`]).
//!
//! One file per concern:
//! - [`catalog`]: datasets (DCAT-AP-ish), validation, publish/update rules,
//!   internal dataset numbers;
//! - [`readings`]: the reading type, batch validation and durable ingest,
//!   the sensor index, and the key layout (documented there);
//! - [`query`]: reading queries as a streaming k-way merge over per-sensor
//!   ranges (or pages of a reading table's scan);
//! - [`aggregate`]: time-bucket aggregation and small-group suppression
//!   (accumulated here, or computed by a reading table window by window);
//! - [`geo`]: coordinates, boxes, circles, haversine distance;
//! - [`keys`]: the byte encodings of keys and values;
//! - [`generate`](mod@generate): deterministic synthetic readings for demos, tests, benches.
//! - [`dcat`]: the catalog as DCAT-AP-DK JSON-LD for open-data portals;
//! - [`records`], [`record_fixtures`]: pilot results and procurement outcomes,
//!   and the fixture facts about them.

pub mod aggregate;
pub mod catalog;
pub mod dcat;
pub mod generate;
pub mod geo;
pub mod keys;
pub mod query;
pub mod readings;
pub mod record_fixtures;
pub mod records;

#[cfg(test)]
mod testutil;

pub use aggregate::{AggregateSpec, Bucket, BucketStream, Grid, Group, parse_bucket};
pub use catalog::{
    Catalog, CatalogEntry, CatalogError, Classification, Dataset, DatasetKind, FieldType,
    SchemaField, TemporalExtent,
};
pub use generate::{
    GenerateError, Generator, SensorKind, generate, records_dataset, sensor_dataset, sensor_kinds,
};
pub use geo::{Area, BoundingBox};
pub use query::{Order, QueryError, ReadingIter, ReadingQuery};
pub use readings::{
    IndexCheck, IngestError, IngestSummary, Reading, ReadingProblem, ReadingStore, SensorInfo,
    strip_fields,
};
