//! One question to the fellowship, start to end.
//!
//! The question is checked and recorded in the audit log (which local
//! token asked what of whom) before any partner is called. Then every
//! target partner gets a task of its own: it learns what its agreements
//! let this node see (its catalogs, cached), picks the datasets the
//! question is about and the agreement to ask each under
//! ([`super::route`]), and asks them side by side. This node's own data,
//! when the question goes to a whole fellowship, is one more source. Rows
//! are passed on as they arrive, tagged with their source; everything runs
//! under one deadline, so a slow or dead partner holds no one back past
//! it. Then come the combined aggregates, one status per partner and
//! dataset (in code order), a summary, and the answer's audit entry.
//!
//! Memory is bounded: events wait in a channel of [`EVENTS_IN_FLIGHT`]
//! (a slow reader slows the partners' streams through flow control rather
//! than filling memory), each source holds one chunk at a time, and
//! combined aggregates are bounded by [`super::combine::MAX_CELLS`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use samvirke_proto::v1::{self as pb, PartnerOutcome, ask_event, ask_request};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::combine::{CombineBudget, Combined, SourceBuckets};
use super::partner::{AsyncChunkSink, Failure, Tally};
use super::route::{self, Kind};
use super::{
    DEFAULT_DEADLINE, FederateError, Federation, MAX_DATASETS_PER_PARTNER, MAX_DEADLINE,
    MAX_IN_FLIGHT, invalid,
};
use crate::audit::Entry;
use crate::audit::chain::bounded;
use crate::governance::Operation;
use crate::governance::registry::{Partner, UsableAgreement};
use crate::plane::answer;
use crate::plane::disclosure::AnswerPlan;
use crate::proof::{digest_text, message_digest};
use crate::wire;

/// Events waiting for the analyst.
pub const EVENTS_IN_FLIGHT: usize = 16;

/// The answer stream of a question.
pub type AskStream = ReceiverStream<Result<pb::AskEvent, Status>>;

/// What is asked, checked.
#[derive(Debug, Clone)]
enum Body {
    Catalog(pb::CatalogSearch),
    Readings(pb::ReadingQuery),
    Pilots(pb::PilotFilter),
    Procurements(pb::ProcurementFilter),
}

#[derive(Debug, Clone)]
struct Question {
    kind: Kind,
    body: Body,
    selector: pb::DatasetSelector,
    /// Combine aggregates over all sensors across sources, within this
    /// budget.
    combine: Option<Arc<CombineBudget>>,
}

fn check(request: &pb::AskRequest) -> Result<(Question, Duration, Option<Uuid>), FederateError> {
    let mut selector = request.datasets.clone().unwrap_or_default();
    let (kind, body, combine) = match request.question.clone() {
        None => {
            return Err(invalid(
                "question",
                "missing: ask a catalog search, readings, pilots or procurements",
            ));
        }
        Some(ask_request::Question::Catalog(search)) => {
            (Kind::Catalog, Body::Catalog(search), None)
        }
        Some(ask_request::Question::Readings(query)) => {
            // The query is checked as it will be asked of each dataset.
            let mut probe = query.clone();
            if probe.dataset_id.is_empty() {
                probe.dataset_id = "any".to_string();
            } else {
                selector.ids.push(query.dataset_id.clone());
            }
            wire::query_from_proto(probe).map_err(|e| invalid("readings", e.to_string()))?;
            let aggregate = !query.bucket.is_empty();
            let combine = (aggregate && query.grouping == pb::Grouping::AllSensors as i32)
                .then(|| CombineBudget::new(&query.measures));
            (Kind::Readings { aggregate }, Body::Readings(query), combine)
        }
        Some(ask_request::Question::Pilots(filter)) => {
            if !filter.dataset_id.is_empty() {
                selector.ids.push(filter.dataset_id.clone());
            }
            (Kind::Pilots, Body::Pilots(filter), None)
        }
        Some(ask_request::Question::Procurements(filter)) => {
            if !filter.dataset_id.is_empty() {
                selector.ids.push(filter.dataset_id.clone());
            }
            (Kind::Procurements, Body::Procurements(filter), None)
        }
    };
    let deadline = match request.deadline_ms {
        0 => DEFAULT_DEADLINE,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if deadline > MAX_DEADLINE {
        return Err(invalid(
            "deadline_ms",
            format!(
                "{} ms is more than the {} s allowed",
                request.deadline_ms,
                MAX_DEADLINE.as_secs()
            ),
        ));
    }
    let agreement = if request.agreement_id.is_empty() {
        None
    } else {
        Some(Uuid::parse_str(&request.agreement_id).map_err(|_| {
            invalid(
                "agreement_id",
                format!(
                    "`{}` is not a UUID",
                    crate::telemetry::untrusted(&request.agreement_id)
                ),
            )
        })?)
    };
    Ok((
        Question {
            kind,
            body,
            selector,
            combine,
        },
        deadline,
        agreement,
    ))
}

/// Where events go, and the turns sub-questions take.
#[derive(Debug, Clone)]
struct Out {
    events: mpsc::Sender<Result<pb::AskEvent, Status>>,
    turns: Arc<tokio::sync::Semaphore>,
}

impl Out {
    async fn send(&self, event: ask_event::Event) -> bool {
        self.events
            .send(Ok(pb::AskEvent { event: Some(event) }))
            .await
            .is_ok()
    }
}

/// A source's chunks, passed on as rows (and kept for combining).
struct RowsSink {
    out: Out,
    source: pb::AskSource,
    buckets: Option<SourceBuckets>,
}

impl AsyncChunkSink for RowsSink {
    async fn take(&mut self, chunk: pb::ReadingChunk) -> bool {
        if let Some(buckets) = self.buckets.as_mut() {
            buckets.add(&chunk.buckets);
        }
        if chunk.readings.is_empty() && chunk.buckets.is_empty() && chunk.terms.is_none() {
            return true;
        }
        self.out
            .send(ask_event::Event::Rows(pb::AskRows {
                source: Some(self.source.clone()),
                readings: chunk.readings,
                buckets: chunk.buckets,
                terms: chunk.terms,
                ..Default::default()
            }))
            .await
    }
}

/// How one source answered.
struct Outcome {
    status: pb::PartnerStatus,
    /// Its buckets, when it answered in full and they are to be combined.
    buckets: Option<SourceBuckets>,
}

fn status(source: &pb::AskSource, outcome: PartnerOutcome, detail: String) -> pb::PartnerStatus {
    pb::PartnerStatus {
        municipality: source.municipality,
        name: source.name.clone(),
        outcome: outcome as i32,
        detail,
        dataset_id: source.dataset_id.clone(),
        agreement_id: source.agreement_id.clone(),
        ..Default::default()
    }
}

fn millis(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_millis()).unwrap_or(u32::MAX)
}

impl Federation {
    /// Asks the question in `request` on behalf of local token `token`,
    /// holding `permit` (the call's place under the local limits) until
    /// the answer ends.
    pub async fn ask(
        self: &Arc<Self>,
        request: pb::AskRequest,
        token: &str,
        permit: impl Send + 'static,
    ) -> Result<AskStream, FederateError> {
        let (question, deadline, only) = check(&request)?;
        let target = request.target.clone().unwrap_or_default();
        let (partners, unknown) = route::targets(&self.registry.partners(), &target);
        let mut usable = self.registry.usable_agreements();
        if let Some(id) = only {
            usable.retain(|a| a.id == id);
            if usable.is_empty() {
                return Err(FederateError::AgreementNotUsable(id));
            }
        }
        let include_own = route::includes_own(&target) && !request.exclude_own && only.is_none();

        // Which local token asked what of whom: durable before anyone is
        // asked.
        let entry = Entry {
            event: "federated_question".to_string(),
            outcome: "asked".to_string(),
            token: token.to_string(),
            operation: question.kind.as_str().to_string(),
            agreement: request.agreement_id.clone(),
            dataset: bounded(&format!(
                "{}{}",
                question.selector.ids.join(","),
                if question.selector.keyword.is_empty() {
                    String::new()
                } else {
                    format!(" keyword {}", question.selector.keyword)
                }
            )),
            detail: bounded(&format!(
                "partners {}; fellowship {}; deadline {} ms",
                if target.partners.is_empty() {
                    "all".to_string()
                } else {
                    target
                        .partners
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                if target.fellowship.is_empty() {
                    "any"
                } else {
                    target.fellowship.as_str()
                },
                deadline.as_millis()
            )),
            request: digest_text(&message_digest(&request)),
            ..Entry::default()
        };
        let audit_seq = self
            .audit
            .append(entry)
            .await
            .map_err(|e| FederateError::Audit(e.to_string()))?;

        let (sender, receiver) = mpsc::channel(EVENTS_IN_FLIGHT);
        let out = Out {
            events: sender,
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        };
        let federation = Arc::clone(self);
        let token = token.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            federation
                .answer(AnswerJob {
                    question,
                    deadline,
                    partners,
                    unknown,
                    usable,
                    include_own,
                    audit_seq,
                    token,
                    out,
                })
                .await;
        });
        Ok(ReceiverStream::new(receiver))
    }

    async fn answer(self: Arc<Self>, job: AnswerJob) {
        let started = Instant::now();
        let until = tokio::time::Instant::now() + job.deadline;
        let question = Arc::new(job.question);
        let mut outcomes: Vec<Outcome> = Vec::new();
        for code in &job.unknown {
            let source = pb::AskSource {
                municipality: *code,
                ..Default::default()
            };
            outcomes.push(Outcome {
                status: status(
                    &source,
                    PartnerOutcome::NotEntitled,
                    format!("{code} is not a current member of a fellowship this node belongs to"),
                ),
                buckets: None,
            });
        }
        let mut work = Vec::new();
        for partner in &job.partners {
            let agreements: Vec<UsableAgreement> = job
                .usable
                .iter()
                .filter(|a| {
                    a.provider == partner.code && partner.fellowships.contains(&a.fellowship)
                })
                .cloned()
                .collect();
            work.push(self.ask_partner(partner, agreements, &question, &job.out, until));
        }
        let own = async {
            if job.include_own {
                self.ask_own(&question, &job.out, until).await
            } else {
                Vec::new()
            }
        };
        let (per_partner, own) = tokio::join!(join_all(work), own);
        outcomes.extend(per_partner.into_iter().flatten());
        outcomes.extend(own);

        let mut combined = Combined::default();
        let mut statuses = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            if question.combine.is_some() {
                match outcome.buckets {
                    Some(buckets) => combined.add_source(outcome.status.municipality, buckets),
                    None if outcome.status.outcome != PartnerOutcome::NotEntitled as i32 => {
                        combined.leave_out(format!(
                            "{} {} ({})",
                            outcome.status.municipality,
                            outcome.status.dataset_id,
                            outcome_word(outcome.status.outcome)
                        ))
                    }
                    None => {}
                }
            }
            statuses.push(outcome.status);
        }
        statuses.sort_by(|a, b| {
            (a.municipality, &a.dataset_id, &a.agreement_id).cmp(&(
                b.municipality,
                &b.dataset_id,
                &b.agreement_id,
            ))
        });
        let out = &job.out;
        if question.combine.is_some() && !combined.is_empty() {
            out.send(ask_event::Event::Combined(combined.finish()))
                .await;
        }
        let asked = statuses
            .iter()
            .filter(|s| s.outcome != PartnerOutcome::NotEntitled as i32)
            .count();
        let answered = statuses
            .iter()
            .filter(|s| s.outcome == PartnerOutcome::Ok as i32)
            .count();
        let rows: u64 = statuses.iter().map(|s| s.rows).sum();
        // One entry per source (what it answered, under which agreement,
        // with which receipt) and one for the whole answer, recorded
        // together, before the analyst is told: the receipts kept for this
        // question become durable with them.
        let mut entries: Vec<Entry> = statuses
            .iter()
            .map(|s| Entry {
                event: "federated_source".to_string(),
                outcome: outcome_word(s.outcome).replace(' ', "_"),
                token: job.token.clone(),
                caller: Some(s.municipality),
                agreement: s.agreement_id.clone(),
                dataset: bounded(&s.dataset_id),
                rows: Some(s.rows),
                bytes: Some(s.bytes),
                receipt: s.receipt_id.clone(),
                detail: bounded(&format!("question {}: {}", job.audit_seq, s.detail)),
                ..Entry::default()
            })
            .collect();
        entries.push(Entry {
            event: "federated_answer".to_string(),
            outcome: "answered".to_string(),
            token: job.token.clone(),
            rows: Some(rows),
            detail: format!(
                "question {}: {answered} of {asked} answered in full",
                job.audit_seq
            ),
            ..Entry::default()
        });
        let recorded = join_all(entries.into_iter().map(|entry| self.audit.append(entry))).await;
        if let Some(Err(error)) = recorded.into_iter().find(|r| r.is_err()) {
            tracing::error!(%error, "the answer to a federated question could not be recorded");
        }
        for status in statuses {
            if !out.send(ask_event::Event::Partner(status)).await {
                break;
            }
        }
        out.send(ask_event::Event::Done(pb::AskSummary {
            asked: asked as u32,
            answered: answered as u32,
            rows,
            elapsed_ms: millis(started),
            audit_seq: job.audit_seq,
        }))
        .await;
    }

    /// Everything asked of one partner.
    async fn ask_partner(
        &self,
        partner: &Partner,
        agreements: Vec<UsableAgreement>,
        question: &Question,
        out: &Out,
        until: tokio::time::Instant,
    ) -> Vec<Outcome> {
        let whole = pb::AskSource {
            municipality: partner.code,
            name: partner.name.clone(),
            ..Default::default()
        };
        let allowing: Vec<&UsableAgreement> = agreements
            .iter()
            .filter(|a| question.kind.allowed_by(a) || a.allows(Operation::Catalog))
            .collect();
        if agreements.is_empty() || allowing.is_empty() {
            return vec![Outcome {
                status: status(
                    &whole,
                    PartnerOutcome::NotEntitled,
                    format!(
                        "no agreement in force lets this node ask {} for {}",
                        partner.name,
                        question.kind.as_str()
                    ),
                ),
                buckets: None,
            }];
        }
        if let Body::Catalog(search) = &question.body {
            return self
                .catalog_question(partner, &agreements, search, out, until)
                .await;
        }

        // What each agreement lets this node see: its catalog, or the
        // datasets its scope names (an agreement without `catalog`).
        let catalogs = join_all(agreements.iter().map(|agreement| async move {
            if agreement.allows(Operation::Catalog) {
                let fetched = tokio::time::timeout_at(until, self.catalog_under(agreement))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::new(
                            PartnerOutcome::TimedOut,
                            "no catalog within the deadline",
                        ))
                    });
                (agreement, fetched.map(|d| d.as_ref().clone()))
            } else {
                let named = agreement
                    .scope
                    .datasets
                    .iter()
                    .map(|id| pb::Dataset {
                        id: id.clone(),
                        kind: question.kind.dataset_kind().unwrap_or_default().to_string(),
                        ..Default::default()
                    })
                    .collect();
                (agreement, Ok(named))
            }
        }))
        .await;
        let mut candidates: BTreeMap<String, (pb::Dataset, Vec<&UsableAgreement>)> =
            BTreeMap::new();
        let mut failures = Vec::new();
        for (agreement, fetched) in catalogs {
            match fetched {
                Ok(datasets) => {
                    for dataset in datasets
                        .into_iter()
                        .filter(|d| route::selected(d, question.kind, &question.selector))
                    {
                        candidates
                            .entry(dataset.id.clone())
                            .or_insert_with(|| (dataset, Vec::new()))
                            .1
                            .push(agreement);
                    }
                }
                Err(failure) => failures.push((agreement, failure)),
            }
        }
        if candidates.is_empty() {
            // Nothing to ask: say why, the catalog failure first.
            if let Some((agreement, failure)) = failures.into_iter().next() {
                let mut source = whole.clone();
                source.agreement_id = agreement.id.to_string();
                return vec![Outcome {
                    status: status(&source, failure.outcome, failure.detail),
                    buckets: None,
                }];
            }
            return vec![Outcome {
                status: status(
                    &whole,
                    PartnerOutcome::NotEntitled,
                    format!(
                        "no {} dataset{} among what agreements let this node see of {}",
                        question.kind.dataset_kind().unwrap_or("matching"),
                        selector_words(&question.selector),
                        partner.name
                    ),
                ),
                buckets: None,
            }];
        }
        if candidates.len() > MAX_DATASETS_PER_PARTNER {
            return vec![Outcome {
                status: status(
                    &whole,
                    PartnerOutcome::Failed,
                    format!(
                        "{} datasets of {} match, more than the {MAX_DATASETS_PER_PARTNER} one \
                         question may ask; name a keyword or datasets",
                        candidates.len(),
                        partner.name
                    ),
                ),
                buckets: None,
            }];
        }
        let mut asks = Vec::new();
        let mut outcomes = Vec::new();
        for (dataset_id, (_, covering)) in &candidates {
            let mut source = whole.clone();
            source.dataset_id = dataset_id.clone();
            match route::choose(covering, question.kind, dataset_id) {
                Ok(agreement) => {
                    source.agreement_id = agreement.id.to_string();
                    asks.push(self.ask_dataset(
                        Provider::Partner(agreement),
                        source,
                        question,
                        out,
                        until,
                    ));
                }
                Err(why) => outcomes.push(Outcome {
                    status: status(&source, PartnerOutcome::NotEntitled, why),
                    buckets: None,
                }),
            }
        }
        outcomes.extend(join_all(asks).await);
        outcomes
    }

    /// A catalog search of one partner: its catalog under each agreement,
    /// freshly asked (with a receipt), datasets shown once.
    async fn catalog_question(
        &self,
        partner: &Partner,
        agreements: &[UsableAgreement],
        search: &pb::CatalogSearch,
        out: &Out,
        until: tokio::time::Instant,
    ) -> Vec<Outcome> {
        let mut shown = std::collections::BTreeSet::new();
        let mut outcomes = Vec::new();
        let fetched = join_all(
            agreements
                .iter()
                .filter(|a| a.allows(Operation::Catalog))
                .map(|agreement| async move {
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    let fetched =
                        tokio::time::timeout_at(until, self.partner_catalog(agreement, &mut tally))
                            .await
                            .unwrap_or_else(|_| {
                                Err(Failure::new(
                                    PartnerOutcome::TimedOut,
                                    "no catalog within the deadline",
                                ))
                            });
                    (agreement, fetched, tally, millis(started))
                }),
        )
        .await;
        for (agreement, fetched, tally, latency_ms) in fetched {
            let source = pb::AskSource {
                municipality: partner.code,
                name: partner.name.clone(),
                agreement_id: agreement.id.to_string(),
                ..Default::default()
            };
            let mut state = match fetched {
                Ok(datasets) => {
                    let found: Vec<pb::Dataset> = datasets
                        .into_iter()
                        .filter(|d| route::found(d, search) && shown.insert(d.id.clone()))
                        .collect();
                    let rows = found.len() as u64;
                    if !found.is_empty() {
                        out.send(ask_event::Event::Rows(pb::AskRows {
                            source: Some(source.clone()),
                            datasets: found,
                            ..Default::default()
                        }))
                        .await;
                    }
                    let mut ok = status(&source, PartnerOutcome::Ok, String::new());
                    ok.rows = rows;
                    ok
                }
                Err(failure) => status(&source, failure.outcome, failure.detail),
            };
            state.bytes = tally.bytes;
            state.latency_ms = latency_ms;
            state.receipt_id = tally.receipt_id;
            outcomes.push(Outcome {
                status: state,
                buckets: None,
            });
        }
        outcomes
    }

    /// One dataset of one source: a partner under one agreement, or this
    /// node itself.
    async fn ask_dataset(
        &self,
        from: Provider<'_>,
        source: pb::AskSource,
        question: &Question,
        out: &Out,
        until: tokio::time::Instant,
    ) -> Outcome {
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut sink = RowsSink {
            out: out.clone(),
            source: source.clone(),
            buckets: question
                .combine
                .as_ref()
                .map(|budget| SourceBuckets::new(Arc::clone(budget))),
        };
        let asked = tokio::time::timeout_at(until, async {
            let _turn = out.turns.acquire().await;
            match &question.body {
                Body::Readings(query) => {
                    let mut query = query.clone();
                    query.dataset_id = source.dataset_id.clone();
                    match from {
                        Provider::Partner(agreement) => {
                            self.partner_readings(agreement, query, &mut tally, &mut sink)
                                .await
                        }
                        Provider::Own => self.own_readings(query, &mut tally, &mut sink).await,
                    }
                }
                Body::Pilots(filter) => {
                    let mut filter = filter.clone();
                    filter.dataset_id = source.dataset_id.clone();
                    let pilots = match from {
                        Provider::Partner(agreement) => {
                            self.partner_pilots(agreement, filter, &mut tally).await?
                        }
                        Provider::Own => {
                            let pilots = answer::blocking(&self.plane, move |plane| {
                                plane.records.list_pilots(&filter)
                            })
                            .await
                            .map_err(|s| Failure::from_status(&s))?;
                            tally.rows = pilots.len() as u64;
                            pilots
                        }
                    };
                    send_rows(out, &source, |rows| rows.pilots = pilots).await
                }
                Body::Procurements(filter) => {
                    let mut filter = filter.clone();
                    filter.dataset_id = source.dataset_id.clone();
                    let procurements = match from {
                        Provider::Partner(agreement) => {
                            self.partner_procurements(agreement, filter, &mut tally)
                                .await?
                        }
                        Provider::Own => {
                            let procurements = answer::blocking(&self.plane, move |plane| {
                                plane.records.list_procurements(&filter)
                            })
                            .await
                            .map_err(|s| Failure::from_status(&s))?;
                            tally.rows = procurements.len() as u64;
                            procurements
                        }
                    };
                    send_rows(out, &source, |rows| rows.procurements = procurements).await
                }
                Body::Catalog(_) => Ok(()),
            }
        })
        .await;
        let mut outcome = finish(source, asked, tally, started, sink.buckets);
        if matches!(from, Provider::Own) && outcome.status.outcome == PartnerOutcome::Ok as i32 {
            outcome.status.detail = "this node's own data".to_string();
        }
        outcome
    }

    /// This node's own data, as one more source per dataset.
    async fn ask_own(
        &self,
        question: &Question,
        out: &Out,
        until: tokio::time::Instant,
    ) -> Vec<Outcome> {
        let source = pb::AskSource {
            municipality: self.identity.municipality_code,
            name: self.identity.municipality_name.clone(),
            ..Default::default()
        };
        let catalog = match self.plane.catalog().snapshot() {
            Ok(catalog) => catalog,
            Err(error) => {
                return vec![Outcome {
                    status: status(&source, PartnerOutcome::Failed, error.to_string()),
                    buckets: None,
                }];
            }
        };
        let datasets: Vec<pb::Dataset> = catalog
            .datasets
            .iter()
            .map(wire::dataset_to_proto)
            .collect();
        if let Body::Catalog(search) = &question.body {
            let started = Instant::now();
            let found: Vec<pb::Dataset> = datasets
                .into_iter()
                .filter(|d| route::found(d, search))
                .collect();
            let mut ok = status(
                &source,
                PartnerOutcome::Ok,
                "this node's own catalog".to_string(),
            );
            ok.rows = found.len() as u64;
            ok.latency_ms = millis(started);
            if !found.is_empty() {
                out.send(ask_event::Event::Rows(pb::AskRows {
                    source: Some(source),
                    datasets: found,
                    ..Default::default()
                }))
                .await;
            }
            return vec![Outcome {
                status: ok,
                buckets: None,
            }];
        }
        let mut asks = Vec::new();
        for dataset in datasets
            .iter()
            .filter(|d| route::selected(d, question.kind, &question.selector))
        {
            let mut source = source.clone();
            source.dataset_id = dataset.id.clone();
            asks.push(self.ask_dataset(Provider::Own, source, question, out, until));
        }
        join_all(asks).await
    }

    async fn own_readings(
        &self,
        query: pb::ReadingQuery,
        tally: &mut Tally,
        sink: &mut RowsSink,
    ) -> Result<(), Failure> {
        let question = wire::query_from_proto(query)
            .map_err(|e| Failure::new(PartnerOutcome::Failed, e.to_string()))?;
        let plan = AnswerPlan {
            query: question.query,
            aggregate: question
                .aggregate
                .map(|(bucket, group)| crate::data::aggregate::AggregateSpec::plain(bucket, group)),
            terms: None,
        };
        let mut stream = answer::readings(&self.plane, plan, None, self.answers, (), None)
            .await
            .map_err(|s| Failure::from_status(&s))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| Failure::from_status(&s))?;
            tally.rows += answer::rows_of(&chunk);
            if !sink.take(chunk).await {
                return Err(Failure::new(
                    PartnerOutcome::Failed,
                    "the analyst stopped reading",
                ));
            }
        }
        Ok(())
    }
}

/// Where one source's answer comes from.
#[derive(Debug, Clone, Copy)]
enum Provider<'a> {
    /// A partner, asked under this agreement.
    Partner(&'a UsableAgreement),
    /// This node's own store.
    Own,
}

/// What the answer task needs.
struct AnswerJob {
    question: Question,
    deadline: Duration,
    partners: Vec<Partner>,
    unknown: Vec<u32>,
    usable: Vec<UsableAgreement>,
    include_own: bool,
    audit_seq: u64,
    token: String,
    out: Out,
}

/// Sends one source's records as rows.
async fn send_rows(
    out: &Out,
    source: &pb::AskSource,
    fill: impl FnOnce(&mut pb::AskRows),
) -> Result<(), Failure> {
    let mut rows = pb::AskRows {
        source: Some(source.clone()),
        ..Default::default()
    };
    fill(&mut rows);
    if rows.pilots.is_empty() && rows.procurements.is_empty() {
        return Ok(());
    }
    if out.send(ask_event::Event::Rows(rows)).await {
        Ok(())
    } else {
        Err(Failure::new(
            PartnerOutcome::Failed,
            "the analyst stopped reading",
        ))
    }
}

/// A sub-question's status from how it ended.
fn finish(
    source: pb::AskSource,
    asked: Result<Result<(), Failure>, tokio::time::error::Elapsed>,
    tally: Tally,
    started: Instant,
    buckets: Option<SourceBuckets>,
) -> Outcome {
    let (mut state, buckets) = match asked {
        Ok(Ok(())) => (status(&source, PartnerOutcome::Ok, String::new()), buckets),
        Ok(Err(failure)) => (status(&source, failure.outcome, failure.detail), None),
        Err(_) => (
            status(
                &source,
                PartnerOutcome::TimedOut,
                format!(
                    "no complete answer within the deadline ({} rows arrived)",
                    tally.rows
                ),
            ),
            None,
        ),
    };
    state.rows = tally.rows;
    state.bytes = tally.bytes;
    state.latency_ms = millis(started);
    state.receipt_id = tally.receipt_id;
    Outcome {
        status: state,
        buckets,
    }
}

fn selector_words(selector: &pb::DatasetSelector) -> String {
    let mut words = String::new();
    if !selector.keyword.is_empty() {
        words.push_str(&format!(" with keyword `{}`", selector.keyword));
    }
    if !selector.ids.is_empty() {
        words.push_str(&format!(" named {}", selector.ids.join(", ")));
    }
    words
}

/// An outcome in one word, as the CLI and the audit print it.
pub fn outcome_word(outcome: i32) -> &'static str {
    match PartnerOutcome::try_from(outcome) {
        Ok(PartnerOutcome::Ok) => "ok",
        Ok(PartnerOutcome::Denied) => "denied",
        Ok(PartnerOutcome::Unavailable) => "unavailable",
        Ok(PartnerOutcome::TimedOut) => "timed out",
        Ok(PartnerOutcome::NotEntitled) => "not entitled",
        Ok(PartnerOutcome::Failed) => "failed",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_checked_before_anyone_is_asked() {
        let ask = |question| pb::AskRequest {
            question,
            ..Default::default()
        };
        assert!(matches!(
            check(&ask(None)),
            Err(FederateError::Invalid {
                field: "question",
                ..
            })
        ));
        let bad_bucket = pb::ReadingQuery {
            bucket: "7 fortnights".to_string(),
            ..Default::default()
        };
        let err =
            check(&ask(Some(ask_request::Question::Readings(bad_bucket)))).expect_err("bucket");
        assert!(err.to_string().starts_with("readings:"), "{err}");
        let mut too_long = ask(Some(ask_request::Question::Catalog(
            pb::CatalogSearch::default(),
        )));
        too_long.deadline_ms = 121_000;
        assert!(check(&too_long).is_err());
        let aggregate = pb::ReadingQuery {
            bucket: "1d".to_string(),
            dataset_id: "aarhus-air-quality".to_string(),
            from: Some(prost_types::Timestamp {
                seconds: 1_772_323_200,
                nanos: 0,
            }),
            until: Some(prost_types::Timestamp {
                seconds: 1_772_928_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let (question, deadline, _) =
            check(&ask(Some(ask_request::Question::Readings(aggregate)))).expect("fine");
        assert_eq!(question.kind, Kind::Readings { aggregate: true });
        assert!(question.combine.is_some());
        assert_eq!(
            question.selector.ids,
            vec!["aarhus-air-quality".to_string()]
        );
        assert_eq!(deadline, DEFAULT_DEADLINE);
    }
}
