//! Chapter 4 of the demo: proof. The receipt Aarhus signed for its answer
//! to Vejle is saved as a file and checked offline against the roster
//! file (`samvirke receipts show --out`, `samvirke receipts verify`); one
//! changed byte and it no longer holds. Aarhus's operator exports its
//! audit log (`samvirke audit export`) and an auditor checks it offline
//! with Aarhus's public key (`samvirke audit verify`); one changed byte and
//! the check names the entry.

use std::path::Path;

use anyhow::Context;
use samvirke_node::devnet::DevFederation;
use samvirke_node::identity::signing_key_text;
use samvirke_node::proof::receipt;
use samvirke_proto::v1::{ExportAuditRequest, GetReceiptRequest};

use super::Story;
use super::analyst::Asked;
use super::governance::Governed;
use crate::local;

pub async fn show(
    federation: &DevFederation,
    governed: &Governed,
    asked: &Asked,
    dir: &Path,
    story: &mut Story,
) -> anyhow::Result<()> {
    let node = |code: u32| {
        federation
            .nodes
            .iter()
            .find(|n| n.running.identity.municipality_code == code)
            .with_context(|| format!("node {code}"))
    };
    let (aarhus, vejle) = (node(751)?, node(630)?);

    // The receipt, as Vejle keeps it.
    let mut api = local::connect(&vejle.running.local_endpoint(), &vejle.admin_token).await?;
    let kept = api
        .get_receipt(GetReceiptRequest {
            id: asked.aarhus_receipt.clone(),
        })
        .await
        .context("Vejle's receipt from Aarhus")?
        .into_inner();
    let file = dir.join("receipt.json");
    std::fs::write(&file, receipt::to_file(&kept)).context("writing the receipt")?;
    println!(
        "  samvirke receipts show {} --out receipt.json   (at Vejle)",
        asked.aarhus_receipt
    );
    println!(
        "  samvirke receipts verify receipt.json --roster {}   (anywhere, offline)",
        governed
            .roster_file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    match crate::receipts::verify_file(&file, &governed.roster_file) {
        Ok(verdict) => story.expected(verdict),
        Err(error) => story.unexpected(format!("{error:#}")),
    }
    // One byte changed: the row count, 1 more or less.
    let text = std::fs::read_to_string(&file)?;
    let tampered = text.replacen("\"rows\": ", "\"rows\": 1", 1);
    std::fs::write(&file, tampered)?;
    match crate::receipts::verify_file(&file, &governed.roster_file) {
        Ok(verdict) => story.unexpected(format!("a changed receipt verified: {verdict}")),
        Err(error) => story.expected(format!("with the row count changed: {error:#}")),
    }

    // Aarhus's audit log, exported and checked offline.
    let mut admin = local::connect(&aarhus.running.local_endpoint(), &aarhus.admin_token).await?;
    let mut stream = admin
        .export_audit(ExportAuditRequest { from: 1, to: 0 })
        .await
        .context("exporting Aarhus's audit log")?
        .into_inner();
    let mut export = Vec::new();
    while let Some(chunk) = stream.message().await? {
        export.extend_from_slice(&chunk.data);
    }
    let file = dir.join("aarhus-audit.jsonl");
    std::fs::write(&file, &export).context("writing the audit export")?;
    let lines: Vec<&str> = std::str::from_utf8(&export)
        .unwrap_or_default()
        .lines()
        .collect();
    let count = |event: &str, outcome: &str| {
        lines
            .iter()
            .filter(|l| {
                l.contains(&format!("\"event\":\"{event}\""))
                    && l.contains(&format!("\"outcome\":\"{outcome}\""))
            })
            .count()
    };
    println!();
    println!("  samvirke audit export aarhus-audit.jsonl   (at Aarhus, admin token)");
    println!(
        "    {} entries: {} peer calls allowed, {} refused, {} answers streamed, {} governance \
         changes from partners, {} operator actions; then a checkpoint Aarhus signed",
        lines.len().saturating_sub(1),
        count("peer_call", "allowed"),
        count("peer_call", "denied"),
        count("peer_answer", "completed"),
        count("governance", "accepted"),
        lines
            .iter()
            .filter(|l| l.contains("\"event\":\"admin\""))
            .count()
    );
    let key = signing_key_text(&aarhus.running.identity.verifying_key());
    println!(
        "  samvirke audit verify aarhus-audit.jsonl --key {}   (anywhere, offline)",
        super::abbreviate(&key)
    );
    match crate::audit::verify_file(&file, &key) {
        Ok(verdict) => story.expected(verdict),
        Err(error) => story.unexpected(format!("{error:#}")),
    }
    // One byte changed in the middle of the log.
    let mut tampered = export.clone();
    let middle = tampered.len() / 2;
    let at = (middle..tampered.len())
        .find(|&i| tampered[i].is_ascii_digit())
        .unwrap_or(middle);
    tampered[at] = if tampered[at] == b'9' {
        b'8'
    } else {
        tampered[at] + 1
    };
    std::fs::write(&file, &tampered)?;
    match crate::audit::verify_file(&file, &key) {
        Ok(verdict) => story.unexpected(format!("a changed audit log verified: {verdict}")),
        Err(error) => story.expected(format!("with one digit changed: {error:#}")),
    }
    Ok(())
}
