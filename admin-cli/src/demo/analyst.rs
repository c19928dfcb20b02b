//! Chapter 3 of the demo: an analyst at Vejle asks the fellowship through
//! Vejle's own node, exactly as `samvirke ask`, `samvirke partners` and
//! `samvirke catalog` do (the same calls, printed by the same code). Vejle's
//! node signs each request, sends it to every partner whose agreement
//! covers it over a channel pinned to the partner's certificate in the
//! roster, and streams the answers back with a status per partner.

use std::io;

use anyhow::Context;
use samvirke_node::devnet::DevFederation;
use samvirke_proto::v1::{
    self as pb, FellowshipCatalogRequest, ListPartnersRequest, PartnerOutcome, ask_request,
};

use super::Story;
use super::data::PROCUREMENTS;
use super::governance::{FELLOWSHIP, Governed};
use crate::api::NodeArgs;
use crate::ask::{Answered, AskFormat, RowKind, outcome_word, print_answer};
use crate::local;
use crate::output;

/// What the analyst's chapter leaves for the proof chapter.
#[derive(Debug)]
pub struct Asked {
    /// A receipt Aarhus signed for an answer to Vejle.
    pub aarhus_receipt: String,
}

fn status_of(answered: &Answered, code: u32, dataset: &str) -> Option<pb::PartnerStatus> {
    answered
        .statuses
        .iter()
        .find(|s| s.municipality == code && (dataset.is_empty() || s.dataset_id == dataset))
        .cloned()
}

fn outcome_is(status: &Option<pb::PartnerStatus>, outcome: PartnerOutcome) -> bool {
    status.as_ref().is_some_and(|s| s.outcome == outcome as i32)
}

fn describe(status: &Option<pb::PartnerStatus>) -> String {
    match status {
        Some(s) => format!(
            "{}{}",
            outcome_word(s.outcome),
            if s.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", s.detail)
            }
        ),
        None => "no status".to_string(),
    }
}

/// Asks `question` from Vejle and prints the answer as `samvirke ask` does.
async fn ask(
    node: &NodeArgs,
    question: ask_request::Question,
    datasets: pb::DatasetSelector,
    target: pb::AskTarget,
    kind: RowKind,
) -> anyhow::Result<Answered> {
    let mut client = node.connect().await?;
    let mut stream = client
        .ask(pb::AskRequest {
            question: Some(question),
            datasets: Some(datasets),
            target: Some(target),
            deadline_ms: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|status| node.refused("ask the fellowship", &status))?
        .into_inner();
    let stdout = io::stdout();
    let mut out = Indented::new(stdout.lock());
    let mut err = Indented::new(io::stderr());
    print_answer(
        &mut stream,
        AskFormat::Table,
        kind,
        &mut out,
        &mut err,
        node,
    )
    .await
}

/// Indents every line written by four spaces, so the printed answers sit
/// inside the story.
struct Indented<W: io::Write> {
    out: W,
    at_line_start: bool,
}

impl<W: io::Write> Indented<W> {
    fn new(out: W) -> Self {
        Indented {
            out,
            at_line_start: true,
        }
    }
}

impl<W: io::Write> io::Write for Indented<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start && line != b"\n" {
                self.out.write_all(b"    ")?;
            }
            self.out.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn fellowship() -> pb::AskTarget {
    pb::AskTarget {
        fellowship: FELLOWSHIP.to_string(),
        ..Default::default()
    }
}

fn keyword(keyword: &str) -> pb::DatasetSelector {
    pb::DatasetSelector {
        keyword: keyword.to_string(),
        ..Default::default()
    }
}

pub async fn show(
    federation: &mut DevFederation,
    governed: &Governed,
    story: &mut Story,
) -> anyhow::Result<Asked> {
    let vejle = federation
        .nodes
        .iter()
        .find(|n| n.running.identity.municipality_code == 630)
        .context("Vejle's node")?;
    let node = NodeArgs {
        node: vejle.running.local_endpoint(),
        token: vejle.admin_token.parse().map_err(anyhow::Error::msg)?,
    };
    let mut api = local::connect(&node.node, vejle.admin_token.as_str()).await?;

    println!("  samvirke partners --probe   (whom can Vejle ask, under how many agreements?)");
    let partners = api
        .list_partners(ListPartnersRequest { probe: true })
        .await?
        .into_inner()
        .partners;
    for p in &partners {
        println!(
            "    {} {:<18} may ask it under {} agreement(s), it may ask Vejle under {}; answers \
             hello: {} ({} ms)",
            p.municipality,
            p.name,
            p.agreements_as_consumer,
            p.agreements_as_provider,
            p.reachable,
            p.latency_ms
        );
    }
    story.check(
        partners.len() == 2 && partners.iter().all(|p| p.reachable == "ok"),
        "Vejle's partners are Aarhus and Silkeborg, both reachable; Albertslund is no partner",
    );

    println!();
    println!("  samvirke catalog   (what do the agreements let Vejle see?)");
    let catalog = api
        .fellowship_catalog(FellowshipCatalogRequest::default())
        .await?
        .into_inner();
    for v in &catalog.datasets {
        let dataset = v.dataset.clone().unwrap_or_default();
        println!(
            "    {:<28} from {:<16} {:<22} {}",
            dataset.id,
            v.provider_name,
            v.operations.join(", "),
            if v.terms.is_empty() {
                String::new()
            } else {
                format!("({})", v.terms)
            }
        );
    }
    story.check(
        catalog.datasets.len() == 4 && catalog.unavailable.is_empty(),
        format!(
            "Vejle sees 4 partner datasets: Aarhus's air quality (A), Silkeborg's air quality \
             (B), Aarhus's pilots and procurements (C); none of their other datasets ({} shown)",
            catalog.datasets.len()
        ),
    );

    let (from, until) = governed.period;
    let pm25_daily = |from, until| {
        ask_request::Question::Readings(pb::ReadingQuery {
            from: Some(output::timestamp(from)),
            until: Some(output::timestamp(until)),
            measures: vec!["pm2_5".to_string()],
            bucket: "1d".to_string(),
            ..Default::default()
        })
    };
    println!();
    println!(
        "  samvirke ask readings --fellowship {FELLOWSHIP} --keyword air-quality --measure pm2_5 \
         --from {} --until {} --bucket 1d",
        from.date(),
        until.date()
    );
    println!("  (daily average PM2.5 in each municipality, and over the whole fellowship)");
    let first = ask(
        &node,
        pm25_daily(from, until),
        keyword("air-quality"),
        fellowship(),
        RowKind::Buckets,
    )
    .await?;
    let aarhus = status_of(&first, 751, "aarhus-air-quality");
    let silkeborg = status_of(&first, 740, "silkeborg-air-quality");
    let own = status_of(&first, 630, "vejle-air-quality");
    let under = |status: &Option<pb::PartnerStatus>, agreement: &str| {
        status.as_ref().is_some_and(|s| s.agreement_id == agreement)
    };
    story.check(
        [&aarhus, &silkeborg, &own]
            .iter()
            .all(|s| outcome_is(s, PartnerOutcome::Ok))
            && under(&aarhus, &governed.aarhus_air)
            && under(&silkeborg, &governed.silkeborg_air),
        format!(
            "Aarhus (under A, on its grid), Silkeborg (under B) and Vejle's own data answered: \
             {}; {}; {}",
            describe(&aarhus),
            describe(&silkeborg),
            describe(&own)
        ),
    );
    let combined_ok = first.combined.len() == 2
        && first
            .combined
            .iter()
            .all(|b| b.municipalities == [630, 740, 751] && b.count > 0);
    story.check(
        combined_ok,
        "the fellowship figures combine the three municipalities' sums and counts per day (an \
         average of all readings, not an average of averages)",
    );
    let aarhus_receipt = aarhus
        .as_ref()
        .map(|s| s.receipt_id.clone())
        .unwrap_or_default();
    story.check(
        !aarhus_receipt.is_empty(),
        format!("Aarhus's answer came with a signed receipt ({aarhus_receipt}), kept by Vejle"),
    );

    // Silkeborg's node goes down; the question still gets its answer.
    let at = federation
        .nodes
        .iter()
        .position(|n| n.running.identity.municipality_code == 740)
        .context("Silkeborg's node")?;
    let stopped = federation.nodes.remove(at);
    stopped.running.shutdown().await?;
    println!();
    println!("  Silkeborg's node is stopped (maintenance). The same question again:");
    let second = ask(
        &node,
        pm25_daily(from, until),
        keyword("air-quality"),
        fellowship(),
        RowKind::Buckets,
    )
    .await?;
    let silkeborg = status_of(&second, 740, "");
    story.check(
        outcome_is(&silkeborg, PartnerOutcome::Unavailable)
            && outcome_is(&status_of(&second, 751, ""), PartnerOutcome::Ok),
        format!(
            "a partial answer: Aarhus and Vejle answer, Silkeborg is reported unavailable and \
             left out of the combined figures ({})",
            describe(&silkeborg)
        ),
    );

    println!();
    println!("  samvirke ask pilots --partner 751   (what did Aarhus learn from its pilots?)");
    let pilots = ask(
        &node,
        ask_request::Question::Pilots(pb::PilotFilter::default()),
        pb::DatasetSelector::default(),
        pb::AskTarget {
            partners: vec![751],
            ..Default::default()
        },
        RowKind::Pilots,
    )
    .await?;
    let pilots_status = status_of(&pilots, 751, "");
    story.check(
        outcome_is(&pilots_status, PartnerOutcome::Ok)
            && under(&pilots_status, &governed.aarhus_records)
            && pilots_status.as_ref().is_some_and(|s| s.rows > 0),
        "Aarhus's pilot results arrive under C, their budget_dkk column empty: the agreement \
         withholds it",
    );

    println!();
    println!(
        "  samvirke ask procurements --partner 751 --supplier KMD   (joint tenders won by KMD)"
    );
    let procurements = ask(
        &node,
        ask_request::Question::Procurements(pb::ProcurementFilter {
            dataset_id: PROCUREMENTS.to_string(),
            supplier: "KMD".to_string(),
            ..Default::default()
        }),
        pb::DatasetSelector::default(),
        pb::AskTarget {
            partners: vec![751],
            ..Default::default()
        },
        RowKind::Procurements,
    )
    .await?;
    story.check(
        outcome_is(&status_of(&procurements, 751, ""), PartnerOutcome::Ok),
        "Aarhus's procurement outcomes arrive under C",
    );

    println!();
    println!(
        "  samvirke ask readings --partner 751 --dataset aarhus-air-quality ...   (raw readings, \
         which A does not allow)"
    );
    let raw = ask(
        &node,
        ask_request::Question::Readings(pb::ReadingQuery {
            from: Some(output::timestamp(from)),
            until: Some(output::timestamp(until)),
            ..Default::default()
        }),
        pb::DatasetSelector {
            ids: vec!["aarhus-air-quality".to_string()],
            ..Default::default()
        },
        pb::AskTarget {
            partners: vec![751],
            ..Default::default()
        },
        RowKind::Readings,
    )
    .await?;
    let refused = status_of(&raw, 751, "");
    story.check(
        outcome_is(&refused, PartnerOutcome::NotEntitled),
        format!(
            "not asked at all: Vejle's node knows agreement A allows only aggregates ({})",
            describe(&refused)
        ),
    );
    Ok(Asked { aarhus_receipt })
}
