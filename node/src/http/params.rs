//! Query parameters: one table per endpoint, which both checks a request
//! (an unknown, repeated or malformed parameter is a 400 naming it) and
//! describes the endpoint in the OpenAPI document. Names and meanings
//! mirror the `samvirke query readings` and `samvirke ask` flags
//! (`--per-sensor` is `per_sensor`, and so on).

use samvirke_proto::v1::{self as pb, reading_query};
use time::OffsetDateTime;

use super::error::ApiError;

/// Most parameters one request may carry (repeats included).
pub const MAX_PARAMS: usize = 256;

/// What a parameter's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Number,
    Boolean,
    /// RFC 3339 (`2026-01-01T06:00:00Z`) or a date (`2026-01-01`, 00:00 UTC).
    Time,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// One query parameter of an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// May be given more than once.
    pub repeat: bool,
    pub doc: &'static str,
}

const fn param(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        repeat: false,
        doc,
    }
}

const fn required(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        repeat: false,
        doc,
    }
}

const fn repeated(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        repeat: true,
        doc,
    }
}

/// The formats every data endpoint offers (GeoJSON: raw readings only).
pub const FORMATS: &[&str] = &["json", "ndjson", "csv", "geojson"];

pub const FORMAT: Param = param(
    "format",
    Kind::Choice(FORMATS),
    "Response format; without it the Accept header decides (text/csv, application/x-ndjson, \
     application/geo+json), else JSON.",
);

/// `/api/v1/datasets`.
pub const DATASETS: &[Param] = &[FORMAT];

/// `/api/v1/catalog.jsonld`.
pub const CATALOG: &[Param] = &[
    param(
        "scope",
        Kind::Choice(&["local", "fellowship"]),
        "local (default): this node's datasets; fellowship: also the partners' datasets the \
         agreements in force let this node see, each under its own publisher (asks the \
         partners).",
    ),
    param(
        "deadline",
        Kind::Integer,
        "With scope=fellowship: seconds every partner has to answer (1-120, default 10).",
    ),
];

/// The readings question (`samvirke query readings` / `ask readings`).
pub const READINGS: &[Param] = &[
    required("from", Kind::Time, "Start of the period (included)."),
    required("until", Kind::Time, "End of the period (excluded)."),
    repeated(
        "measure",
        Kind::Text,
        "Only this measure (repeat for several; default: all).",
    ),
    repeated(
        "sensor",
        Kind::Text,
        "Only this sensor (repeat for several).",
    ),
    param(
        "bbox",
        Kind::Text,
        "Only readings inside this box: min_lat,min_lon,max_lat,max_lon (degrees).",
    ),
    param(
        "near",
        Kind::Text,
        "Only readings within KM kilometres of a point: lat,lon,km.",
    ),
    param(
        "order",
        Kind::Choice(&["asc", "desc"]),
        "Time order; default asc.",
    ),
    param(
        "limit",
        Kind::Integer,
        "At most this many readings (or buckets), from each dataset.",
    ),
    param(
        "bucket",
        Kind::Text,
        "Aggregate into buckets of this size: 30s, 15m, 1h, 1d, ...",
    ),
    param(
        "per_sensor",
        Kind::Boolean,
        "With bucket: one series per sensor instead of over all sensors.",
    ),
    FORMAT,
];

/// Who a federated question goes to (`samvirke ask` target flags).
pub const ASK: &[Param] = &[
    repeated(
        "partner",
        Kind::Integer,
        "Ask only this partner (municipality code; repeat for several).",
    ),
    param(
        "fellowship",
        Kind::Text,
        "Ask the current members of this fellowship.",
    ),
    param(
        "agreement",
        Kind::Text,
        "Ask under this agreement only (UUID).",
    ),
    param(
        "deadline",
        Kind::Integer,
        "Seconds every partner has to answer in full (1-120, default 10); later is timed_out.",
    ),
    param(
        "exclude_own",
        Kind::Boolean,
        "Leave this node's own data out.",
    ),
    repeated(
        "dataset",
        Kind::Text,
        "Only this dataset (repeat for several).",
    ),
    param(
        "keyword",
        Kind::Text,
        "Only datasets with this keyword (e.g. air-quality).",
    ),
    param(
        "part",
        Kind::Choice(&["rows", "status"]),
        "rows (default): the rows, then (JSON, NDJSON, GeoJSON) the combined buckets and \
         per-partner statuses; status: the question is asked and only the per-partner \
         statuses are answered, as a table (CSV) or an array (JSON), for tools that load \
         one table per query.",
    ),
];

/// `/api/v1/pilots` (`samvirke records pilots list` filters).
pub const PILOTS: &[Param] = &[
    param("dataset", Kind::Text, "Only records of this dataset."),
    param(
        "phase",
        Kind::Choice(&[
            "idea",
            "test",
            "demonstration",
            "scaling",
            "operation",
            "stopped",
        ]),
        "Only pilots in this phase.",
    ),
    param(
        "technology",
        Kind::Text,
        "Technology, case-insensitive substring.",
    ),
    param(
        "municipality",
        Kind::Integer,
        "Only pilots this municipality takes part in.",
    ),
    param("year", Kind::Integer, "Year the pilot started."),
    FORMAT,
];

/// `/api/v1/procurements` (`samvirke records procurements list` filters).
pub const PROCUREMENTS: &[Param] = &[
    param("dataset", Kind::Text, "Only records of this dataset."),
    param(
        "supplier",
        Kind::Text,
        "Supplier name, case-insensitive substring.",
    ),
    param("buyer", Kind::Integer, "Buying municipality (code)."),
    param(
        "buyer_fellowship",
        Kind::Text,
        "Fellowship that ran the tender.",
    ),
    param(
        "procedure",
        Kind::Choice(&[
            "open",
            "restricted",
            "negotiation",
            "framework-mini-tender",
            "framework-agreement",
        ]),
        "Procurement procedure.",
    ),
    param("year", Kind::Integer, "Year awarded."),
    param("min_value", Kind::Integer, "Smallest contract value, DKK."),
    param("max_value", Kind::Integer, "Largest contract value, DKK."),
    param("cpv", Kind::Text, "CPV code prefix, e.g. 48."),
    param(
        "has_complaint",
        Kind::Boolean,
        "Only with (true) or without (false) complaints.",
    ),
    FORMAT,
];

/// A request's query parameters, checked against its endpoint's tables.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `raw` (the query string) and checks every name is in one of
    /// `tables` and given only once unless it may repeat.
    pub fn parse(raw: Option<&str>, tables: &[&[Param]]) -> Result<Params, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PARAMS {
                return Err(ApiError::bad(
                    "query",
                    format!("more than {MAX_PARAMS} parameters"),
                ));
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name).ok_or_else(|| ApiError::bad("query", "not valid UTF-8"))?;
            let value = decode(value).ok_or_else(|| ApiError::bad(&name, "not valid UTF-8"))?;
            pairs.push((name, value));
        }
        for (i, (name, _)) in pairs.iter().enumerate() {
            let Some(spec) = tables
                .iter()
                .flat_map(|t| t.iter())
                .find(|p| p.name == name)
            else {
                let known: Vec<&str> = tables
                    .iter()
                    .flat_map(|t| t.iter())
                    .map(|p| p.name)
                    .collect();
                return Err(ApiError::bad(
                    name,
                    format!("unknown parameter here (known: {})", known.join(", ")),
                ));
            };
            if !spec.repeat && pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad(name, "given more than once"));
            }
        }
        for spec in tables.iter().flat_map(|t| t.iter()) {
            if spec.required && !pairs.iter().any(|(n, _)| n == spec.name) {
                return Err(ApiError::bad(spec.name, "missing"));
            }
        }
        Ok(Params { pairs })
    }

    /// The value of `name`, if given.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A text value that must not be empty when given.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.one(name) {
            None => Ok(None),
            Some("") => Err(ApiError::bad(name, "empty")),
            Some(value) => Ok(Some(value.to_string())),
        }
    }

    /// A number of type `T`.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.one(name)
            .map(|text| {
                text.trim().parse::<T>().map_err(|_| {
                    ApiError::bad(name, format!("`{text}` is not a valid number here"))
                })
            })
            .transpose()
    }

    /// Every value of a repeatable number parameter.
    pub fn numbers<T: std::str::FromStr>(&self, name: &str) -> Result<Vec<T>, ApiError> {
        self.all(name)
            .iter()
            .map(|text| {
                text.trim().parse::<T>().map_err(|_| {
                    ApiError::bad(name, format!("`{text}` is not a valid number here"))
                })
            })
            .collect()
    }

    /// A boolean: `true`/`false`/`1`/`0`/`yes`/`no`, or empty (the bare
    /// name) for true.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.one(name)
            .map(|text| match text.to_ascii_lowercase().as_str() {
                "" | "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ApiError::bad(
                    name,
                    format!("`{text}` is not true or false"),
                )),
            })
            .transpose()
    }

    /// One of `choices`.
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<Option<String>, ApiError> {
        match self.one(name) {
            None => Ok(None),
            Some(value) if choices.contains(&value) => Ok(Some(value.to_string())),
            Some(value) => Err(ApiError::bad(
                name,
                format!("`{value}` is not one of {}", choices.join(", ")),
            )),
        }
    }

    /// An instant: RFC 3339, or a date meaning 00:00 UTC.
    pub fn time(&self, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.one(name).map(|text| instant(name, text)).transpose()
    }
}

/// Percent-decodes one query-string component (`+` is a space).
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn instant(name: &str, text: &str) -> Result<OffsetDateTime, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc())
        .map_err(|_| {
            ApiError::bad(
                name,
                format!(
                    "`{text}` is neither RFC 3339 (2026-01-01T06:00:00Z) nor a date (2026-01-01)"
                ),
            )
        })
}

/// Comma-separated finite numbers, exactly `n` of them.
fn numbers_in(name: &str, text: &str, n: usize, shape: &str) -> Result<Vec<f64>, ApiError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != n {
        return Err(ApiError::bad(name, format!("`{text}` is not {shape}")));
    }
    parts
        .iter()
        .map(|p| {
            p.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| ApiError::bad(name, format!("`{p}` in `{text}` is not a number")))
        })
        .collect()
}

fn check_degrees(name: &str, what: &str, value: f64, max: f64) -> Result<(), ApiError> {
    if (-max..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad(
            name,
            format!("{what} {value} is outside -{max}..={max}"),
        ))
    }
}

/// The readings question the parameters describe, of `dataset_id` (empty
/// for a federated question: the selector says which datasets).
pub fn reading_query(params: &Params, dataset_id: String) -> Result<pb::ReadingQuery, ApiError> {
    let (Some(from), Some(until)) = (params.time("from")?, params.time("until")?) else {
        return Err(ApiError::bad("from", "missing"));
    };
    if until <= from {
        return Err(ApiError::bad("until", "must be after `from`"));
    }
    let bbox = match params.one("bbox") {
        None => None,
        Some(text) => {
            let v = numbers_in("bbox", text, 4, "min_lat,min_lon,max_lat,max_lon")?;
            check_degrees("bbox", "min_lat", v[0], 90.0)?;
            check_degrees("bbox", "min_lon", v[1], 180.0)?;
            check_degrees("bbox", "max_lat", v[2], 90.0)?;
            check_degrees("bbox", "max_lon", v[3], 180.0)?;
            if v[2] < v[0] || v[3] < v[1] {
                return Err(ApiError::bad(
                    "bbox",
                    "the maximum is below the minimum (the order is min_lat,min_lon,max_lat,max_lon)",
                ));
            }
            Some(pb::BoundingBox {
                min_lat: v[0],
                min_lon: v[1],
                max_lat: v[2],
                max_lon: v[3],
            })
        }
    };
    let near = match params.one("near") {
        None => None,
        Some(text) => {
            let v = numbers_in("near", text, 3, "lat,lon,km")?;
            check_degrees("near", "lat", v[0], 90.0)?;
            check_degrees("near", "lon", v[1], 180.0)?;
            if v[2] <= 0.0 {
                return Err(ApiError::bad("near", "the radius must be more than 0 km"));
            }
            Some(pb::Radius {
                lat: v[0],
                lon: v[1],
                km: v[2],
            })
        }
    };
    let area = match (bbox, near) {
        (Some(_), Some(_)) => return Err(ApiError::bad("near", "give bbox or near, not both")),
        (Some(bbox), None) => Some(reading_query::Area::Bbox(bbox)),
        (None, Some(radius)) => Some(reading_query::Area::Radius(radius)),
        (None, None) => None,
    };
    let bucket = params.text("bucket")?;
    if let Some(bucket) = &bucket {
        crate::data::parse_bucket(bucket).map_err(|e| ApiError::bad("bucket", e.reason))?;
    }
    let per_sensor = params.flag("per_sensor")?.unwrap_or(false);
    if per_sensor && bucket.is_none() {
        return Err(ApiError::bad("per_sensor", "needs `bucket`"));
    }
    let order = match params.choice("order", &["asc", "desc"])?.as_deref() {
        Some("desc") => pb::Order::Descending,
        _ => pb::Order::Ascending,
    };
    Ok(pb::ReadingQuery {
        dataset_id,
        from: Some(crate::wire::timestamp(from)),
        until: Some(crate::wire::timestamp(until)),
        sensor_ids: params.all("sensor"),
        area,
        measures: params.all("measure"),
        order: order as i32,
        limit: params.number::<u32>("limit")?.unwrap_or(0),
        bucket: bucket.unwrap_or_default(),
        grouping: if per_sensor {
            pb::Grouping::PerSensor
        } else {
            pb::Grouping::AllSensors
        } as i32,
    })
}

/// An enum value from its word (`framework-mini-tender`), by the
/// protobuf name with `prefix`.
fn enum_word<E>(
    params: &Params,
    name: &str,
    prefix: &str,
    from_name: fn(&str) -> Option<E>,
) -> Result<Option<E>, ApiError> {
    params
        .one(name)
        .map(|word| {
            from_name(&format!(
                "{prefix}{}",
                word.to_ascii_uppercase().replace('-', "_")
            ))
            .ok_or_else(|| ApiError::bad(name, format!("`{word}` is not a known value")))
        })
        .transpose()
}

/// The pilot filter the parameters describe.
pub fn pilot_filter(params: &Params) -> Result<pb::PilotFilter, ApiError> {
    Ok(pb::PilotFilter {
        dataset_id: params.text("dataset")?.unwrap_or_default(),
        phase: enum_word(
            params,
            "phase",
            "PILOT_PHASE_",
            pb::PilotPhase::from_str_name,
        )?
        .unwrap_or(pb::PilotPhase::Unspecified) as i32,
        technology: params.text("technology")?.unwrap_or_default(),
        municipality: params.number("municipality")?.unwrap_or(0),
        year: params.number("year")?.unwrap_or(0),
    })
}

/// The procurement filter the parameters describe.
pub fn procurement_filter(params: &Params) -> Result<pb::ProcurementFilter, ApiError> {
    Ok(pb::ProcurementFilter {
        dataset_id: params.text("dataset")?.unwrap_or_default(),
        supplier: params.text("supplier")?.unwrap_or_default(),
        buyer_municipality: params.number("buyer")?.unwrap_or(0),
        buyer_fellowship: params.text("buyer_fellowship")?.unwrap_or_default(),
        procedure: enum_word(
            params,
            "procedure",
            "PROCEDURE_",
            pb::Procedure::from_str_name,
        )?
        .unwrap_or(pb::Procedure::Unspecified) as i32,
        year: params.number("year")?.unwrap_or(0),
        min_value_dkk: params.number("min_value")?.unwrap_or(0),
        max_value_dkk: params.number("max_value")?.unwrap_or(0),
        cpv_code: params.text("cpv")?.unwrap_or_default(),
        has_complaint: params.flag("has_complaint")?,
    })
}

/// The federated readings question the parameters describe.
pub fn ask_request(params: &Params) -> Result<pb::AskRequest, ApiError> {
    let deadline = params.number::<u32>("deadline")?.unwrap_or(10);
    if !(1..=120).contains(&deadline) {
        return Err(ApiError::bad("deadline", "must be 1 to 120 seconds"));
    }
    Ok(pb::AskRequest {
        question: Some(pb::ask_request::Question::Readings(reading_query(
            params,
            String::new(),
        )?)),
        datasets: Some(pb::DatasetSelector {
            ids: params.all("dataset"),
            keyword: params.text("keyword")?.unwrap_or_default(),
        }),
        target: Some(pb::AskTarget {
            partners: params.numbers("partner")?,
            fellowship: params.text("fellowship")?.unwrap_or_default(),
        }),
        agreement_id: params.text("agreement")?.unwrap_or_default(),
        deadline_ms: deadline * 1000,
        exclude_own: params.flag("exclude_own")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Params, ApiError> {
        Params::parse(Some(raw), &[READINGS])
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = parse("from=yesterday&until=2026-01-02")
            .and_then(|p| reading_query(&p, "d".into()))
            .expect_err("yesterday");
        assert!(err.to_string().starts_with("parameter `from`"), "{err}");
        let err = parse("from=2026-01-01&until=2026-01-02&colour=red").expect_err("unknown");
        assert!(err.to_string().starts_with("parameter `colour`"), "{err}");
        let err = parse("from=2026-01-01&until=2026-01-02&limit=1&limit=2").expect_err("twice");
        assert!(err.to_string().contains("`limit`"), "{err}");
        let err = parse("until=2026-01-02").expect_err("missing");
        assert!(err.to_string().contains("`from`: missing"), "{err}");
    }

    #[test]
    fn a_query_carries_every_option() {
        let params = parse(
            "from=2026-01-01&until=2026-01-02T00%3A00%3A00Z&sensor=a&sensor=b+c&near=56.1,10.2,3\
             &measure=no2&order=desc&limit=10&bucket=1h&per_sensor",
        )
        .expect("parses");
        let query = reading_query(&params, "d".into()).expect("query");
        assert_eq!(query.sensor_ids, vec!["a", "b c"]);
        assert_eq!(query.order, pb::Order::Descending as i32);
        assert_eq!(query.grouping, pb::Grouping::PerSensor as i32);
        assert_eq!((query.limit, query.bucket.as_str()), (10, "1h"));
        assert_eq!(query.from.map(|t| t.seconds), Some(1_767_225_600));
        assert!(matches!(query.area, Some(reading_query::Area::Radius(r)) if r.km == 3.0));
    }

    #[test]
    fn record_filters_read_words() {
        let params = Params::parse(
            Some("procedure=framework-mini-tender&has_complaint=false"),
            &[PROCUREMENTS],
        )
        .expect("parses");
        let filter = procurement_filter(&params).expect("filter");
        assert_eq!(filter.procedure, pb::Procedure::FrameworkMiniTender as i32);
        assert_eq!(filter.has_complaint, Some(false));
        let params = Params::parse(Some("phase=launch"), &[PILOTS]).expect("parses");
        assert!(pilot_filter(&params).is_err());
    }
}
