//! The audit log for operators and auditors: its last entries, and
//! exports of a range closed by a signed checkpoint, which
//! `samvirke audit verify` checks offline. Both need the `admin` role, and
//! both are themselves recorded.

use samvirke_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::LocalService;
use super::auth::Role;

/// Entries a tail returns at most.
pub const MAX_TAIL: u32 = 1_000;
/// Bytes per export chunk.
const EXPORT_CHUNK: usize = 256 * 1024;

/// The stream of an export.
pub type ExportStream = ReceiverStream<Result<pb::AuditExportChunk, Status>>;

impl LocalService {
    pub(super) async fn tail_audit_rpc(
        &self,
        request: Request<pb::TailAuditRequest>,
    ) -> Result<Response<pb::TailAuditResponse>, Status> {
        const METHOD: &str = "samvirke.v1.Local/TailAudit";
        let (caller, _permit) = self.admit(&request, Role::Admin, METHOD).await?;
        let count = match request.get_ref().count {
            0 => 20,
            n => n.min(MAX_TAIL),
        };
        self.record(&caller, METHOD, "allowed", format!("last {count} entries"))
            .await?;
        let audit = std::sync::Arc::clone(&self.audit);
        let (head, lines) = tokio::task::spawn_blocking(move || {
            let head = audit.length();
            audit
                .tail_lines(u64::from(count))
                .map(|lines| (head, lines))
        })
        .await
        .map_err(|e| Status::internal(format!("audit task failed: {e}")))??;
        Ok(Response::new(pb::TailAuditResponse {
            entries: lines
                .into_iter()
                .map(|line| String::from_utf8_lossy(&line).into_owned())
                .collect(),
            head,
        }))
    }

    pub(super) async fn export_audit_rpc(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        const METHOD: &str = "samvirke.v1.Local/ExportAudit";
        let (caller, permit) = self.admit(&request, Role::Admin, METHOD).await?;
        let ask = request.into_inner();
        let to = if ask.to == 0 { u64::MAX } else { ask.to };
        self.record(
            &caller,
            METHOD,
            "allowed",
            format!(
                "entries {}..{}",
                ask.from,
                if ask.to == 0 {
                    "last".to_string()
                } else {
                    ask.to.to_string()
                }
            ),
        )
        .await?;
        let audit = std::sync::Arc::clone(&self.audit);
        let export = tokio::task::spawn_blocking(move || audit.export(ask.from, to))
            .await
            .map_err(|e| Status::internal(format!("audit task failed: {e}")))??;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            for chunk in export.chunks(EXPORT_CHUNK) {
                let chunk = pb::AuditExportChunk {
                    data: chunk.to_vec(),
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
