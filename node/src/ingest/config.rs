//! The `[ingest]` config section: OS2iot HTTP-push endpoints
//! (`[[ingest.http]]`) and MQTT subscriptions (`[[ingest.mqtt]]`), each
//! with its target dataset and [`Mapping`]. Keys are documented in
//! `deploy/node.example.toml`.
//!
//! [`crate::config`] parses the file and calls [`check`], which returns
//! the key (relative to the file, e.g. `ingest.http[0].token_sha256`) and
//! the reason for anything wrong, so the node refuses to start with a
//! message naming it. Secrets never enter the config file: an endpoint's
//! token is given by its SHA-256, a broker password by a file, and
//! neither is printed by `Debug`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::mapping::{Mapping, RawMapping};

/// Default and largest HTTP-push body, in KiB.
const DEFAULT_MAX_BODY_KIB: u64 = 256;
const MAX_BODY_KIB: u64 = 16 * 1024;
/// Default and largest MQTT message, in KiB.
const DEFAULT_MAX_MESSAGE_KIB: u64 = 256;
const MAX_MESSAGE_KIB: u64 = 16 * 1024;
/// Most endpoints or subscriptions of each kind.
const MAX_DOORS: usize = 64;
/// Most topic filters per subscription.
const MAX_TOPICS: usize = 32;

/// `[ingest]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    #[serde(default)]
    http: Vec<RawHttpPush>,
    #[serde(default)]
    mqtt: Vec<RawMqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpPush {
    name: String,
    dataset: String,
    token_sha256: String,
    #[serde(default)]
    max_body_kib: Option<u64>,
    mapping: RawMapping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    name: String,
    dataset: String,
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    client_id: Option<String>,
    topics: Vec<String>,
    #[serde(default)]
    keep_alive_secs: Option<u64>,
    #[serde(default)]
    max_message_kib: Option<u64>,
    mapping: RawMapping,
}

/// The checked `[ingest]` section.
#[derive(Debug, Clone, Default)]
pub struct IngestConfig {
    pub http: Vec<HttpPushConfig>,
    pub mqtt: Vec<MqttConfig>,
}

/// One `[[ingest.http]]`: an endpoint at `/ingest/os2iot/{name}`.
#[derive(Clone)]
pub struct HttpPushConfig {
    pub name: String,
    pub dataset: String,
    /// SHA-256 of the token the sender presents as `Bearer <token>`.
    pub token_sha256: [u8; 32],
    pub max_body_bytes: usize,
    pub mapping: Mapping,
}

impl fmt::Debug for HttpPushConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPushConfig")
            .field("name", &self.name)
            .field("dataset", &self.dataset)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// A secret read from a file; `Debug` does not show it, and it is wiped
/// from memory when dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The secret itself (to hand to the client that sends it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One `[[ingest.mqtt]]`: a subscription on a broker.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub name: String,
    pub dataset: String,
    pub host: String,
    pub port: u16,
    /// TLS with these trust roots (PEM), when on.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    pub topics: Vec<String>,
    pub keep_alive: Duration,
    pub max_message_bytes: usize,
    pub mapping: Mapping,
}

/// A problem: the key (from the file's top) and the reason.
pub type Problem = (String, String);

fn problem(key: String, reason: impl Into<String>) -> Problem {
    (key, reason.into())
}

/// Checks `raw`. `resolve` makes a config path absolute; `http_on` says
/// whether the `[http]` listener (which serves the push endpoints) is
/// configured; `municipality_code` names default MQTT client ids.
pub fn check(
    raw: RawIngest,
    resolve: &dyn Fn(&Path) -> PathBuf,
    http_on: bool,
    municipality_code: u32,
) -> Result<IngestConfig, Problem> {
    if raw.http.len() > MAX_DOORS {
        return Err(problem(
            "ingest.http".into(),
            format!("at most {MAX_DOORS} endpoints"),
        ));
    }
    if raw.mqtt.len() > MAX_DOORS {
        return Err(problem(
            "ingest.mqtt".into(),
            format!("at most {MAX_DOORS} subscriptions"),
        ));
    }
    let mut http = Vec::with_capacity(raw.http.len());
    let mut names = HashSet::new();
    for (index, door) in raw.http.into_iter().enumerate() {
        let key = |field: &str| format!("ingest.http[{index}].{field}");
        if !http_on {
            return Err(problem(
                key("name"),
                "HTTP-push endpoints are served on the [http] listener; configure [http] listen",
            ));
        }
        name(&door.name).map_err(|r| problem(key("name"), r))?;
        if !names.insert(door.name.clone()) {
            return Err(problem(
                key("name"),
                format!("endpoint name `{}` is used twice", door.name),
            ));
        }
        dataset(&door.dataset).map_err(|r| problem(key("dataset"), r))?;
        let mut token_sha256 = [0u8; 32];
        hex::decode_to_slice(door.token_sha256.trim(), &mut token_sha256).map_err(|_| {
            problem(
                key("token_sha256"),
                "expected 64 hexadecimal digits, the SHA-256 of the token \
                 (`samvirke token new` prints one)",
            )
        })?;
        let kib = door.max_body_kib.unwrap_or(DEFAULT_MAX_BODY_KIB);
        if !(1..=MAX_BODY_KIB).contains(&kib) {
            return Err(problem(
                key("max_body_kib"),
                format!("{kib} is outside 1..={MAX_BODY_KIB}"),
            ));
        }
        let mapping = Mapping::from_raw(door.mapping, false)
            .map_err(|e| problem(key(&format!("mapping.{}", e.key)), e.reason))?;
        http.push(HttpPushConfig {
            name: door.name,
            dataset: door.dataset,
            token_sha256,
            max_body_bytes: usize::try_from(kib * 1024).unwrap_or(usize::MAX),
            mapping,
        });
    }

    let mut mqtt = Vec::with_capacity(raw.mqtt.len());
    let mut names = HashSet::new();
    let mut client_ids = HashSet::new();
    for (index, door) in raw.mqtt.into_iter().enumerate() {
        let key = |field: &str| format!("ingest.mqtt[{index}].{field}");
        name(&door.name).map_err(|r| problem(key("name"), r))?;
        if !names.insert(door.name.clone()) {
            return Err(problem(
                key("name"),
                format!("subscription name `{}` is used twice", door.name),
            ));
        }
        dataset(&door.dataset).map_err(|r| problem(key("dataset"), r))?;
        if door.host.trim().is_empty() || door.host.chars().any(char::is_whitespace) {
            return Err(problem(key("host"), "expected a host name or address"));
        }
        let ca_file = match (door.tls, door.ca_file) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(problem(
                    key("ca_file"),
                    "is set but tls is not; set tls = true",
                ));
            }
            (true, None) => {
                return Err(problem(
                    key("ca_file"),
                    "tls = true needs the broker's CA certificate(s) as PEM \
                     (for a publicly trusted broker, the system bundle, e.g. \
                     /etc/ssl/certs/ca-certificates.crt)",
                ));
            }
            (true, Some(path)) => {
                Some(existing_file(&resolve(&path)).map_err(|r| problem(key("ca_file"), r))?)
            }
        };
        let password = match (&door.username, door.password_file) {
            (_, None) => None,
            (None, Some(_)) => {
                return Err(problem(key("password_file"), "is set but username is not"));
            }
            (Some(_), Some(path)) => {
                Some(read_secret(&resolve(&path)).map_err(|r| problem(key("password_file"), r))?)
            }
        };
        if let Some(user) = &door.username
            && (user.is_empty() || user.len() > 256)
        {
            return Err(problem(key("username"), "must be 1 to 256 bytes"));
        }
        let client_id = door
            .client_id
            .unwrap_or_else(|| format!("samvirke-{municipality_code}-{}", door.name));
        if client_id.is_empty()
            || client_id.len() > 128
            || !client_id.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(problem(
                key("client_id"),
                "must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        // The broker keeps the session (and what arrives while the node
        // is down) under the client id: two subscriptions sharing one
        // would take over each other's session.
        if !client_ids.insert(client_id.clone()) {
            return Err(problem(
                key("client_id"),
                format!("client id `{client_id}` is used by another subscription"),
            ));
        }
        if door.topics.is_empty() || door.topics.len() > MAX_TOPICS {
            return Err(problem(
                key("topics"),
                format!("name 1 to {MAX_TOPICS} topic filters, e.g. [\"device/+/+/+\"]"),
            ));
        }
        for (t, topic) in door.topics.iter().enumerate() {
            if topic.is_empty() || topic.len() > 1024 || !rumqttc::valid_filter(topic) {
                return Err(problem(
                    key(&format!("topics[{t}]")),
                    format!(
                        "`{topic}` is not an MQTT topic filter (`+` stands for a whole level, \
                         `#` only at the end)"
                    ),
                ));
            }
        }
        let keep_alive = door.keep_alive_secs.unwrap_or(30);
        if !(5..=3_600).contains(&keep_alive) {
            return Err(problem(
                key("keep_alive_secs"),
                format!("{keep_alive} is outside 5..=3600"),
            ));
        }
        let kib = door.max_message_kib.unwrap_or(DEFAULT_MAX_MESSAGE_KIB);
        if !(1..=MAX_MESSAGE_KIB).contains(&kib) {
            return Err(problem(
                key("max_message_kib"),
                format!("{kib} is outside 1..={MAX_MESSAGE_KIB}"),
            ));
        }
        let mapping = Mapping::from_raw(door.mapping, true)
            .map_err(|e| problem(key(&format!("mapping.{}", e.key)), e.reason))?;
        mqtt.push(MqttConfig {
            name: door.name,
            dataset: door.dataset,
            host: door.host,
            port: door.port.unwrap_or(if door.tls { 8883 } else { 1883 }),
            ca_file,
            username: door.username,
            password,
            client_id,
            topics: door.topics,
            keep_alive: Duration::from_secs(keep_alive),
            max_message_bytes: usize::try_from(kib * 1024).unwrap_or(usize::MAX),
            mapping,
        });
    }
    Ok(IngestConfig { http, mqtt })
}

/// A door name: it is part of a URL and of log lines.
fn name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "`{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

fn dataset(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("must name a sensor dataset of this node's catalog".to_string());
    }
    Ok(())
}

fn existing_file(path: &Path) -> Result<PathBuf, String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Reads a one-line secret file (a trailing newline is not part of it).
fn read_secret(path: &Path) -> Result<Secret, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(format!(
                "{} is readable by group or others; chmod 600 it",
                path.display()
            ));
        }
    }
    Ok(Secret(Zeroizing::new(secret.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, http_on: bool) -> Result<IngestConfig, Problem> {
        let raw: RawIngest = toml::from_str(text).expect("TOML parses");
        check(raw, &|p| p.to_path_buf(), http_on, 751)
    }

    const PUSH: &str = r#"
        [[http]]
        name = "os2iot-air"
        dataset = "aarhus-air-quality"
        token_sha256 = "abababababababababababababababababababababababababababababababab"
        [http.mapping]
        sensor_id = "deviceId"
        measures = { pm2_5 = "pm25" }
    "#;

    #[test]
    fn a_push_endpoint_loads_and_needs_the_http_listener() {
        let config = load(PUSH, true).expect("valid");
        assert_eq!(config.http[0].name, "os2iot-air");
        assert_eq!(config.http[0].max_body_bytes, 256 * 1024);
        assert!(!format!("{:?}", config.http[0]).contains("abab"));
        let (key, reason) = load(PUSH, false).expect_err("no [http]");
        assert_eq!(key, "ingest.http[0].name");
        assert!(reason.contains("[http]"), "{reason}");
    }

    #[test]
    fn push_mistakes_name_the_key() {
        let cases = [
            (PUSH.replace("abab", "zz"), "ingest.http[0].token_sha256"),
            (
                PUSH.replace("os2iot-air", "os2iot/air"),
                "ingest.http[0].name",
            ),
            (
                PUSH.replace("sensor_id = \"deviceId\"", ""),
                "ingest.http[0].mapping.sensor_id",
            ),
            (
                PUSH.replace("[http.mapping]", "max_body_kib = 0\n[http.mapping]"),
                "ingest.http[0].max_body_kib",
            ),
            (format!("{PUSH}{PUSH}"), "ingest.http[1].name"),
        ];
        for (text, key) in cases {
            let (got, reason) = load(&text, true).expect_err(key);
            assert_eq!(got, key, "{reason}");
        }
    }

    #[test]
    fn the_documented_example_checks() {
        #[derive(Deserialize)]
        struct Example {
            ingest: RawIngest,
        }
        let text = include_str!("../../../deploy/node.example.toml");
        let example: Example = toml::from_str(
            // Only the [ingest] tables (the rest is checked by crate::config).
            &text[text
                .find("\n[[ingest.http]]")
                .expect("an [[ingest.http]] example")..],
        )
        .expect("the [ingest] example parses");
        // Its files, stood in for by one private file.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "x\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config =
            check(example.ingest, &|_| file.clone(), true, 751).expect("the example checks");
        assert_eq!((config.http.len(), config.mqtt.len()), (1, 1));
        assert_eq!(config.mqtt[0].port, 8883);
    }

    #[test]
    fn mqtt_subscriptions_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = dir.path().join("mqtt-password");
        std::fs::write(&password, "s3cret\n").expect("write");
        let text = format!(
            r#"
            [[mqtt]]
            name = "broker"
            dataset = "aarhus-air-quality"
            host = "127.0.0.1"
            username = "samvirke"
            password_file = "{}"
            topics = ["device/+/+/+"]
            [mqtt.mapping]
            sensor_id_topic_segment = 3
            measures = {{ pm2_5 = "pm25" }}
            "#,
            password.display()
        );
        // A password file others can read is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (key, _) = load(&text, false).expect_err("world-readable password");
        assert_eq!(key, "ingest.mqtt[0].password_file");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = load(&text, false).expect("valid");
        let mqtt = &config.mqtt[0];
        assert_eq!(
            (mqtt.port, mqtt.client_id.as_str()),
            (1883, "samvirke-751-broker")
        );
        assert_eq!(mqtt.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{mqtt:?}").contains("s3cret"));

        let cases = [
            (
                text.replace("device/+/+/+", "device/#/x"),
                "ingest.mqtt[0].topics[0]",
            ),
            (
                text.replace("username = \"samvirke\"", ""),
                "ingest.mqtt[0].password_file",
            ),
            (
                text.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\ntls = true"),
                "ingest.mqtt[0].ca_file",
            ),
            (
                text.replace("topics = [\"device/+/+/+\"]", "topics = []"),
                "ingest.mqtt[0].topics",
            ),
        ];
        for (text, key) in cases {
            let (got, reason) = load(&text, false).expect_err(key);
            assert_eq!(got, key, "{reason}");
        }
        // Two subscriptions may not share a client id (and so a session).
        let twice = format!(
            "{text}{}",
            text.replace(
                "name = \"broker\"",
                "name = \"other\"\nclient_id = \"samvirke-751-broker\""
            )
        );
        let (key, _) = load(&twice, false).expect_err("shared client id");
        assert_eq!(key, "ingest.mqtt[1].client_id");
    }
}
