//! The OS2iot HTTP-push door, end to end: a real node with two push
//! endpoints on its `[http]` listener (`127.0.0.1:0`), bodies posted over
//! HTTP/1.1 exactly as OS2iot's HTTP-push data target sends them (the
//! payload decoder's output unwrapped, `Content-Type: application/json`,
//! the `Authorization` header verbatim), and the readings read back
//! through the local gRPC API and the HTTP API.
//!
//! Covered:
//! - flat decoder output (object and array) and NGSI-LD style output
//!   (object and array, `.value` properties, `observedAt`, GeoProperty)
//!   are stored and read back with their ids, values, times and places;
//! - refused with nothing stored: no `Authorization`, a wrong token, the
//!   other endpoint's token, the token without `Bearer`; a body where one
//!   element of an array does not map (400 naming element, field and
//!   reason); readings the dataset refuses; not JSON; a non-JSON content
//!   type (415); a body over the endpoint's limit (413), both declared and
//!   streamed without a length; an unknown endpoint (404); GET (405);
//! - the 2xx answer comes after the readings are durable: the count read
//!   right after each 200 already includes them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use samvirke_node::data::sensor_dataset;
use samvirke_node::local::auth::generate_token;
use samvirke_node::pki::DevCa;
use samvirke_node::wire;
use samvirke_tests::{count_readings, local_client, start_node_with};
use serde_json::{Value, json};

const AARHUS: u32 = 751;
const CLIMATE: &str = "aarhus-indoor-climate";

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("a JSON body ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error message in {:?}", self.body))
            .to_string()
    }
}

async fn exchange<B>(request: http::Request<B>) -> Got
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client: Client<_, B> = Client::builder(TokioExecutor::new()).build_http();
    let call = async {
        let response = client.request(request).await.expect("an HTTP answer");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Got {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("an answer within 30 s")
}

/// POSTs `body` as OS2iot does, with `authorization` verbatim if given.
async fn push(url: &str, authorization: Option<&str>, body: &[u8]) -> Got {
    push_typed(url, authorization, "application/json", body).await
}

async fn push_typed(
    url: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Got {
    let mut request = http::Request::post(url).header("content-type", content_type);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    exchange(
        request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("a request"),
    )
    .await
}

fn config(name: &str, hash: &str, mapping: &str) -> String {
    format!(
        "\n[[ingest.http]]\nname = \"{name}\"\ndataset = \"{CLIMATE}\"\ntoken_sha256 = \"{hash}\"\n\
         max_body_kib = 8\n[ingest.http.mapping]\n{mapping}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os2iot_bodies_are_stored_and_bad_ones_refused_with_nothing_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("OS2iot push test CA").expect("CA");
    let flat_token = generate_token().expect("token");
    let ngsi_token = generate_token().expect("token");
    let extra = format!(
        "{}{}",
        config(
            "os2iot-flat",
            &flat_token.hash.to_hex(),
            r#"sensor_id = "deviceId"
location = "location"
measures = { temperature = "temperature_celcius", humidity = "relative_humidity_percent" }"#,
        ),
        config(
            "os2iot-ngsi",
            &ngsi_token.hash.to_hex(),
            r#"sensor_id = "id"
time = "temperature.observedAt"
location = "location"
measures = { temperature = "temperature.value", humidity = "humidity.value" }"#,
        ),
    );
    let node = start_node_with(
        &dir.path().join("aarhus"),
        &ca,
        AARHUS,
        &[("analyst", &["read"])],
        &extra,
    )
    .await;
    let analyst = node.extra_tokens[0].clone();
    let base = node.running.http_endpoint().expect("the HTTP API is on");
    let flat_url = format!("{base}/ingest/os2iot/os2iot-flat");
    let ngsi_url = format!("{base}/ingest/os2iot/os2iot-ngsi");
    let flat_auth = format!("Bearer {}", flat_token.secret.as_str());
    let ngsi_auth = format!("Bearer {}", ngsi_token.secret.as_str());
    let mut admin = local_client(&node.running.local_endpoint(), Some(&node.admin_token)).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("indoor-climate", AARHUS).expect("indoor climate dataset"),
        ))
        .await
        .expect("publish");
    let mut stored = 0;

    // Flat decoder output, one object.
    let flat_object = json!({
        "deviceId": "elsys-ers-1", "name": "Rådhus, lokale 3",
        "temperature_celcius": 21.4, "relative_humidity_percent": 40,
        "location": {"type": "Point", "coordinates": [10.2039, 56.1529]}
    });
    let got = push(
        &flat_url,
        Some(&flat_auth),
        flat_object.to_string().as_bytes(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.json()["stored"], 1);
    stored += 1;
    assert_eq!(count_readings(&mut admin, CLIMATE).await, stored);

    // Flat output, an array (one reading without a place).
    let flat_array = json!([
        {"deviceId": "elsys-ers-2", "temperature_celcius": 19.0, "relative_humidity_percent": 55.5},
        {"deviceId": "elsys-ers-3", "temperature_celcius": 22.5, "relative_humidity_percent": 35,
         "location": {"type": "Point", "coordinates": [10.1, 56.2]}},
        {"deviceId": 4711, "temperature_celcius": 20.0}
    ]);
    let got = push(
        &flat_url,
        Some(&flat_auth),
        flat_array.to_string().as_bytes(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.json()["stored"], 3);
    stored += 3;
    assert_eq!(count_readings(&mut admin, CLIMATE).await, stored);

    // NGSI-LD style, one object and an array.
    let ngsi = |id: &str, t: f64, at: &str| {
        json!({
            "id": id, "type": "IndoorEnvironmentObserved",
            "temperature": {"type": "Property", "value": t, "observedAt": at},
            "humidity": {"type": "Property", "value": 44, "observedAt": at},
            "location": {"type": "GeoProperty",
                         "value": {"type": "Point", "coordinates": [10.21, 56.15]}}
        })
    };
    let one = ngsi("urn:ngsi-ld:sensor:aarhus-1", 23.25, "2026-11-30T10:00:00Z");
    let got = push(&ngsi_url, Some(&ngsi_auth), one.to_string().as_bytes()).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    stored += 1;
    assert_eq!(count_readings(&mut admin, CLIMATE).await, stored);
    let many = json!([
        ngsi("urn:ngsi-ld:sensor:aarhus-2", 18.5, "2026-11-30T10:05:00Z"),
        ngsi(
            "urn:ngsi-ld:sensor:aarhus-2",
            18.75,
            "2026-11-30T10:10:00+01:00"
        ),
    ]);
    let got = push(&ngsi_url, Some(&ngsi_auth), many.to_string().as_bytes()).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.json()["stored"], 2);
    stored += 2;
    assert_eq!(count_readings(&mut admin, CLIMATE).await, stored);

    // Refusals: each leaves the count where it was.
    let valid = flat_object.to_string();
    let refusals: Vec<(&str, Got, StatusCode, Vec<&str>)> = vec![
        (
            "no Authorization",
            push(&flat_url, None, valid.as_bytes()).await,
            StatusCode::UNAUTHORIZED,
            vec!["Authorization"],
        ),
        (
            "a wrong token",
            push(&flat_url, Some("Bearer svk_0000"), valid.as_bytes()).await,
            StatusCode::UNAUTHORIZED,
            vec!["wrong token"],
        ),
        (
            "the other endpoint's token",
            push(&flat_url, Some(&ngsi_auth), valid.as_bytes()).await,
            StatusCode::UNAUTHORIZED,
            vec!["wrong token"],
        ),
        (
            "the token without Bearer",
            push(
                &flat_url,
                Some(flat_token.secret.as_str()),
                valid.as_bytes(),
            )
            .await,
            StatusCode::UNAUTHORIZED,
            vec!["Bearer"],
        ),
        (
            "one element that does not map",
            push(
                &ngsi_url,
                Some(&ngsi_auth),
                json!([
                    ngsi("urn:ngsi-ld:sensor:aarhus-3", 20.0, "2026-11-30T11:00:00Z"),
                    {"id": "urn:ngsi-ld:sensor:aarhus-4",
                     "temperature": {"type": "Property", "value": "warm",
                                     "observedAt": "2026-11-30T11:00:00Z"}}
                ])
                .to_string()
                .as_bytes(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            vec![
                "element [1]",
                "measures.temperature",
                "expected a number, found a string",
                "nothing of the body was stored",
            ],
        ),
        (
            "a missing sensor id",
            push(
                &flat_url,
                Some(&flat_auth),
                br#"{"name": "no id", "temperature_celcius": 20}"#,
            )
            .await,
            StatusCode::BAD_REQUEST,
            vec!["sensor_id (path `deviceId`): missing"],
        ),
        (
            "a reading the dataset refuses (a time before any sensor)",
            push(
                &ngsi_url,
                Some(&ngsi_auth),
                json!([
                    ngsi("urn:ngsi-ld:sensor:aarhus-5", 20.0, "2026-11-30T11:00:00Z"),
                    ngsi("urn:ngsi-ld:sensor:aarhus-5", 20.0, "1970-01-02T00:00:00Z"),
                ])
                .to_string()
                .as_bytes(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            vec!["reading[1]", "nothing of the batch was stored"],
        ),
        (
            "not JSON",
            push(&flat_url, Some(&flat_auth), b"temperature=21.4").await,
            StatusCode::BAD_REQUEST,
            vec!["body: not JSON"],
        ),
        (
            "a non-JSON content type",
            push_typed(&flat_url, Some(&flat_auth), "text/plain", valid.as_bytes()).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec!["text/plain"],
        ),
        (
            "a body over the limit",
            push(
                &flat_url,
                Some(&flat_auth),
                Value::Array(vec![flat_object.clone(); 200])
                    .to_string()
                    .as_bytes(),
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            vec!["8192 bytes"],
        ),
        (
            "an unknown endpoint",
            push(
                &format!("{base}/ingest/os2iot/nope"),
                Some(&flat_auth),
                valid.as_bytes(),
            )
            .await,
            StatusCode::NOT_FOUND,
            vec!["nope"],
        ),
    ];
    for (what, got, status, parts) in refusals {
        assert_eq!(got.status, status, "{what}: {:?}", got.body);
        let error = got.error();
        for part in parts {
            assert!(error.contains(part), "{what}: `{part}` in {error:?}");
        }
        if status == StatusCode::UNAUTHORIZED {
            assert!(got.headers.contains_key("www-authenticate"), "{what}");
        }
        assert_eq!(
            count_readings(&mut admin, CLIMATE).await,
            stored,
            "{what}: nothing stored"
        );
    }

    // A body streamed without a length cannot get past the limit either.
    let chunks = (0..64).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 1024])))
    });
    let request = http::Request::post(&flat_url)
        .header("content-type", "application/json")
        .header("authorization", &flat_auth)
        .body(StreamBody::new(futures_stream(chunks)))
        .expect("a request");
    let got = exchange(request).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", got.body);

    // The push route takes only POST.
    let got = exchange(
        http::Request::get(&flat_url)
            .header("authorization", &flat_auth)
            .body(Full::new(Bytes::new()))
            .expect("a request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(count_readings(&mut admin, CLIMATE).await, stored);

    // Read back through the HTTP API: ids, values, times and places.
    let until = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let path = format!(
        "{base}/api/v1/datasets/{CLIMATE}/readings?from=2000-01-01T00:00:00Z&until={}",
        until
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    );
    let got = exchange(
        http::Request::get(&path)
            .header("authorization", format!("Bearer {analyst}"))
            .body(Full::new(Bytes::new()))
            .expect("a request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    let rows = got.json();
    let rows = rows.as_array().expect("an array of readings");
    assert_eq!(rows.len() as u64, stored);
    let row = |sensor: &str| -> Vec<&Value> {
        rows.iter().filter(|r| r["sensor_id"] == sensor).collect()
    };
    let first = row("elsys-ers-1");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["values"]["temperature"], 21.4);
    assert_eq!(first[0]["values"]["humidity"], 40.0);
    assert_eq!(
        (first[0]["lat"].as_f64(), first[0]["lon"].as_f64()),
        (Some(56.1529), Some(10.2039))
    );
    assert!(row("elsys-ers-2")[0].get("lat").is_none());
    // A numeric device id is kept as text.
    assert_eq!(row("4711")[0]["values"]["temperature"], 20.0);
    let ngsi_rows = row("urn:ngsi-ld:sensor:aarhus-2");
    let times: Vec<&str> = ngsi_rows.iter().filter_map(|r| r["at"].as_str()).collect();
    assert_eq!(times, ["2026-11-30T09:10:00Z", "2026-11-30T10:05:00Z"]);
    assert_eq!(row("urn:ngsi-ld:sensor:aarhus-1")[0]["lat"], 56.15);
    // Nothing of the refused bodies.
    for refused in ["urn:ngsi-ld:sensor:aarhus-3", "urn:ngsi-ld:sensor:aarhus-5"] {
        assert!(row(refused).is_empty(), "{refused} was refused");
    }

    node.running.shutdown().await.expect("clean shutdown");
}

fn futures_stream<I: Iterator + Send + 'static>(items: I) -> tokio_stream::Iter<I> {
    tokio_stream::iter(items)
}
