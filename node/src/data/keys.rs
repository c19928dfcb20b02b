//! Byte layouts of the [`Keyspace::Readings`](crate::store::Keyspace::Readings)
//! and [`Keyspace::Sensors`](crate::store::Keyspace::Sensors) keyspaces:
//! keys, reading values and sensor index values. The layout and the reasons
//! for it are explained in [`super::readings`]; this module only encodes
//! and decodes, so the format has one home and can be tested on its own.
//!
//! Every decoder checks lengths and reports a [`CodecError`] instead of
//! panicking: a damaged value must fail one query, not the node.

use super::geo::BoundingBox;

/// Bytes of the dataset-number part of a key.
const NUMBER_LEN: usize = 4;
/// Bytes of an encoded timestamp.
const TIME_LEN: usize = 8;
/// Value format version of readings and sensor index entries.
const VERSION: u8 = 1;

/// A stored value or key that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// Milliseconds since the Unix epoch as 8 bytes that sort chronologically:
/// big-endian with the sign bit flipped, so negative times sort before
/// positive ones (plain two's complement would put them after).
pub fn encode_time(ms: i64) -> [u8; TIME_LEN] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_time`].
pub fn decode_time(bytes: [u8; TIME_LEN]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `number (u32 BE)`: the prefix of every key of one dataset.
pub fn dataset_prefix(number: u32) -> Vec<u8> {
    number.to_be_bytes().to_vec()
}

/// `number (u32 BE) | len (u8) | sensor id`: the prefix of one sensor's
/// readings and its key in the sensor index. The sensor id is at most 128
/// bytes (checked on ingest), so its length fits the byte.
pub fn sensor_prefix(number: u32, sensor_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(NUMBER_LEN + 1 + sensor_id.len() + TIME_LEN);
    key.extend_from_slice(&number.to_be_bytes());
    key.push(sensor_id.len().min(255) as u8);
    key.extend_from_slice(sensor_id.as_bytes());
    key
}

/// `sensor prefix | time (8 bytes)`: the key of one reading.
pub fn reading_key(number: u32, sensor_id: &str, ms: i64) -> Vec<u8> {
    let mut key = sensor_prefix(number, sensor_id);
    key.extend_from_slice(&encode_time(ms));
    key
}

/// Appends a time to a sensor prefix (range bounds).
pub fn with_time(prefix: &[u8], ms: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + TIME_LEN);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&encode_time(ms));
    key
}

/// The parts of a reading key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingKey {
    pub number: u32,
    pub sensor_id: String,
    pub ms: i64,
}

/// Splits a reading key into dataset number, sensor id and time.
pub fn decode_reading_key(key: &[u8]) -> Result<ReadingKey, CodecError> {
    let bad = || CodecError(format!("reading key {} is malformed", hex::encode(key)));
    let (number, rest) = key.split_first_chunk::<NUMBER_LEN>().ok_or_else(bad)?;
    let (&len, rest) = rest.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if rest.len() != len + TIME_LEN {
        return Err(bad());
    }
    let (sensor, time) = rest.split_at(len);
    let time: [u8; TIME_LEN] = time.try_into().map_err(|_| bad())?;
    Ok(ReadingKey {
        number: u32::from_be_bytes(*number),
        sensor_id: String::from_utf8(sensor.to_vec()).map_err(|_| bad())?,
        ms: decode_time(time),
    })
}

/// Splits a sensor index key into dataset number and sensor id.
pub fn decode_sensor_key(key: &[u8]) -> Result<(u32, String), CodecError> {
    let bad = || CodecError(format!("sensor key {} is malformed", hex::encode(key)));
    let (number, rest) = key.split_first_chunk::<NUMBER_LEN>().ok_or_else(bad)?;
    let (&len, sensor) = rest.split_first().ok_or_else(bad)?;
    if sensor.len() != usize::from(len) {
        return Err(bad());
    }
    Ok((
        u32::from_be_bytes(*number),
        String::from_utf8(sensor.to_vec()).map_err(|_| bad())?,
    ))
}

/// A reading's values as stored: one optional value per measure of the
/// dataset, by position, plus an optional location.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValues {
    pub values: Vec<Option<f64>>,
    pub location: Option<(f64, f64)>,
}

/// `version (1) | flags (1: bit 0 = has location) | n (1) | presence bitmap
/// (ceil(n/8) bytes, bit i of byte i/8 = measure i present) | present values
/// (f64 LE each, in measure order) | [lat f64 LE | lon f64 LE]`.
///
/// `n` is the number of measures the dataset had when the reading was
/// written; measures added later are simply absent from older readings.
pub fn encode_values(values: &[Option<f64>], location: Option<(f64, f64)>) -> Vec<u8> {
    let n = values.len().min(255);
    let present = values[..n].iter().flatten().count();
    let mut out = Vec::with_capacity(3 + n.div_ceil(8) + 8 * present + 16);
    out.push(VERSION);
    out.push(u8::from(location.is_some()));
    out.push(n as u8);
    let mut bitmap = vec![0u8; n.div_ceil(8)];
    for (i, v) in values[..n].iter().enumerate() {
        if v.is_some() {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    out.extend_from_slice(&bitmap);
    for v in values[..n].iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if let Some((lat, lon)) = location {
        out.extend_from_slice(&lat.to_le_bytes());
        out.extend_from_slice(&lon.to_le_bytes());
    }
    out
}

/// The inverse of [`encode_values`].
pub fn decode_values(bytes: &[u8]) -> Result<StoredValues, CodecError> {
    let mut values = Vec::new();
    let location = visit_values(bytes, |i, v| {
        if values.len() <= i {
            values.resize(i + 1, None);
        }
        values[i] = Some(v);
    })?;
    // Trailing absent measures still count towards `n`.
    let n = usize::from(bytes.get(2).copied().unwrap_or(0));
    values.resize(n.max(values.len()), None);
    Ok(StoredValues { values, location })
}

/// Decodes a reading value without allocating: calls `each(position,
/// value)` for every present measure, in order, and returns the location.
pub fn visit_values(
    bytes: &[u8],
    mut each: impl FnMut(usize, f64),
) -> Result<Option<(f64, f64)>, CodecError> {
    let mut r = Reader::new(bytes, "reading value");
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError(format!(
            "reading value has format version {version}; this node reads {VERSION}"
        )));
    }
    let flags = r.u8()?;
    let n = usize::from(r.u8()?);
    let bitmap = r.take(n.div_ceil(8))?;
    for i in 0..n {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            each(i, r.f64()?);
        }
    }
    let location = if flags & 1 != 0 {
        Some((r.f64()?, r.f64()?))
    } else {
        None
    };
    r.finish()?;
    Ok(location)
}

/// What the sensor index keeps per (dataset, sensor).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorEntry {
    /// Readings stored for the sensor.
    pub count: u64,
    /// Earliest and latest reading time (ms); may be wider than the
    /// readings after an interrupted write, never narrower.
    pub first_ms: i64,
    pub last_ms: i64,
    /// The location of the latest reading that had one, and its time.
    pub last_location: Option<(f64, f64, i64)>,
    /// A box around every location the sensor has reported (never shrinks).
    pub bounds: Option<BoundingBox>,
}

/// `version | count u64 BE | first i64 BE | last i64 BE | flags (bit 0 =
/// last location, bit 1 = bounds) | lat, lon f64 LE, at i64 BE | min_lat,
/// min_lon, max_lat, max_lon f64 LE` (absent parts are zeros).
pub fn encode_sensor(entry: &SensorEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(82);
    out.push(VERSION);
    out.extend_from_slice(&entry.count.to_be_bytes());
    out.extend_from_slice(&entry.first_ms.to_be_bytes());
    out.extend_from_slice(&entry.last_ms.to_be_bytes());
    out.push(u8::from(entry.last_location.is_some()) | (u8::from(entry.bounds.is_some()) << 1));
    let (lat, lon, at) = entry.last_location.unwrap_or((0.0, 0.0, 0));
    out.extend_from_slice(&lat.to_le_bytes());
    out.extend_from_slice(&lon.to_le_bytes());
    out.extend_from_slice(&at.to_be_bytes());
    let b = entry.bounds.unwrap_or(BoundingBox {
        min_lat: 0.0,
        min_lon: 0.0,
        max_lat: 0.0,
        max_lon: 0.0,
    });
    for v in [b.min_lat, b.min_lon, b.max_lat, b.max_lon] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The inverse of [`encode_sensor`].
pub fn decode_sensor(bytes: &[u8]) -> Result<SensorEntry, CodecError> {
    let mut r = Reader::new(bytes, "sensor index value");
    let version = r.u8()?;
    if version != VERSION {
        return Err(CodecError(format!(
            "sensor index value has format version {version}; this node reads {VERSION}"
        )));
    }
    let count = r.u64_be()?;
    let first_ms = r.u64_be()? as i64;
    let last_ms = r.u64_be()? as i64;
    let flags = r.u8()?;
    let (lat, lon, at) = (r.f64()?, r.f64()?, r.u64_be()? as i64);
    let (min_lat, min_lon, max_lat, max_lon) = (r.f64()?, r.f64()?, r.f64()?, r.f64()?);
    r.finish()?;
    Ok(SensorEntry {
        count,
        first_ms,
        last_ms,
        last_location: (flags & 1 != 0).then_some((lat, lon, at)),
        bounds: (flags & 2 != 0).then_some(BoundingBox {
            min_lat,
            min_lon,
            max_lat,
            max_lon,
        }),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(CodecError(format!("{} is truncated", self.what)));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn array(&mut self) -> Result<[u8; 8], CodecError> {
        self.take(8)?
            .try_into()
            .map_err(|_| CodecError(format!("{} is truncated", self.what)))
    }

    fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn u64_be(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn finish(self) -> Result<(), CodecError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(CodecError(format!(
                "{} has {} unexpected trailing bytes",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_sign_bit_sorts_times_chronologically() {
        let times = [
            i64::MIN,
            -86_400_000_000,
            -1,
            0,
            1,
            946_684_800_000,
            1_750_000_000_000,
            i64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(encode_time(pair[0]) < encode_time(pair[1]), "{pair:?}");
            // Plain two's complement would get negative vs positive wrong.
            if pair[0] < 0 && pair[1] >= 0 {
                assert!(pair[0].to_be_bytes() > pair[1].to_be_bytes());
            }
        }
        for t in times {
            assert_eq!(decode_time(encode_time(t)), t);
        }
        // And whole keys of one sensor sort by time too.
        let a = reading_key(7, "s-1", -5);
        let b = reading_key(7, "s-1", 5);
        assert!(a < b);
        assert_eq!(
            decode_reading_key(&b).expect("decode"),
            ReadingKey {
                number: 7,
                sensor_id: "s-1".to_string(),
                ms: 5
            }
        );
    }

    #[test]
    fn the_length_byte_keeps_sensor_ranges_apart() {
        // "ab" is a prefix of "abc" as text, but not as a key prefix.
        let ab = sensor_prefix(1, "ab");
        let abc_key = reading_key(1, "abc", 0);
        assert!(!abc_key.starts_with(&ab));
        assert!(!reading_key(2, "ab", 0).starts_with(&dataset_prefix(1)));
    }

    #[test]
    fn values_round_trip_with_gaps_and_location() {
        for (values, location) in [
            (vec![Some(1.5), None, Some(-3.0)], Some((56.1, 10.2))),
            (vec![None; 9], None),
            (
                (0..20)
                    .map(|i| (i % 3 == 0).then_some(f64::from(i)))
                    .collect(),
                None,
            ),
        ] {
            let bytes = encode_values(&values, location);
            let back = decode_values(&bytes).expect("decode");
            assert_eq!(back.values, values);
            assert_eq!(back.location, location);
            assert!(decode_values(&bytes[..bytes.len() - 1]).is_err());
        }
        let entry = SensorEntry {
            count: 42,
            first_ms: 1,
            last_ms: 99,
            last_location: Some((56.0, 10.0, 99)),
            bounds: Some(BoundingBox::point((56.0, 10.0))),
        };
        assert_eq!(
            decode_sensor(&encode_sensor(&entry)).expect("decode"),
            entry
        );
    }
}
