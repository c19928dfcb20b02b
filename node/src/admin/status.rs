//! The read-only status page: what an operator checks first, as plain
//! server-rendered HTML (no script, a little inline CSS).
//!
//! Every value is HTML-escaped by the template engine (maud escapes all
//! interpolated text), so a partner's name, a refusal reason or a dataset
//! title cannot inject markup. The page shows public identity, counts and
//! audit summaries only: tokens never reach the audit (it names the token,
//! not its value), keys are never read here. Lists are bounded; partner
//! reachability is what the partner pool last saw (the page never calls a
//! partner).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use samvirke_proto::v1 as pb;
use time::OffsetDateTime;

use super::Admin;
use super::metrics::{PartnerSeen, certificate_not_after};
use crate::audit::Entry;
use crate::data::catalog::DatasetKind;

/// Audit entries shown, newest first.
pub const AUDIT_ENTRIES: u64 = 20;
/// Datasets, agreements and members shown at most per list.
const MAX_ROWS: usize = 200;
/// Agreements ending within this many days are flagged.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// One dataset's line.
#[derive(Debug)]
struct DatasetLine {
    id: String,
    title: String,
    kind: &'static str,
    classification: &'static str,
    rows: Option<u64>,
    last: Option<OffsetDateTime>,
}

/// One partner's line.
#[derive(Debug)]
struct PartnerLine {
    code: u32,
    name: String,
    endpoint: String,
    fellowships: Vec<String>,
    backing_off: Option<String>,
    seen: Option<PartnerSeen>,
}

/// Everything the page shows, read in one go off the async runtime.
#[derive(Debug)]
struct Snapshot {
    now: OffsetDateTime,
    uptime: Duration,
    rosters: Vec<pb::RosterInfo>,
    agreements: Vec<pb::AgreementInfo>,
    datasets: Vec<DatasetLine>,
    datasets_total: usize,
    partners: Vec<PartnerLine>,
    certificate_not_after: Option<OffsetDateTime>,
    audit_length: u64,
    audit: Result<Vec<Entry>, String>,
    alerts: Vec<String>,
}

fn snapshot(admin: &Admin) -> Snapshot {
    let now = admin.clock.now();
    let (rosters, agreements) = admin.registry.list();
    let (datasets, datasets_total) = match admin.plane.catalog().list() {
        Ok(list) => {
            let total = list.len();
            let lines = list
                .into_iter()
                .take(MAX_ROWS)
                .map(|dataset| {
                    let (rows, last) = if dataset.kind == DatasetKind::Sensor {
                        match admin.plane.readings.sensors(&dataset.id) {
                            Ok(sensors) => (
                                Some(sensors.iter().map(|s| s.readings).sum()),
                                sensors.iter().map(|s| s.last).max(),
                            ),
                            Err(_) => (None, None),
                        }
                    } else {
                        (None, None)
                    };
                    DatasetLine {
                        id: dataset.id,
                        title: dataset.title,
                        kind: dataset.kind.as_str(),
                        classification: dataset.classification.as_str(),
                        rows,
                        last,
                    }
                })
                .collect();
            (lines, total)
        }
        Err(_) => (Vec::new(), 0),
    };
    let partners = admin
        .registry
        .partners()
        .into_iter()
        .take(MAX_ROWS)
        .map(|partner| PartnerLine {
            backing_off: admin.partners.backing_off(&partner.endpoint),
            seen: admin.partners.metrics().last(partner.code),
            code: partner.code,
            name: partner.name,
            endpoint: partner.endpoint,
            fellowships: partner.fellowships.into_iter().collect(),
        })
        .collect();
    let mut audit = admin.audit.tail(AUDIT_ENTRIES).map_err(|e| e.to_string());
    if let Ok(entries) = &mut audit {
        entries.reverse();
    }
    Snapshot {
        now,
        uptime: admin.started.elapsed(),
        rosters,
        agreements,
        datasets,
        datasets_total,
        partners,
        certificate_not_after: certificate_not_after(&admin.identity.tls.certificate_chain_pem),
        audit_length: admin.audit.length(),
        audit,
        alerts: admin.registry.alerts(),
    }
}

/// `GET /` and `GET /status`.
pub async fn page(State(admin): State<Admin>) -> Response {
    let identity = std::sync::Arc::clone(&admin.identity);
    let read = tokio::task::spawn_blocking(move || snapshot(&admin)).await;
    match read {
        Ok(snapshot) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                // Nothing on the page runs or loads anything.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            render(&identity, &snapshot).into_string(),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the status could not be read\n",
        )
            .into_response(),
    }
}

fn when(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Days until `until` (RFC 3339 or a date), when it parses.
fn days_until(until: &str, now: OffsetDateTime) -> Option<i64> {
    let at = OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
        .ok()
        .or_else(|| {
            time::Date::parse(
                until,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .ok()
            .map(|d| d.midnight().assume_utc())
        })?;
    Some((at - now).whole_days())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;\
background:#fafafa}h1{margin-bottom:.2rem}h2{margin-top:1.6rem;border-bottom:2px solid #2a5d8f;\
color:#2a5d8f}table{border-collapse:collapse;width:100%;font-size:.92rem}th,td{text-align:left;overflow-wrap:anywhere;\
padding:.25rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}th{background:#eef3f8}\
.warn{background:#fff3cd}.bad{background:#f8d7da}.ok{color:#1e7b34}.muted{color:#666}\
code{font-size:.85rem}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}\
dt{font-weight:600}dd{margin:0}";

fn render(identity: &crate::identity::NodeIdentity, s: &Snapshot) -> Markup {
    let certificate_days = s.certificate_not_after.map(|at| (at - s.now).whole_days());
    html! {
        (DOCTYPE)
        html lang="da" {
            head {
                meta charset="utf-8";
                title { "Samvirke: " (identity.municipality_name) }
                style { (STYLE) }
            }
            body {
                h1 { (identity.municipality_name) }
                p.muted { "Samvirke node status, read-only. Rendered " (when(s.now)) "." }
                @if !s.alerts.is_empty() {
                    h2 { "Alerts" }
                    ul { @for alert in &s.alerts { li.warn { (alert) } } }
                }
                h2 { "Node" }
                dl {
                    dt { "Municipality" } dd { (identity.municipality_name) " (" (identity.municipality_code) ")" }
                    dt { "Node id" } dd { code { (identity.node_id) } }
                    dt { "TLS fingerprint" } dd { code { (identity.tls.fingerprint) } }
                    dt { "Version" } dd { (crate::SOFTWARE_VERSION) }
                    dt { "Uptime" } dd { (duration(s.uptime)) }
                    dt { "Certificate expires" }
                    dd {
                        @match (s.certificate_not_after, certificate_days) {
                            (Some(at), Some(days)) if days < 0 => span.bad { (when(at)) " (expired)" },
                            (Some(at), Some(days)) if days <= EXPIRY_WARNING_DAYS => span.warn { (when(at)) " (in " (days) " days: renew it)" },
                            (Some(at), Some(days)) => { (when(at)) " (in " (days) " days)" },
                            _ => span.bad { "unreadable" },
                        }
                    }
                    dt { "Audit entries" } dd { (s.audit_length) }
                }

                h2 { "Fellowships" }
                @if s.rosters.is_empty() { p.muted { "This node holds no roster yet." } }
                @for roster in &s.rosters {
                    h3 { (roster.name) " " span.muted { "(" (roster.fellowship) ", serial " (roster.serial) ", " (roster.rule) ")" } }
                    table {
                        tr { th { "Code" } th { "Member" } th { "Joined" } th { "Left" } th { "Endpoint" } }
                        @for member in roster.members.iter().take(MAX_ROWS) {
                            tr class=(if member.current { "" } else { "warn" }) {
                                td { (member.code) }
                                td { (member.name) }
                                td { (member.joined) }
                                td { @if member.left.is_empty() { span.muted { "member" } } @else { (member.left) } }
                                td { code { (member.endpoint) } }
                            }
                        }
                    }
                }

                h2 { "Agreements" }
                @if s.agreements.is_empty() { p.muted { "No agreements." } }
                @else {
                    table {
                        tr { th { "Id" } th { "Fellowship" } th { "Provider" } th { "Consumers" } th { "Status" } th { "Valid until" } }
                        @for agreement in s.agreements.iter().take(MAX_ROWS) {
                            @let days = days_until(&agreement.valid_until, s.now);
                            @let soon = agreement.status == "active" && days.is_some_and(|d| d <= EXPIRY_WARNING_DAYS);
                            tr class=(if soon { "warn" } else if agreement.status == "active" { "" } else { "muted" }) {
                                td { code { (agreement.id) } }
                                td { (agreement.fellowship) }
                                td { (agreement.provider) }
                                td {
                                    @if agreement.all_members { "all members" }
                                    @else { (agreement.consumers.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")) }
                                }
                                td { (agreement.status) @if !agreement.status_detail.is_empty() { br; span.muted { (agreement.status_detail) } } }
                                td {
                                    (agreement.valid_until)
                                    @if soon { @if let Some(d) = days { br; strong { "expires in " (d) " days" } } }
                                }
                            }
                        }
                    }
                }

                h2 { "Datasets" }
                @if s.datasets.is_empty() { p.muted { "No datasets published." } }
                @else {
                    table {
                        tr { th { "Id" } th { "Title" } th { "Kind" } th { "Classification" } th { "Rows" } th { "Last reading" } }
                        @for d in &s.datasets {
                            tr {
                                td { code { (d.id) } }
                                td { (d.title) }
                                td { (d.kind) }
                                td { (d.classification) }
                                td { @if let Some(rows) = d.rows { (rows) } @else { span.muted { "-" } } }
                                td { @if let Some(last) = d.last { (when(last)) } @else { span.muted { "-" } } }
                            }
                        }
                    }
                    @if s.datasets_total > s.datasets.len() {
                        p.muted { "and " (s.datasets_total - s.datasets.len()) " more" }
                    }
                }

                h2 { "Partners" }
                @if s.partners.is_empty() { p.muted { "No partners (no current fellowship with other members)." } }
                @else {
                    table {
                        tr { th { "Code" } th { "Partner" } th { "Fellowships" } th { "Reachability" } th { "Last call" } }
                        @for p in &s.partners {
                            tr {
                                td { (p.code) }
                                td { (p.name) br; code.muted { (p.endpoint) } }
                                td { (p.fellowships.join(", ")) }
                                td {
                                    @if let Some(why) = &p.backing_off { span.bad { "unreachable: " (why) } }
                                    @else if let Some(seen) = &p.seen {
                                        @if let Some(why) = &seen.failure { span.warn { "last call failed: " (why) } }
                                        @else { span.ok { "reachable" } }
                                    }
                                    @else { span.muted { "not called since start" } }
                                }
                                td {
                                    @if let Some(seen) = &p.seen {
                                        (seen.latency.as_millis()) " ms at " (when(seen.at))
                                    } @else { span.muted { "-" } }
                                }
                            }
                        }
                    }
                }

                h2 { "Recent audit entries" }
                @match &s.audit {
                    Err(why) => p.bad { "The audit log could not be read: " (why) },
                    Ok(entries) if entries.is_empty() => p.muted { "No entries yet." },
                    Ok(entries) => table {
                        tr { th { "#" } th { "At" } th { "Event" } th { "Outcome" } th { "Who" } th { "What" } th { "Detail" } }
                        @for e in entries {
                            tr class=(if e.outcome == "denied" || e.outcome == "refused" { "warn" } else { "" }) {
                                td { (e.seq) }
                                td { (when(e.at)) }
                                td { (e.event) }
                                td { (e.outcome) }
                                td {
                                    @if let Some(code) = e.caller { (code) " " }
                                    @if !e.token.is_empty() { "token " (e.token) }
                                }
                                td { (e.operation) @if !e.dataset.is_empty() { " " code { (e.dataset) } } }
                                td { (crate::telemetry::untrusted(&e.detail)) }
                            }
                        }
                    },
                }
            }
        }
    }
}
