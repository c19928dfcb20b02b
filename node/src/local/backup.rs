//! `Local/Backup`: a consistent snapshot of the whole store, streamed to an
//! operator's `samvirke-node backup` (see [`crate::backup`] for how it is
//! taken and what it holds). Admin only, recorded in the audit log before
//! the snapshot is taken (so the snapshot holds its own record), one at a
//! time.

use std::sync::Arc;

use samvirke_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::LocalService;
use super::auth::Role;
use crate::backup::{self, BackupError};

/// The stream of a backup.
pub type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

impl LocalService {
    pub(super) async fn backup_rpc(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        const METHOD: &str = "samvirke.v1.Local/Backup";
        let (caller, permit) = self.admit(&request, Role::Admin, METHOD).await?;
        let dir = self.backup_dir.clone().ok_or(BackupError::Unavailable)?;
        let running = Arc::clone(&self.backup_running)
            .try_lock_owned()
            .map_err(|_| BackupError::Busy)?;
        self.record(&caller, METHOD, "allowed", "store snapshot".to_string())
            .await?;
        let store = Arc::clone(&self.store);
        let identity = Arc::clone(&self.identity);
        let taken_at = self.clock.now();
        let (file, summary) = tokio::task::spawn_blocking(move || {
            let spooled = backup::spool(store.as_ref(), &identity, taken_at, &dir);
            spooled.map(|(file, summary)| {
                let proto = backup::summary_to_proto(&summary, &identity, taken_at);
                (file, proto)
            })
        })
        .await
        .map_err(|e| Status::internal(format!("backup task failed: {e}")))??;
        tracing::info!(
            token = %caller.name,
            bytes = summary.bytes,
            audit_entries = summary.audit_entries,
            "store snapshot taken for a backup"
        );
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        // The spool is read on a blocking thread and sent at the client's
        // pace; writes to the store are no longer held up by then.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = running;
            let mut file = file;
            let first = pb::BackupChunk {
                part: Some(pb::backup_chunk::Part::Summary(summary)),
            };
            if sender.blocking_send(Ok(first)).is_err() {
                return;
            }
            loop {
                let mut chunk = vec![0u8; backup::CHUNK];
                let read = match std::io::Read::read(&mut file, &mut chunk) {
                    Ok(0) => return,
                    Ok(read) => read,
                    Err(error) => {
                        tracing::error!(%error, "cannot read the backup spool file");
                        let _ = sender.blocking_send(Err(Status::internal(
                            "the node cannot read its backup spool; its operator has the details",
                        )));
                        return;
                    }
                };
                chunk.truncate(read);
                let message = pb::BackupChunk {
                    part: Some(pb::backup_chunk::Part::Data(chunk)),
                };
                if sender.blocking_send(Ok(message)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
