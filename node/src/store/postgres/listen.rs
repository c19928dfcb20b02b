//! Following other processes' changes: one dedicated connection that
//! `LISTEN`s on [`CHANGES_CHANNEL`] and passes each notified keyspace on.
//!
//! A notification is only delivered while the connection is up, so after
//! every (re)connect every announced keyspace is passed on once as
//! changed: whatever happened while this process was not listening is
//! then re-read, never missed.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::schema::CHANGES_CHANNEL;
use crate::store::Keyspace;

/// The keyspaces the database announces changes of.
pub const ANNOUNCED: [Keyspace; 4] = [
    Keyspace::Rosters,
    Keyspace::Agreements,
    Keyspace::Quarantine,
    Keyspace::Datasets,
];

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Listens until `stop`, reconnecting with backoff.
pub async fn follow_changes(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    changes: tokio::sync::broadcast::Sender<Keyspace>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let outcome = tokio::select! {
            outcome = listen_once(&config, tls.clone(), &changes, &mut backoff) => outcome,
            () = stop.cancelled() => return,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                "lost the database change feed; other node processes' governance and catalog \
                 changes are picked up when it is back");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of listening; returns when it drops.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    changes: &tokio::sync::broadcast::Sender<Keyspace>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            pump(client, connection, changes, backoff).await
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            pump(client, connection, changes, backoff).await
        }
    }
}

async fn pump<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    changes: &tokio::sync::broadcast::Sender<Keyspace>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANGES_CHANNEL}");
    {
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        // The connection must be polled for the LISTEN to complete.
        loop {
            tokio::select! {
                done = &mut listen => { done?; break; }
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
    }
    *backoff = Duration::from_millis(250);
    for space in ANNOUNCED {
        let _ = changes.send(space);
    }
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(note) = message?
            && let Some(space) = Keyspace::from_name(note.payload())
        {
            let _ = changes.send(space);
        }
    }
    // The client lives as long as the connection is read.
    drop(client);
    Ok(())
}
