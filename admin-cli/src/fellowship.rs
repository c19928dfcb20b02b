//! `samvirke partners` and `samvirke catalog`: who this node can ask, and
//! what the agreements in force let it see of each partner's catalog;
//! `samvirke catalog export` writes the catalog as DCAT-AP-DK JSON-LD for
//! open-data portals.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use samvirke_proto::v1::{self as pb, FellowshipCatalogRequest, ListPartnersRequest};
use serde_json::json;

use crate::api::{self, NodeArgs};
use crate::ask::outcome_word;
use crate::output::{self, ListFormat};

#[derive(Debug, Args)]
pub struct PartnersArgs {
    /// Also call each partner now and report whether it answers.
    #[arg(long)]
    probe: bool,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CatalogArgs {
    #[command(subcommand)]
    action: Option<CatalogCommand>,
    /// Only this fellowship's agreements (e.g. digit).
    #[arg(long)]
    fellowship: Option<String>,
    /// Text in a dataset's id, title, description or keywords (any case).
    #[arg(long)]
    text: Option<String>,
    /// Only datasets with this keyword.
    #[arg(long)]
    keyword: Option<String>,
    /// Only datasets of this kind: sensor, pilot or procurement.
    #[arg(long)]
    kind: Option<String>,
    /// Seconds partners have to answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=120))]
    deadline: u32,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    /// The node's local API.
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    node: String,
    /// A local API token for that node (role read). Required without a
    /// subcommand; optional here only so `catalog export` can have its own.
    #[arg(long, env = "SAMVIRKE_TOKEN", hide_env_values = true)]
    token: Option<crate::local::Token>,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Write the node's catalog as a document for open-data portals
    /// (DCAT-AP-DK JSON-LD, as GET /api/v1/catalog.jsonld serves it).
    Export(ExportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// DCAT-AP-DK 2.0 JSON-LD.
    Dcat,
}

#[derive(Debug, Args)]
struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Dcat)]
    format: ExportFormat,
    /// Also the partners' datasets the agreements in force let this node
    /// see, each under its own publisher (asks the partners).
    #[arg(long)]
    fellowship: bool,
    /// Seconds partners have to answer (with --fellowship).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=120))]
    deadline: u32,
    /// Write the document to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    api::block_on(async move {
        let mut client = args.node.connect().await?;
        let answer = client
            .export_catalog(pb::ExportCatalogRequest {
                format: match args.format {
                    ExportFormat::Dcat => "dcat".to_string(),
                },
                fellowship: args.fellowship,
                deadline_ms: args.deadline * 1000,
            })
            .await
            .map_err(|status| args.node.refused("export its catalog", &status))?
            .into_inner();
        for partner in &answer.unavailable {
            eprintln!(
                "samvirke: {} ({}) left out: {} {}",
                partner.name,
                partner.municipality,
                outcome_word(partner.outcome),
                partner.detail
            );
        }
        let mut document = answer.document;
        document.push('\n');
        match &args.out {
            Some(path) => crate::files::write(path, document.as_bytes())?,
            None => {
                let mut out = io::stdout().lock();
                output::finish_output(
                    out.write_all(document.as_bytes())
                        .and_then(|()| out.flush())
                        .map_err(Into::into),
                )?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn partners(args: PartnersArgs) -> anyhow::Result<ExitCode> {
    api::block_on(async move {
        let mut client = args.node.connect().await?;
        let partners = client
            .list_partners(ListPartnersRequest { probe: args.probe })
            .await
            .map_err(|status| args.node.refused("list its partners", &status))?
            .into_inner()
            .partners;
        let mut out = io::stdout().lock();
        let result = match args.format {
            ListFormat::Json => partners.iter().try_for_each(|p| {
                output::json_line(
                    &mut out,
                    &json!({
                        "municipality": p.municipality,
                        "name": p.name,
                        "endpoint": p.endpoint,
                        "fellowships": p.fellowships,
                        "agreements_as_consumer": p.agreements_as_consumer,
                        "agreements_as_provider": p.agreements_as_provider,
                        "reachable": if args.probe { json!(p.reachable) } else { json!(null) },
                        "latency_ms": if args.probe { json!(p.latency_ms) } else { json!(null) },
                    }),
                )
            }),
            ListFormat::Table => {
                let mut headers = vec![
                    "municipality",
                    "name",
                    "fellowships",
                    "we may ask",
                    "may ask us",
                    "endpoint",
                ];
                if args.probe {
                    headers.extend(["reachable", "latency"]);
                }
                let rows: Vec<Vec<String>> = partners
                    .iter()
                    .map(|p| {
                        let mut row = vec![
                            p.municipality.to_string(),
                            p.name.clone(),
                            p.fellowships.join(","),
                            format!("{} agreements", p.agreements_as_consumer),
                            format!("{} agreements", p.agreements_as_provider),
                            p.endpoint.clone(),
                        ];
                        if args.probe {
                            row.push(output::cut(&p.reachable, 60));
                            row.push(if p.reachable == "ok" {
                                format!("{} ms", p.latency_ms)
                            } else {
                                String::new()
                            });
                        }
                        row
                    })
                    .collect();
                let right = headers
                    .iter()
                    .map(|h| *h == "municipality" || *h == "latency")
                    .collect();
                output::print_table(&mut out, &headers, right, &rows)
            }
        };
        output::finish_output(result.map_err(Into::into))?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn catalog(args: CatalogArgs) -> anyhow::Result<ExitCode> {
    let mut args = args;
    if let Some(CatalogCommand::Export(export_args)) = args.action.take() {
        return export(export_args);
    }
    let Some(token) = args.token.clone() else {
        anyhow::bail!("catalog: --token (or SAMVIRKE_TOKEN) is required");
    };
    let node = NodeArgs {
        node: args.node.clone(),
        token,
    };
    api::block_on(async move {
        let mut client = node.connect().await?;
        let response = client
            .fellowship_catalog(FellowshipCatalogRequest {
                fellowship: args.fellowship.clone().unwrap_or_default(),
                search: Some(pb::CatalogSearch {
                    text: args.text.clone().unwrap_or_default(),
                    keyword: args.keyword.clone().unwrap_or_default(),
                    theme: String::new(),
                    kind: args.kind.clone().unwrap_or_default(),
                }),
                deadline_ms: args.deadline * 1000,
            })
            .await
            .map_err(|status| node.refused("list the fellowship catalog", &status))?
            .into_inner();
        let mut out = io::stdout().lock();
        let result: io::Result<()> = match args.format {
            ListFormat::Json => response.datasets.iter().try_for_each(|v| {
                let mut value = v
                    .dataset
                    .as_ref()
                    .map(output::dataset_json)
                    .unwrap_or_default();
                if let serde_json::Value::Object(fields) = &mut value {
                    fields.insert("provider".into(), json!(v.provider));
                    fields.insert("provider_name".into(), json!(v.provider_name));
                    fields.insert("fellowship".into(), json!(v.fellowship));
                    fields.insert("agreement".into(), json!(v.agreement_id));
                    fields.insert("operations".into(), json!(v.operations));
                    fields.insert("terms".into(), json!(v.terms));
                    fields.insert(
                        "valid_until".into(),
                        json!(output::show_timestamp(v.valid_until.as_ref())),
                    );
                }
                output::json_line(&mut out, &value)
            }),
            ListFormat::Table => {
                let headers = [
                    "provider",
                    "name",
                    "dataset",
                    "kind",
                    "operations",
                    "agreement",
                    "until",
                    "terms",
                ];
                let rows: Vec<Vec<String>> = response
                    .datasets
                    .iter()
                    .map(|v| {
                        let dataset = v.dataset.clone().unwrap_or_default();
                        vec![
                            v.provider.to_string(),
                            v.provider_name.clone(),
                            dataset.id,
                            dataset.kind,
                            v.operations.join(","),
                            v.agreement_id.clone(),
                            output::show_timestamp(v.valid_until.as_ref()),
                            output::cut(&v.terms, 60),
                        ]
                    })
                    .collect();
                let right = headers.iter().map(|h| *h == "provider").collect();
                output::print_table(&mut out, &headers, right, &rows)
            }
        };
        output::finish_output(result.map_err(Into::into))?;
        let mut err = io::stderr();
        for status in &response.unavailable {
            let _ = writeln!(
                err,
                "{} {} (agreement {}): {}: {}",
                status.municipality,
                status.name,
                status.agreement_id,
                outcome_word(status.outcome),
                status.detail
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
