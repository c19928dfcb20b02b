//! Deterministic synthetic sensor readings for demos, tests and benches.
//!
//! This module owns the sensor kinds of `node/fixtures/sensors.toml`
//! (compiled in) and a generator that makes plausible readings for them
//! around a municipality's town hall ([`crate::fixtures::municipality`]):
//! sensors scattered within about 5 km, one reading per sensor every
//! `interval_s` (aligned to the Unix epoch, so sensors report at the same
//! instants), values shaped by unit and measure: particulates and NO2
//! with a rush-hour cycle, bins that fill over days and are emptied,
//! parking bays that are occupied by day, traffic counts as non-negative
//! integers, a tidal water level with occasional rain, office CO2 and
//! climate, street noise.
//!
//! Every value is a pure function of (seed, sensor, time), computed with a
//! small self-contained PRNG ([`SplitMix64`]), so the same arguments give
//! the same readings on every machine, and a sub-range of time gives
//! exactly the readings of the larger range that fall inside it.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use serde::Deserialize;
use time::OffsetDateTime;

use super::catalog::{
    Classification, Dataset, DatasetKind, FieldType, SchemaField, TemporalExtent, check_dataset_id,
};
use super::geo::{Area, EARTH_RADIUS_KM};
use super::readings::Reading;
use crate::fixtures::{Municipality, municipality};

const SENSORS_TOML: &str = include_str!("../../fixtures/sensors.toml");

/// How far from the town hall generated sensors stand, at most.
pub const SCATTER_KM: f64 = 5.0;

/// A measure of a sensor kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MeasureSpec {
    pub name: String,
    pub unit: String,
}

/// A kind of sensor a municipality runs, from the fixture file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SensorKind {
    pub id: String,
    pub measures: Vec<MeasureSpec>,
    /// Typical seconds between readings.
    pub interval_s: u64,
}

#[derive(Deserialize)]
struct SensorsFile {
    kind: Vec<SensorKind>,
}

/// Why generation could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("unknown sensor kind `{kind}`; known kinds: {known}")]
    UnknownKind { kind: String, known: String },
    #[error("municipality {code} is not in the fixture set")]
    UnknownMunicipality { code: u32 },
    #[error("the compiled-in sensors.toml is unreadable: {0}")]
    Fixture(String),
    #[error("cannot make a dataset id from `{name}` and `{kind}`: {reason}")]
    BadId {
        name: String,
        kind: String,
        reason: String,
    },
}

/// Every sensor kind in the fixture file.
pub fn sensor_kinds() -> Result<Vec<SensorKind>, GenerateError> {
    toml::from_str::<SensorsFile>(SENSORS_TOML)
        .map(|file| file.kind)
        .map_err(|e| GenerateError::Fixture(e.to_string()))
}

/// The sensor kind `id`.
pub fn sensor_kind(id: &str) -> Result<SensorKind, GenerateError> {
    let kinds = sensor_kinds()?;
    kinds
        .iter()
        .find(|k| k.id == id)
        .cloned()
        .ok_or_else(|| GenerateError::UnknownKind {
            kind: id.to_string(),
            known: kinds
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn find_municipality(code: u32) -> Result<Municipality, GenerateError> {
    municipality(code).ok_or(GenerateError::UnknownMunicipality { code })
}

/// A municipality's name as a slug: without " Kommune", lowercase ASCII
/// (æ, ø, å spelled ae, oe, aa), other characters as single hyphens.
pub fn municipality_slug(name: &str) -> String {
    let name = name.strip_suffix(" Kommune").unwrap_or(name);
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let spelled = match c {
            'æ' => "ae",
            'ø' | 'ö' => "oe",
            'å' => "aa",
            'ä' => "ae",
            'ü' => "ue",
            'é' | 'è' => "e",
            c if c.is_ascii_alphanumeric() => {
                slug.push(c);
                continue;
            }
            _ => "-",
        };
        if spelled == "-" {
            if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        } else {
            slug.push_str(spelled);
        }
    }
    slug.trim_end_matches('-').to_string()
}

/// A valid catalog entry for sensors of `kind` in municipality `code`,
/// with id `<municipality slug>-<kind>` (e.g. `aarhus-air-quality`).
pub fn sensor_dataset(kind: &str, municipality_code: u32) -> Result<Dataset, GenerateError> {
    let spec = sensor_kind(kind)?;
    let town = find_municipality(municipality_code)?;
    let slug = municipality_slug(&town.name);
    let id = format!("{slug}-{kind}");
    check_dataset_id("id", &id).map_err(|e| GenerateError::BadId {
        name: town.name.clone(),
        kind: kind.to_string(),
        reason: e.to_string(),
    })?;
    let place = town
        .name
        .strip_suffix(" Kommune")
        .unwrap_or(&town.name)
        .to_string();
    let what = {
        let words = kind.replace('-', " ");
        let mut chars = words.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
            .unwrap_or_default()
    };
    let theme = match kind {
        "air-quality" | "noise" => "environment",
        "waste-bin-fill" => "waste",
        "parking-occupancy" | "traffic-count" => "mobility",
        "water-level" => "climate-adaptation",
        "indoor-climate" => "buildings",
        _ => "sensors",
    };
    let units: Vec<String> = spec
        .measures
        .iter()
        .map(|m| format!("{} ({})", m.name, m.unit))
        .collect();
    Ok(Dataset {
        id,
        title: format!("{what} sensors, {place}"),
        description: format!(
            "Synthetic {} readings from sensors within {SCATTER_KM} km of {place} town hall, \
             every {} s: {}.",
            kind.replace('-', " "),
            spec.interval_s,
            units.join(", ")
        ),
        kind: DatasetKind::Sensor,
        owner: town.code,
        theme: theme.to_string(),
        keywords: vec![kind.to_string(), "synthetic".to_string()],
        license: "CC-BY-4.0".to_string(),
        spatial: Some(
            Area::Radius {
                lat: town.lat,
                lon: town.lon,
                km: SCATTER_KM,
            }
            .bounds(),
        ),
        temporal: TemporalExtent::default(),
        classification: Classification::Open,
        schema: spec
            .measures
            .iter()
            .map(|m| SchemaField::number(m.name.clone(), m.unit.clone()))
            .collect(),
        update_interval_s: spec.interval_s,
    })
}

/// The catalog entry of municipality `municipality_code`'s pilot results
/// (`kind` `pilot`: `{town}-pilot-results`) or procurement outcomes
/// (`procurement`: `{town}-procurement-outcomes`), with the fields records
/// of that kind carry (an agreement may withhold any of them; who ran a
/// pilot is marked personal).
pub fn records_dataset(
    kind: DatasetKind,
    municipality_code: u32,
) -> Result<Dataset, GenerateError> {
    let town = find_municipality(municipality_code)?;
    let slug = municipality_slug(&town.name);
    let place = town
        .name
        .strip_suffix(" Kommune")
        .unwrap_or(&town.name)
        .to_string();
    let field = |name: &str, field_type: FieldType, unit: &str, personal: bool| SchemaField {
        name: name.to_string(),
        field_type,
        unit: unit.to_string(),
        personal,
    };
    let (suffix, title, description, theme, schema) = match kind {
        DatasetKind::Pilot => (
            "pilot-results",
            format!("Pilot and innovation project results, {place}"),
            format!(
                "Digitalisation and IoT pilots {place} ran or joined: phase, technology, \
                 municipalities, period, budget, KPIs and findings."
            ),
            "digitalisation",
            vec![
                field("title", FieldType::Text, "", false),
                field("owner", FieldType::Text, "", true),
                field("municipalities", FieldType::Text, "", false),
                field("phase", FieldType::Text, "", false),
                field("technology", FieldType::Text, "", false),
                field("started", FieldType::Timestamp, "", false),
                field("ended", FieldType::Timestamp, "", false),
                field("budget_dkk", FieldType::Number, "DKK", false),
                field("kpis", FieldType::Text, "", false),
                field("findings", FieldType::Text, "", false),
            ],
        ),
        DatasetKind::Procurement => (
            "procurement-outcomes",
            format!("Joint procurement outcomes, {place}"),
            format!(
                "Tenders {place} bought in, alone or in a fellowship: buyers, procedure, CPV \
                 codes, suppliers, value, award, bids and complaints."
            ),
            "procurement",
            vec![
                field("title", FieldType::Text, "", false),
                field("buyer_fellowship", FieldType::Text, "", false),
                field("procedure", FieldType::Text, "", false),
                field("cpv_codes", FieldType::Text, "", false),
                field("suppliers", FieldType::Text, "", false),
                field("value_dkk", FieldType::Number, "DKK", false),
                field("awarded", FieldType::Timestamp, "", false),
                field("bids", FieldType::Number, "count", false),
                field("complaints", FieldType::Number, "count", false),
                field("status", FieldType::Text, "", false),
            ],
        ),
        DatasetKind::Sensor => {
            return Err(GenerateError::UnknownKind {
                kind: "sensor".to_string(),
                known: "pilot, procurement (sensor datasets: sensor_dataset)".to_string(),
            });
        }
    };
    let id = format!("{slug}-{suffix}");
    check_dataset_id("id", &id).map_err(|e| GenerateError::BadId {
        name: town.name.clone(),
        kind: suffix.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Dataset {
        id,
        title,
        description,
        kind,
        owner: town.code,
        theme: theme.to_string(),
        keywords: vec![kind_keyword(kind).to_string(), "fellowship".to_string()],
        license: "CC-BY-4.0".to_string(),
        spatial: None,
        temporal: TemporalExtent::default(),
        classification: Classification::Internal,
        schema,
        update_interval_s: 0,
    })
}

fn kind_keyword(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Sensor => "sensors",
        DatasetKind::Pilot => "pilots",
        DatasetKind::Procurement => "procurement",
    }
}

/// Synthetic readings of `sensors` sensors of `kind` around municipality
/// `municipality_code`, at every multiple of the kind's interval in
/// `[from, until)`, time-major (all sensors at one instant, then the next).
pub fn generate(
    kind: &str,
    municipality_code: u32,
    sensors: u32,
    from: OffsetDateTime,
    until: OffsetDateTime,
    seed: u64,
) -> Result<Generator, GenerateError> {
    let spec = sensor_kind(kind)?;
    let town = find_municipality(municipality_code)?;
    let slug = municipality_slug(&town.name);
    let width = sensors.to_string().len().max(3);
    let fleet = (0..sensors)
        .map(|i| {
            let mut rng = SplitMix64(mix(seed ^ mix(u64::from(i) + 1)));
            // Uniform over the disc: radius ~ sqrt(u).
            let r = SCATTER_KM * rng.unit().sqrt();
            let bearing = 2.0 * PI * rng.unit();
            let dlat = (r * bearing.cos() / EARTH_RADIUS_KM).to_degrees();
            let dlon =
                (r * bearing.sin() / (EARTH_RADIUS_KM * town.lat.to_radians().cos())).to_degrees();
            GenSensor {
                id: format!("{slug}-{kind}-{i:0width$}"),
                key: mix(seed ^ 0x9e37 ^ mix(u64::from(i) + 1)),
                location: (town.lat + dlat, town.lon + dlon),
                base: rng.unit(),
                phase: rng.unit(),
            }
        })
        .collect();
    let interval = i64::try_from(spec.interval_s.max(1)).unwrap_or(i64::MAX);
    let from_s = from.unix_timestamp() + i64::from(from.nanosecond() > 0);
    let first = from_s.div_euclid(interval) * interval
        + if from_s.rem_euclid(interval) == 0 {
            0
        } else {
            interval
        };
    let until_s = until.unix_timestamp() + i64::from(until.nanosecond() > 0);
    Ok(Generator {
        kind: spec,
        fleet,
        next_t: first,
        until_s,
        interval,
        next_sensor: 0,
    })
}

#[derive(Debug, Clone)]
struct GenSensor {
    id: String,
    key: u64,
    location: (f64, f64),
    /// Per-sensor constants in [0, 1): level and phase.
    base: f64,
    phase: f64,
}

/// The iterator [`generate`] returns.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: SensorKind,
    fleet: Vec<GenSensor>,
    next_t: i64,
    until_s: i64,
    interval: i64,
    next_sensor: usize,
}

impl Generator {
    /// The ids of the generated sensors, in order.
    pub fn sensor_ids(&self) -> Vec<String> {
        self.fleet.iter().map(|s| s.id.clone()).collect()
    }

    /// Readings still to come.
    fn remaining(&self) -> usize {
        if self.fleet.is_empty() || self.next_t >= self.until_s {
            return 0;
        }
        let instants = (self.until_s - self.next_t + self.interval - 1) / self.interval;
        usize::try_from(instants)
            .unwrap_or(usize::MAX)
            .saturating_mul(self.fleet.len())
            .saturating_sub(self.next_sensor)
    }
}

impl Iterator for Generator {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        if self.fleet.is_empty() || self.next_t >= self.until_s {
            return None;
        }
        let sensor = &self.fleet[self.next_sensor];
        let t = self.next_t;
        let at = OffsetDateTime::from_unix_timestamp(t).ok()?;
        let mut rng = SplitMix64(mix(sensor.key ^ mix(t as u64)));
        let values: BTreeMap<String, f64> = self
            .kind
            .measures
            .iter()
            .map(|m| (m.name.clone(), value(m, sensor, t, &mut rng)))
            .collect();
        let reading = Reading {
            sensor_id: sensor.id.clone(),
            at,
            values,
            location: Some(sensor.location),
        };
        self.next_sensor += 1;
        if self.next_sensor == self.fleet.len() {
            self.next_sensor = 0;
            self.next_t = self.next_t.saturating_add(self.interval);
        }
        Some(reading)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        (n, Some(n))
    }
}

/// Local hour of day (Danish winter time, UTC+1), 0.0..24.0.
fn hour(t: i64) -> f64 {
    (t + 3600).rem_euclid(86_400) as f64 / 3600.0
}

/// Weekday (Monday = 0) of a Unix time; 1970-01-01 was a Thursday.
fn weekday(t: i64) -> i64 {
    ((t + 3600).div_euclid(86_400) + 3).rem_euclid(7)
}

/// Morning and afternoon rush, 0..~1.
fn rush(h: f64) -> f64 {
    (-(h - 8.0).powi(2) / 3.0).exp() + 0.8 * (-(h - 16.5).powi(2) / 4.0).exp()
}

/// Daytime, 0 at night to 1 at midday.
fn daytime(h: f64) -> f64 {
    (((h - 6.0) / 14.0 * PI).sin()).max(0.0)
}

fn round_to(v: f64, step: f64) -> f64 {
    // Multiply by the whole number of steps per unit and divide back, so
    // 15.7 comes out as 15.7 rather than 15.700000000000001.
    let per_unit = (1.0 / step).round();
    (v * per_unit).round() / per_unit
}

fn value(m: &MeasureSpec, s: &GenSensor, t: i64, rng: &mut SplitMix64) -> f64 {
    let h = hour(t);
    let noise = rng.normal();
    let working = weekday(t) < 5;
    match (m.name.as_str(), m.unit.as_str()) {
        ("pm2_5", _) => round_to(
            (4.0 + 8.0 * s.base) * (0.7 + 0.6 * rush(h)) * (1.0 + 0.15 * noise),
            0.1,
        )
        .max(0.1),
        ("pm10", _) => round_to(
            (8.0 + 12.0 * s.base) * (0.7 + 0.6 * rush(h)) * (1.0 + 0.15 * noise),
            0.1,
        )
        .max(0.1),
        ("no2", _) => round_to(
            (10.0 + 20.0 * s.base) * (0.5 + 1.2 * rush(h)) * (1.0 + 0.2 * noise),
            0.1,
        )
        .max(0.1),
        ("fill_level", _) => {
            // Fills over 3 to 7 days, then the bin is emptied.
            let period_h = 72.0 + 96.0 * s.base;
            let hours = t as f64 / 3600.0 + s.phase * period_h;
            round_to(
                (hours.rem_euclid(period_h) / period_h * 100.0 + 2.0 * noise).clamp(0.0, 100.0),
                1.0,
            )
        }
        ("level", _) => {
            // Semi-diurnal tide (12.42 h) plus the sensor's own datum.
            let tide = (2.0 * PI * (t as f64 / (12.42 * 3600.0) + s.phase)).sin();
            round_to(60.0 + 60.0 * s.base + 25.0 * tide + 2.0 * noise, 0.1).max(0.0)
        }
        ("rain", _) => {
            if rng.unit() < 0.08 {
                round_to(rng.unit() * 3.0, 0.1)
            } else {
                0.0
            }
        }
        ("co2", _) => {
            let people = if working { daytime(h) } else { 0.0 };
            round_to(
                420.0 + (300.0 + 500.0 * s.base) * people + 20.0 * noise,
                1.0,
            )
            .max(380.0)
        }
        ("temperature", _) => round_to(20.0 + 2.0 * s.base + 1.5 * daytime(h) + 0.3 * noise, 0.1),
        ("humidity", _) => round_to(
            35.0 + 15.0 * s.base + 5.0 * (2.0 * PI * h / 24.0).sin() + 2.0 * noise,
            0.1,
        )
        .clamp(0.0, 100.0),
        ("laeq", _) => round_to(
            42.0 + 8.0 * s.base + 22.0 * rush(h).min(1.0) + 3.0 * noise,
            0.1,
        )
        .clamp(25.0, 110.0),
        (_, "bool") => {
            let p = 0.15 + 0.7 * daytime(h) * (0.6 + 0.4 * s.base);
            if rng.unit() < p { 1.0 } else { 0.0 }
        }
        (name, "count") => {
            // Per interval: cars up to ~250, bicycles up to ~80 at rush hour.
            let peak = if name == "bicycles" {
                10.0 + 70.0 * s.base
            } else {
                30.0 + 220.0 * s.base
            };
            let mean = peak * (0.05 + rush(h).min(1.0)) * if working { 1.0 } else { 0.6 };
            (mean + noise * mean.sqrt()).round().max(0.0)
        }
        (_, "percent") => round_to(100.0 * rng.unit(), 0.1),
        _ => round_to(10.0 * (1.0 + s.base) * (1.0 + 0.1 * noise), 0.01).max(0.01),
    }
}

/// The splitmix64 finaliser: a good 64-bit mixing function.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for
/// synthetic data and test case generation. Not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (0 if n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Roughly standard normal (sum of four uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3f64.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::super::geo::haversine_km;
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    const FROM: OffsetDateTime = datetime!(2025-03-03 0:00 UTC);

    #[test]
    fn every_kind_makes_a_valid_dataset_and_plausible_values() {
        let kinds = sensor_kinds().expect("fixture");
        assert_eq!(kinds.len(), 7);
        for kind in &kinds {
            let dataset = sensor_dataset(&kind.id, 751).expect("dataset");
            dataset.validate().expect("valid");
            assert_eq!(dataset.id, format!("aarhus-{}", kind.id));
            assert_eq!(dataset.measure_names().len(), kind.measures.len());

            let readings: Vec<Reading> =
                generate(&kind.id, 751, 10, FROM, FROM + Duration::days(2), 7)
                    .expect("generate")
                    .collect();
            let per_sensor = 2 * 86_400 / kind.interval_s as usize;
            assert_eq!(readings.len(), 10 * per_sensor, "{}", kind.id);
            for r in &readings {
                let at = r.at.unix_timestamp();
                assert_eq!(at % kind.interval_s as i64, 0);
                let d = haversine_km((56.1572, 10.2107), r.location.expect("located"));
                assert!(d <= SCATTER_KM + 0.01, "{} km", d);
                for m in &kind.measures {
                    let v = r.values[&m.name];
                    assert!(v.is_finite(), "{} {}", m.name, v);
                    match m.unit.as_str() {
                        "percent" => assert!((0.0..=100.0).contains(&v), "{} {v}", m.name),
                        "bool" => assert!(v == 0.0 || v == 1.0, "{v}"),
                        "count" => assert!(v >= 0.0 && v.fract() == 0.0, "{v}"),
                        "ug/m3" | "ppm" | "dB(A)" => assert!(v > 0.0, "{} {v}", m.name),
                        _ => {}
                    }
                }
            }
            // Something varies.
            let first = &kind.measures[0].name;
            let distinct: std::collections::BTreeSet<u64> =
                readings.iter().map(|r| r.values[first].to_bits()).collect();
            assert!(distinct.len() > 1, "{} is constant", kind.id);
        }
    }

    #[test]
    fn records_datasets_are_valid_and_name_the_record_fields() {
        let pilots = records_dataset(DatasetKind::Pilot, 751).expect("pilots");
        assert_eq!(pilots.id, "aarhus-pilot-results");
        pilots.validate().expect("a valid pilot dataset");
        let procurements = records_dataset(DatasetKind::Procurement, 630).expect("procurements");
        assert_eq!(procurements.id, "vejle-procurement-outcomes");
        procurements
            .validate()
            .expect("a valid procurement dataset");
        // Every schema field is a field of the records (so agreements can
        // withhold it by name).
        for field in &pilots.schema {
            assert!(
                crate::data::records::PILOT_FIELDS.contains(&field.name.as_str()),
                "{}",
                field.name
            );
        }
        for field in &procurements.schema {
            assert!(
                crate::data::records::PROCUREMENT_FIELDS.contains(&field.name.as_str()),
                "{}",
                field.name
            );
        }
        assert!(records_dataset(DatasetKind::Sensor, 751).is_err());
    }

    #[test]
    fn generation_is_deterministic_and_consistent_over_subranges() {
        let until = FROM + Duration::days(1);
        let a: Vec<Reading> = generate("noise", 630, 5, FROM, until, 1)
            .expect("g")
            .collect();
        let b: Vec<Reading> = generate("noise", 630, 5, FROM, until, 1)
            .expect("g")
            .collect();
        let c: Vec<Reading> = generate("noise", 630, 5, FROM, until, 2)
            .expect("g")
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mid_from = FROM + Duration::seconds(3600 + 30);
        let mid_until = FROM + Duration::hours(3);
        let sub: Vec<Reading> = generate("noise", 630, 5, mid_from, mid_until, 1)
            .expect("g")
            .collect();
        let expected: Vec<Reading> = a
            .iter()
            .filter(|r| r.at >= mid_from && r.at < mid_until)
            .cloned()
            .collect();
        assert_eq!(sub, expected);
        assert_eq!(a[0].sensor_id, "vejle-noise-000");
        let g = generate("noise", 630, 5, FROM, until, 1).expect("g");
        assert_eq!(g.size_hint(), (5 * 1440, Some(5 * 1440)));
    }

    #[test]
    fn slugs_and_errors() {
        assert_eq!(municipality_slug("Aarhus Kommune"), "aarhus");
        assert_eq!(municipality_slug("Høje-Taastrup Kommune"), "hoeje-taastrup");
        assert_eq!(
            municipality_slug("Lyngby-Taarbæk Kommune"),
            "lyngby-taarbaek"
        );
        assert_eq!(municipality_slug("Ærø Kommune"), "aeroe");
        assert_eq!(
            sensor_dataset("noise", 187).expect("Vallensbaek").id,
            "vallensbaek-noise"
        );
        let err = generate("smell", 751, 1, FROM, FROM, 0).expect_err("kind");
        assert!(
            err.to_string().contains("known kinds: air-quality"),
            "{err}"
        );
        let err = sensor_dataset("noise", 1).expect_err("code");
        assert_eq!(err, GenerateError::UnknownMunicipality { code: 1 });
    }
}
