//! The MQTT door: one task per `[[ingest.mqtt]]` subscribes to its topic
//! filters on a broker and stores each message's readings through the
//! [`Pipeline`], mapped with the subscription's [`Mapping`] (the sensor id
//! may come from a topic segment).
//!
//! Delivery is at least once and nothing acknowledged is lost:
//! - the client keeps a **persistent session** (clean session off, a fixed
//!   client id) and subscribes with **QoS 1**, so the broker queues what
//!   arrives while the node is down and delivers it when it is back;
//! - acknowledgements are **manual**: a message's PUBACK is sent only
//!   after [`Pipeline::store`] returned `Ok`, i.e. once its readings are
//!   on disk. A message not acknowledged is delivered again by the broker
//!   when the session resumes. Redelivered readings land on the same
//!   (sensor, time) and replace themselves, so a mapping with a time path
//!   stores each reading once; one that takes the time of receipt may
//!   store a redelivered message twice;
//! - a message that can never be stored (not JSON, does not map, readings
//!   the dataset refuses, larger than `max_message_kib`) is logged at WARN
//!   (at most a few lines per subscription per minute) and **acknowledged
//!   anyway**, so one bad message cannot block the session for good. Its
//!   content is lost for Samvirke; the log line says why;
//! - a failure that is not the message's fault (the dataset is not
//!   published yet, the store fails) leaves the message unacknowledged and
//!   drops the connection, so the broker delivers it again after the
//!   reconnect.
//!
//! The connection is re-established with exponential backoff (1 s doubling
//! to 60 s). What one subscription can make the node hold is bounded: the
//! broker sends at most its in-flight window of unacknowledged QoS 1
//! messages (mosquitto: 20), messages wait for storage in a queue of
//! [`QUEUE`], and a message larger than `max_message_kib` is refused by
//! the client before it is buffered whole. TLS uses rustls with the
//! configured CA; the password comes from a file and is never logged.
//! Each task stops on shutdown: the message being stored is finished and
//! acknowledged, the rest stays with the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::MqttConfig;
use super::{Pipeline, PipelineError, Source};
use crate::clock::SharedClock;
use crate::data::IngestError;
use crate::telemetry::{RateLimitedLog, untrusted};

/// Messages received and waiting to be stored, per subscription.
pub const QUEUE: usize = 64;
/// Reconnect backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long shutdown waits for the message being stored and the
/// disconnect.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Warning lines per subscription per minute.
const WARNINGS_PER_MINUTE: u32 = 5;
/// Room for the topic and headers around a message's payload.
const PACKET_OVERHEAD: usize = 2 * 1024;

/// Why a subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT subscription `{name}`: ca_file {path}: {reason}")]
    Ca {
        name: String,
        path: String,
        reason: String,
    },
}

/// Whether each subscription currently holds its subscriptions on the
/// broker (connected and SUBACK received), by name; for status and tests.
#[derive(Debug, Clone, Default)]
pub struct MqttStates {
    states: Arc<HashMap<String, watch::Sender<bool>>>,
}

impl MqttStates {
    /// States for `configs`, all "not subscribed".
    pub fn new(configs: &[MqttConfig]) -> MqttStates {
        MqttStates {
            states: Arc::new(
                configs
                    .iter()
                    .map(|c| (c.name.clone(), watch::Sender::new(false)))
                    .collect(),
            ),
        }
    }

    /// A receiver that sees subscription `name` become subscribed (`true`)
    /// or lose its connection (`false`).
    pub fn subscribed(&self, name: &str) -> Option<watch::Receiver<bool>> {
        self.states.get(name).map(watch::Sender::subscribe)
    }

    fn sender(&self, name: &str) -> watch::Sender<bool> {
        self.states
            .get(name)
            .cloned()
            .unwrap_or_else(|| watch::Sender::new(false))
    }
}

/// Prepares every subscription (client options, TLS) and starts one task
/// each, stopping when `stop` is cancelled. A setup problem (an unreadable
/// CA file) fails here, before anything runs.
pub fn spawn_all(
    configs: &[MqttConfig],
    pipeline: &Arc<Pipeline>,
    clock: &SharedClock,
    states: &MqttStates,
    stop: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, MqttError> {
    let prepared = configs
        .iter()
        .map(|config| Ok((Arc::new(config.clone()), options(config)?)))
        .collect::<Result<Vec<_>, MqttError>>()?;
    Ok(prepared
        .into_iter()
        .map(|(config, options)| {
            let door = Door {
                state: states.sender(&config.name),
                config,
                pipeline: Arc::clone(pipeline),
                clock: Arc::clone(clock),
                warnings: Arc::new(RateLimitedLog::with_limit(WARNINGS_PER_MINUTE)),
            };
            tokio::spawn(door.run(options, stop.clone()))
        })
        .collect())
}

/// The client options for `config`: persistent session, manual acks,
/// bounded packets, TLS and credentials as configured.
fn options(config: &MqttConfig) -> Result<MqttOptions, MqttError> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive)
        .set_max_packet_size(config.max_message_bytes + PACKET_OVERHEAD, 64 * 1024);
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options.set_credentials(user.clone(), password.expose());
    } else if let Some(user) = &config.username {
        options.set_credentials(user.clone(), "");
    }
    if let Some(ca) = &config.ca_file {
        let ca_error = |reason: String| MqttError::Ca {
            name: config.name.clone(),
            path: ca.display().to_string(),
            reason,
        };
        let pem = std::fs::read(ca).map_err(|e| ca_error(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| ca_error(e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| ca_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("holds no PEM certificate".to_string()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(options)
}

/// One subscription's shared parts.
#[derive(Debug, Clone)]
struct Door {
    config: Arc<MqttConfig>,
    pipeline: Arc<Pipeline>,
    clock: SharedClock,
    state: watch::Sender<bool>,
    warnings: Arc<RateLimitedLog>,
}

impl Door {
    fn warn(&self, message: &str, detail: &str) {
        if let Some(suppressed) = self.warnings.admit(&self.config.name) {
            tracing::warn!(
                subscription = %self.config.name,
                detail = %untrusted(detail),
                suppressed,
                "MQTT ingest: {message}"
            );
        }
    }

    /// Polls the connection and hands messages to the storer until `stop`.
    async fn run(self, options: MqttOptions, stop: CancellationToken) {
        let (client, mut events) = AsyncClient::new(options, QUEUE);
        let (queue, received) = mpsc::channel::<Publish>(QUEUE);
        let (reconnect, mut reconnects) = mpsc::channel::<()>(1);
        let mut storer = tokio::spawn(self.clone().store_loop(
            received,
            client.clone(),
            reconnect,
            stop.clone(),
        ));
        let filters: Vec<SubscribeFilter> = self
            .config
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .collect();
        let mut backoff = MIN_BACKOFF;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                Some(()) = reconnects.recv() => {
                    // Drop the connection without acknowledging: the broker
                    // delivers the unacknowledged messages again.
                    self.state.send_replace(false);
                    events.clean();
                    if !pause(&mut backoff, &stop).await {
                        break;
                    }
                    continue;
                }
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = MIN_BACKOFF;
                    tracing::info!(
                        subscription = %self.config.name,
                        broker = %format!("{}:{}", self.config.host, self.config.port),
                        session_present = ack.session_present,
                        "MQTT ingest connected"
                    );
                    // Subscribing again on a resumed session is harmless
                    // and covers a broker that lost it.
                    if let Err(error) = client.subscribe_many(filters.clone()).await {
                        self.warn("could not subscribe", &error.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        self.state.send_replace(true);
                    } else {
                        self.warn(
                            "the broker refused a topic filter (check its access rules)",
                            &format!("{:?}", ack.return_codes),
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if queue.send(publish).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    self.state.send_replace(false);
                    self.warn(
                        &format!("connection failed; retrying in {} s", backoff.as_secs()),
                        &describe(&error),
                    );
                    if !pause(&mut backoff, &stop).await {
                        break;
                    }
                }
            }
        }
        // Shutdown: let the message being stored finish and its
        // acknowledgement go out, then say goodbye. Messages received but
        // not stored stay unacknowledged with the broker.
        drop(queue);
        let finish = async {
            loop {
                tokio::select! {
                    _ = &mut storer => break,
                    event = events.poll() => if event.is_err() { break },
                }
            }
            if client.disconnect().await.is_ok() {
                while let Ok(event) = events.poll().await {
                    if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, finish).await.is_err() {
            storer.abort();
        }
        self.state.send_replace(false);
        tracing::info!(subscription = %self.config.name, "MQTT ingest stopped");
    }

    /// Stores each received message and acknowledges it once stored (or
    /// once it is clear it can never be).
    async fn store_loop(
        self,
        mut received: mpsc::Receiver<Publish>,
        client: AsyncClient,
        reconnect: mpsc::Sender<()>,
        stop: CancellationToken,
    ) {
        let source = Source::Mqtt(self.config.name.clone());
        loop {
            let publish = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                next = received.recv() => match next {
                    Some(publish) => publish,
                    None => return,
                },
            };
            let topic = untrusted(&publish.topic);
            if publish.payload.len() > self.config.max_message_bytes {
                self.warn(
                    "message larger than max_message_kib dropped",
                    &format!("topic {topic}: {} bytes", publish.payload.len()),
                );
                let _ = client.ack(&publish).await;
                continue;
            }
            let readings = match self.config.mapping.map(
                &publish.payload,
                Some(&publish.topic),
                self.clock.now(),
            ) {
                Ok(readings) => readings,
                Err(error) => {
                    self.warn(
                        "message does not map; dropped",
                        &format!("topic {topic}: {error}"),
                    );
                    let _ = client.ack(&publish).await;
                    continue;
                }
            };
            match self
                .pipeline
                .store(&source, &self.config.dataset, readings)
                .await
            {
                Ok(_) => {
                    let _ = client.ack(&publish).await;
                }
                Err(PipelineError::Ingest(error @ IngestError::BadReading { .. })) => {
                    self.warn(
                        "message refused by the dataset; dropped",
                        &format!("topic {topic}: {error}"),
                    );
                    let _ = client.ack(&publish).await;
                }
                Err(error) => {
                    self.warn(
                        "message not stored; reconnecting so the broker delivers it again",
                        &error.to_string(),
                    );
                    // What is queued came over the connection being
                    // dropped; the broker delivers it again.
                    while received.try_recv().is_ok() {}
                    let _ = reconnect.try_send(());
                }
            }
        }
    }
}

/// Waits `backoff` (then doubles it, up to the maximum); `false` if the
/// node is stopping.
async fn pause(backoff: &mut Duration, stop: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?} (check username and password)")
        }
        other => other.to_string(),
    }
}
