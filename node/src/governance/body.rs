//! Strict reading and deterministic writing of the TOML document bodies.
//!
//! Rosters and agreements are read field by field from a parsed TOML table
//! rather than through serde derive, so that every problem is reported with
//! the path of the field a person has to fix (`member[3].tls_fingerprint:
//! ...`), unknown keys (usually typos) are refused instead of silently
//! ignored, and times may be written either as TOML date-times or as quoted
//! RFC 3339 strings. Writing is done by hand, field by field, so the same
//! draft always renders to the same bytes: those bytes are what gets signed.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};
use toml::{Table, Value};
use uuid::Uuid;

/// A problem with one field of a document body, named by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `member[3].tls_fingerprint` (indices from 0).
    pub field: String,
    /// What is wrong with it and, where possible, what is expected.
    pub reason: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses TOML text into a table, with the parser's own message on failure.
pub(crate) fn parse_table(text: &str) -> Result<Table, String> {
    toml::from_str::<Table>(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Reads the fields of one TOML table, knowing its path for error messages.
pub(crate) struct Reader<'a> {
    table: &'a Table,
    prefix: String,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(table: &'a Table, prefix: impl Into<String>) -> Self {
        Reader {
            table,
            prefix: prefix.into(),
        }
    }

    /// The full path of `key` in this table.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// An error about `key` in this table.
    pub(crate) fn error(&self, key: &str, reason: impl Into<String>) -> FieldError {
        FieldError::new(self.path(key), reason)
    }

    /// Refuses keys not in `allowed` (a typo must not pass silently).
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), FieldError> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(self.error(
                key,
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn required(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.table
            .get(key)
            .ok_or_else(|| self.error(key, "missing"))
    }

    /// A required string.
    pub(crate) fn string(&self, key: &str) -> Result<String, FieldError> {
        match self.required(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    /// A required single-line, non-empty text (names, purposes).
    pub(crate) fn text(&self, key: &str) -> Result<String, FieldError> {
        let s = self.string(key)?;
        check_text(&s).map_err(|reason| self.error(key, reason))?;
        Ok(s)
    }

    /// A required single-line, non-empty prose text of at most
    /// [`MAX_LONG_TEXT`] characters (a purpose, a legal basis).
    pub(crate) fn long_text(&self, key: &str) -> Result<String, FieldError> {
        let s = self.string(key)?;
        check_text_within(&s, MAX_LONG_TEXT).map_err(|reason| self.error(key, reason))?;
        Ok(s)
    }

    /// A required string, converted by `parse` (whose error becomes the reason).
    pub(crate) fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, FieldError> {
        let s = self.string(key)?;
        parse(&s).map_err(|reason| self.error(key, reason))
    }

    /// An optional string, converted by `parse`.
    pub(crate) fn opt_parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, FieldError> {
        if self.has(key) {
            self.parsed(key, parse).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A required integer.
    pub(crate) fn integer(&self, key: &str) -> Result<i64, FieldError> {
        match self.required(key)? {
            Value::Integer(i) => Ok(*i),
            other => Err(self.error(
                key,
                format!("expected an integer, found {}", other.type_str()),
            )),
        }
    }

    /// A required integer that fits a `u32` and is at least `min`.
    pub(crate) fn u32_at_least(&self, key: &str, min: u32) -> Result<u32, FieldError> {
        let i = self.integer(key)?;
        u32::try_from(i)
            .ok()
            .filter(|v| *v >= min)
            .ok_or_else(|| self.error(key, format!("{i} is out of range ({min} to {})", u32::MAX)))
    }

    /// A required instant: a TOML offset date-time or an RFC 3339 string.
    pub(crate) fn timestamp(&self, key: &str) -> Result<OffsetDateTime, FieldError> {
        let text = self.date_text(key)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
            self.error(
                key,
                format!(
                    "`{text}` is not an RFC 3339 time with an offset \
                     (e.g. 2025-01-01T00:00:00Z)"
                ),
            )
        })
    }

    /// A required calendar date `YYYY-MM-DD` (TOML local date or string).
    pub(crate) fn date(&self, key: &str) -> Result<Date, FieldError> {
        let text = self.date_text(key)?;
        parse_date(&text).map_err(|reason| self.error(key, reason))
    }

    /// An optional calendar date.
    pub(crate) fn opt_date(&self, key: &str) -> Result<Option<Date>, FieldError> {
        if self.has(key) {
            self.date(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn date_text(&self, key: &str) -> Result<String, FieldError> {
        match self.required(key)? {
            Value::String(s) => Ok(s.clone()),
            Value::Datetime(d) => Ok(d.to_string()),
            other => Err(self.error(
                key,
                format!("expected a date or time, found {}", other.type_str()),
            )),
        }
    }

    /// An array of strings; missing means empty. Duplicates are refused.
    pub(crate) fn string_array(&self, key: &str) -> Result<Vec<String>, FieldError> {
        let Some(value) = self.table.get(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.error(
                key,
                format!("expected an array of strings, found {}", value.type_str()),
            ));
        };
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", self.path(key));
            let Value::String(s) = item else {
                return Err(FieldError::new(
                    field,
                    format!("expected a string, found {}", item.type_str()),
                ));
            };
            check_text(s).map_err(|reason| FieldError::new(field.clone(), reason))?;
            if out.contains(s) {
                return Err(FieldError::new(field, format!("`{s}` is listed twice")));
            }
            out.push(s.clone());
        }
        Ok(out)
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(
                key,
                format!("expected true or false, found {}", other.type_str()),
            )),
        }
    }

    /// A required number (a TOML float or integer).
    pub(crate) fn number(&self, key: &str) -> Result<f64, FieldError> {
        number_of(self.required(key)?).ok_or_else(|| self.error(key, "expected a number"))
    }

    /// A required pair of numbers `[lower, upper]`.
    pub(crate) fn number_pair(&self, key: &str) -> Result<(f64, f64), FieldError> {
        match self.required(key)? {
            Value::Array(items) if items.len() == 2 => {
                match (number_of(&items[0]), number_of(&items[1])) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(self.error(key, "expected two numbers [lower, upper]")),
                }
            }
            _ => Err(self.error(key, "expected two numbers [lower, upper]")),
        }
    }

    /// The keys of this table, in order.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    /// A required sub-table.
    pub(crate) fn table(&self, key: &str) -> Result<Reader<'a>, FieldError> {
        match self.required(key)? {
            Value::Table(t) => Ok(Reader::new(t, self.path(key))),
            other => Err(self.error(key, format!("expected a table, found {}", other.type_str()))),
        }
    }

    /// An array of tables (`[[key]]`); missing means empty.
    pub(crate) fn tables(&self, key: &str) -> Result<Vec<Reader<'a>>, FieldError> {
        let Some(value) = self.table.get(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.error(
                key,
                format!("expected [[{key}]] tables, found {}", value.type_str()),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Table(t) => Ok(Reader::new(t, format!("{}[{i}]", self.path(key)))),
                other => Err(FieldError::new(
                    format!("{}[{i}]", self.path(key)),
                    format!("expected a table, found {}", other.type_str()),
                )),
            })
            .collect()
    }

    /// The raw value of `key`, for fields with more than one allowed shape.
    pub(crate) fn value(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.required(key)
    }
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

// ---- Value checks shared by rosters and agreements ------------------------

/// Longest single-line text in a document (names, ids, list items), in
/// characters. Documents travel to every party and are held in memory by
/// every node: nothing in them may be unbounded.
pub const MAX_SHORT_TEXT: usize = 200;
/// Longest prose field (an agreement's purpose, a legal basis text).
pub const MAX_LONG_TEXT: usize = 2_000;
/// Most items in one list of a document (scope entries, excluded fields,
/// named consumers).
pub const MAX_LIST_ITEMS: usize = 256;

/// A single line of human text: not empty, not only spaces, no control
/// characters, at most [`MAX_SHORT_TEXT`] characters.
pub(crate) fn check_text(s: &str) -> Result<(), String> {
    check_text_within(s, MAX_SHORT_TEXT)
}

/// Like [`check_text`], with a bound of `max` characters.
pub(crate) fn check_text_within(s: &str, max: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.chars().any(char::is_control) {
        return Err("must be a single line without control characters".to_string());
    }
    let length = s.chars().count();
    if length > max {
        return Err(format!("is {length} characters long; at most {max}"));
    }
    Ok(())
}

/// Parses a span of time written as a positive whole number and a unit,
/// `s`, `m`, `h` or `d` (`30s`, `15m`, `1h`, `1d`), at most 366 days.
/// Bucket sizes, grid cells and settling delays are all written this way.
pub fn parse_span(text: &str) -> Result<time::Duration, String> {
    let bad = || {
        format!(
            "`{}` is not a span of time; use a whole number and s, m, h or d \
             (e.g. 30s, 15m, 1h, 1d), at most 366d",
            text.escape_debug()
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let span = time::Duration::seconds(n.checked_mul(unit_seconds).ok_or_else(bad)?);
    if n == 0 || span > time::Duration::days(366) {
        return Err(bad());
    }
    Ok(span)
}

/// A span as [`parse_span`] reads it, in the largest unit that divides it.
pub fn show_span(span: time::Duration) -> String {
    let seconds = span.whole_seconds();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// An identifier slug such as `digit` or `govtech-midtjylland`.
pub(crate) fn check_slug(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an id: use lowercase letters, digits and single hyphens \
             (e.g. `govtech-midtjylland`)"
        ))
    }
}

/// A UUID in its canonical hyphenated lowercase form.
pub(crate) fn parse_uuid(s: &str) -> Result<Uuid, String> {
    let id = Uuid::parse_str(s).map_err(|e| format!("`{s}` is not a UUID ({e})"))?;
    if id.hyphenated().to_string() != s {
        return Err(format!(
            "`{s}` is not in the canonical form `{}`",
            id.hyphenated()
        ));
    }
    Ok(id)
}

/// A calendar date written `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Result<Date, String> {
    Date::parse(s, format_description!("[year]-[month]-[day]"))
        .map_err(|_| format!("`{s}` is not a date written YYYY-MM-DD"))
}

// ---- Writing ---------------------------------------------------------------

/// A TOML basic string, escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of basic strings on one line.
pub(crate) fn quote_all(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// An instant as RFC 3339 text (also a valid TOML offset date-time).
pub(crate) fn rfc3339(at: OffsetDateTime) -> Result<String, String> {
    at.format(&Rfc3339)
        .map_err(|e| format!("cannot be written as RFC 3339 ({e})"))
}

/// A date as `YYYY-MM-DD`.
pub(crate) fn ymd(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// An instant for people: RFC 3339 where possible, `time`'s own form otherwise.
pub(crate) fn show_instant(at: OffsetDateTime) -> String {
    rfc3339(at).unwrap_or_else(|_| at.to_string())
}

/// Midnight UTC at the start of `date`: the instant a `left` date takes effect.
pub(crate) fn start_of(date: Date) -> OffsetDateTime {
    date.midnight().assume_utc()
}

/// Writes `items` as a comma-separated list for messages.
pub(crate) fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_the_toml_parser() {
        for s in [
            "plain",
            "Næstved Kommune",
            "a \"quote\" and \\ back",
            "tab\there",
            "\u{1}",
        ] {
            let text = format!("v = {}\n", quote(s));
            let table = parse_table(&text).expect("parses");
            assert_eq!(table.get("v").and_then(Value::as_str), Some(s), "{text}");
        }
    }

    #[test]
    fn slugs_uuids_and_dates_are_strict() {
        assert!(check_slug("digit").is_ok());
        assert!(check_slug("govtech-midtjylland").is_ok());
        for bad in ["", "Digit", "a--b", "-a", "a-", "a b", "æ"] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
        let id = "0190f5a4-7c1e-7d2a-9b3c-123456789abc";
        assert!(parse_uuid(id).is_ok());
        assert!(parse_uuid(&id.to_uppercase()).is_err());
        assert!(parse_uuid(&id.replace('-', "")).is_err());
        assert!(parse_date("2025-01-01").is_ok());
        assert!(parse_date("2025-1-1").is_err());
        assert!(parse_date("2025").is_err());
    }

    #[test]
    fn spans_parse_and_show_in_one_form() {
        for (text, seconds) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("90m", 5400),
            ("1d", 86_400),
        ] {
            let span = parse_span(text).expect(text);
            assert_eq!(span.whole_seconds(), seconds, "{text}");
            assert_eq!(parse_span(&show_span(span)).expect("again"), span);
        }
        assert_eq!(show_span(time::Duration::minutes(120)), "2h");
        for bad in [
            "",
            "m",
            "0m",
            "15",
            "15x",
            "1.5h",
            "-1h",
            "400d",
            "99999999999999999999d",
        ] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_is_bounded() {
        assert!(check_text(&"x".repeat(MAX_SHORT_TEXT)).is_ok());
        let err = check_text(&"x".repeat(MAX_SHORT_TEXT + 1)).expect_err("too long");
        assert!(err.contains("at most 200"), "{err}");
        assert!(check_text_within(&"x".repeat(MAX_LONG_TEXT), MAX_LONG_TEXT).is_ok());
    }

    #[test]
    fn field_errors_name_the_path() {
        let table = parse_table("[[member]]\ncode = \"x\"\n").expect("parses");
        let top = Reader::new(&table, "");
        let members = top.tables("member").expect("tables");
        let err = members[0].integer("code").expect_err("not an integer");
        assert_eq!(err.field, "member[0].code");
        let err = members[0].only(&["name"]).expect_err("unknown");
        assert!(
            err.to_string().starts_with("member[0].code: unknown field"),
            "{err}"
        );
    }
}
