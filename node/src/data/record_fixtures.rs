//! The fixture facts about pilots and joint procurements
//! (`node/fixtures/pilots.toml`, `procurements.toml`) as typed records, for
//! the demo, examples and tests.
//!
//! The mapping is faithful: a fact with a home in [`Pilot`] or
//! [`Procurement`] goes there, and every other fact (users, history,
//! expected dates, how precise a date is, the published wording of a
//! status, ...) is written into `notes`, so nothing the sources say is lost.
//! Unknown keys in the fixture files are refused (and the tests fail), so a
//! fact added to a file later cannot be dropped silently. Nothing is
//! invented: a date is set only to the precision the source gives, and a
//! procurement's buyers stay a count when the source names no list.

use samvirke_proto::v1::{
    Complaint, Kpi, PartialDate, Pilot, PilotPhase, Procedure, Procurement, ProcurementStatus,
};
use serde::Deserialize;

const PILOTS_TOML: &str = include_str!("../../fixtures/pilots.toml");
const PROCUREMENTS_TOML: &str = include_str!("../../fixtures/procurements.toml");

/// Every fixture pilot, in file order, as records of dataset `dataset_id`.
pub fn fixture_pilots(dataset_id: &str) -> Vec<Pilot> {
    // The file is compiled in and checked by a unit test, so a failure here
    // is a build defect, not bad input.
    parse_pilots(PILOTS_TOML, dataset_id).unwrap_or_else(|e| {
        tracing::error!(error = %e, "fixture pilots.toml does not load");
        Vec::new()
    })
}

/// Every fixture procurement, in file order, as records of dataset
/// `dataset_id`.
pub fn fixture_procurements(dataset_id: &str) -> Vec<Procurement> {
    parse_procurements(PROCUREMENTS_TOML, dataset_id).unwrap_or_else(|e| {
        tracing::error!(error = %e, "fixture procurements.toml does not load");
        Vec::new()
    })
}

// ---- Pilots ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PilotFile {
    pilot: Vec<PilotFact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PilotFact {
    id: String,
    title: String,
    #[serde(default)]
    owner: String,
    municipality: Option<u32>,
    #[serde(default)]
    municipalities: Vec<u32>,
    phase: String,
    #[serde(default)]
    technology: Vec<String>,
    started: Option<String>,
    ended: Option<String>,
    #[serde(default)]
    budget_dkk: i64,
    #[serde(default)]
    kpis: Vec<KpiFact>,
    #[serde(default)]
    findings: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiFact {
    name: String,
    value: f64,
    #[serde(default)]
    unit: String,
}

fn parse_pilots(text: &str, dataset_id: &str) -> Result<Vec<Pilot>, String> {
    let file: PilotFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.pilot
        .into_iter()
        .map(|fact| {
            let id = fact.id.clone();
            pilot_from(fact, dataset_id).map_err(|e| format!("pilot `{id}`: {e}"))
        })
        .collect()
}

fn pilot_from(fact: PilotFact, dataset_id: &str) -> Result<Pilot, String> {
    let mut municipalities = fact.municipalities;
    if let Some(code) = fact.municipality
        && !municipalities.contains(&code)
    {
        municipalities.insert(0, code);
    }
    let date = |field: &str, text: Option<String>| -> Result<Option<PartialDate>, String> {
        text.map(|t| parse_date(&t).ok_or_else(|| format!("{field}: `{t}` is not a date")))
            .transpose()
    };
    Ok(Pilot {
        id: fact.id,
        dataset_id: dataset_id.to_string(),
        title: fact.title,
        owner: fact.owner,
        municipalities,
        phase: parse_phase(&fact.phase)? as i32,
        technology: fact.technology,
        started: date("started", fact.started)?,
        ended: date("ended", fact.ended)?,
        budget_dkk: fact.budget_dkk,
        kpis: fact
            .kpis
            .into_iter()
            .map(|k| Kpi {
                name: k.name,
                value: k.value,
                unit: k.unit,
            })
            .collect(),
        findings: fact.findings,
        attachments: Vec::new(),
    })
}

fn parse_phase(text: &str) -> Result<PilotPhase, String> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "idea" => PilotPhase::Idea,
        "test" => PilotPhase::Test,
        "demonstration" => PilotPhase::Demonstration,
        "scaling" => PilotPhase::Scaling,
        "operation" => PilotPhase::Operation,
        "stopped" => PilotPhase::Stopped,
        other => return Err(format!("phase: `{other}` is not a known phase")),
    })
}

// ---- Procurements -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcurementFile {
    procurement: Vec<ProcurementFact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcurementFact {
    id: String,
    title: String,
    #[serde(default)]
    buyer_fellowship: String,
    /// Number of buying municipalities.
    buyers: Option<u32>,
    /// A buying organisation, e.g. KOMBIT.
    #[serde(default)]
    buyer: String,
    #[serde(default)]
    buyer_municipalities: Vec<u32>,
    awarded: Option<String>,
    date_precision: Option<String>,
    supplier: Option<String>,
    #[serde(default)]
    suppliers: Vec<String>,
    #[serde(default)]
    value_dkk: i64,
    duration_years: Option<i32>,
    period: Option<String>,
    procedure: Option<String>,
    procedure_first: Option<String>,
    procedure_final: Option<String>,
    complaint: Option<String>,
    #[serde(default)]
    cpv_codes: Vec<String>,
    bids: Option<u32>,
    status: Option<String>,
    users: Option<u64>,
    processes_in_scope: Option<u64>,
    history: Option<String>,
    expected_signing: Option<String>,
    expected_go_live: Option<String>,
    current_solution: Option<toml::Table>,
    notes: Option<String>,
}

fn parse_procurements(text: &str, dataset_id: &str) -> Result<Vec<Procurement>, String> {
    let file: ProcurementFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.procurement
        .into_iter()
        .map(|fact| {
            let id = fact.id.clone();
            procurement_from(fact, dataset_id).map_err(|e| format!("procurement `{id}`: {e}"))
        })
        .collect()
}

fn procurement_from(fact: ProcurementFact, dataset_id: &str) -> Result<Procurement, String> {
    // Notes: the source's own notes first, then every fact without a field.
    let mut notes: Vec<String> = fact.notes.into_iter().collect();

    let awarded = match &fact.awarded {
        Some(text) => {
            Some(parse_date(text).ok_or_else(|| format!("awarded: `{text}` is not a date"))?)
        }
        None => None,
    };
    if let Some(precision) = &fact.date_precision {
        notes.push(format!("Award date known to: {precision}."));
    }

    let mut suppliers = fact.suppliers;
    if let Some(supplier) = fact.supplier {
        suppliers.insert(0, supplier);
    }

    let (mut contract_start, mut contract_end) = (None, None);
    if let Some(years) = fact.duration_years {
        match awarded {
            Some(date) => {
                contract_end = Some(PartialDate {
                    year: date.year + years,
                    month: 0,
                    day: 0,
                });
                notes.push(format!(
                    "Contract duration: {years} years from the award (contract_end derived \
                     from the award year)."
                ));
            }
            None => notes.push(format!("Contract duration: {years} years.")),
        }
    }
    if let Some(period) = &fact.period {
        match parse_year_range(period) {
            Some((from, until)) => {
                contract_start = Some(year_only(from));
                contract_end = Some(year_only(until));
            }
            None => notes.push(format!("Period: {period}.")),
        }
    }

    let (procedure, procedure_detail) =
        match (fact.procedure, fact.procedure_first, fact.procedure_final) {
            (Some(only), None, None) => (classify_procedure(&only), only),
            (None, Some(first), Some(last)) => (
                classify_procedure(&last),
                format!("first: {first}; final: {last}"),
            ),
            (None, Some(first), None) => (classify_procedure(&first), first),
            (None, None, Some(last)) => (classify_procedure(&last), last),
            (None, None, None) => (Procedure::Unspecified, String::new()),
            _ => {
                return Err(
                    "give either procedure or procedure_first/procedure_final, not both"
                        .to_string(),
                );
            }
        };

    let complaints: Vec<Complaint> = fact.complaint.iter().map(|t| complaint_from(t)).collect();

    let status = match &fact.status {
        Some(text) => {
            let (status, canonical) = parse_status(text)?;
            if !canonical {
                notes.push(format!("Status as published: {text}."));
            }
            status
        }
        None if awarded.is_some() || !suppliers.is_empty() => ProcurementStatus::Awarded,
        None => ProcurementStatus::Unspecified,
    };

    if let Some(users) = fact.users {
        notes.push(format!("Users: {users}."));
    }
    if let Some(n) = fact.processes_in_scope {
        notes.push(format!("Processes in scope: {n}."));
    }
    if let Some(history) = &fact.history {
        notes.push(format!("History: {}", sentence(history)));
    }
    if let Some(date) = &fact.expected_signing {
        notes.push(format!("Expected signing: {date}."));
    }
    if let Some(date) = &fact.expected_go_live {
        notes.push(format!("Expected go-live: {date}."));
    }
    if let Some(table) = &fact.current_solution {
        let facts: Vec<String> = table
            .iter()
            .map(|(key, value)| format!("{} {}", key.replace('_', " "), show_value(value)))
            .collect();
        notes.push(format!("Current solution: {}.", facts.join(", ")));
    }

    Ok(Procurement {
        id: fact.id,
        dataset_id: dataset_id.to_string(),
        title: fact.title,
        buyer_municipalities: fact.buyer_municipalities,
        buyer_fellowship: fact.buyer_fellowship,
        buyer_organisation: fact.buyer,
        buyer_count: fact.buyers.unwrap_or(0),
        procedure: procedure as i32,
        procedure_detail,
        cpv_codes: fact.cpv_codes,
        suppliers,
        value_dkk: fact.value_dkk,
        awarded,
        contract_start,
        contract_end,
        bids: fact.bids.unwrap_or(0),
        complaints,
        status: status as i32,
        notes: notes.join("\n"),
    })
}

/// The procedure a published description names. The most specific words
/// win: a mini-tender on a framework agreement is a mini-tender.
fn classify_procedure(text: &str) -> Procedure {
    let t = text.to_lowercase();
    if t.contains("mini-tender") || t.contains("mini tender") || t.contains("miniudbud") {
        Procedure::FrameworkMiniTender
    } else if t.contains("negotiation") || t.contains("forhandling") {
        Procedure::Negotiation
    } else if t.contains("framework agreement") || t.contains("rammeaftale") {
        Procedure::FrameworkAgreement
    } else if t.contains("restricted") || t.contains("begrænset") {
        Procedure::Restricted
    } else if t.contains("open") || t.contains("offentligt udbud") {
        Procedure::Open
    } else {
        Procedure::Unspecified
    }
}

/// A published status and whether the text is exactly the status (so
/// nothing more needs keeping in the notes).
fn parse_status(text: &str) -> Result<(ProcurementStatus, bool), String> {
    let t = text.trim().to_lowercase();
    let status = if t.starts_with("planned") {
        ProcurementStatus::Planned
    } else if t.starts_with("in tender") {
        ProcurementStatus::InTender
    } else if t.starts_with("negotiating") {
        ProcurementStatus::Negotiating
    } else if t.starts_with("awarded") {
        ProcurementStatus::Awarded
    } else if t.starts_with("cancelled") {
        ProcurementStatus::Cancelled
    } else {
        return Err(format!("status: `{text}` is not a known status"));
    };
    let canonical = matches!(
        t.as_str(),
        "planned" | "in tender" | "negotiating" | "awarded" | "cancelled"
    );
    Ok((status, canonical))
}

/// A complaint as published in one sentence: the body is named when the
/// text names the complaints board, the outcome is read from its words,
/// and the whole text is kept as the summary.
fn complaint_from(text: &str) -> Complaint {
    let t = text.to_lowercase();
    let body = if t.contains("klagenaevnet for udbud") || t.contains("klagenævnet for udbud") {
        "Klagenaevnet for Udbud".to_string()
    } else {
        String::new()
    };
    let mut outcome = Vec::new();
    if t.contains("upheld") {
        outcome.push("upheld");
    } else if t.contains("dismissed") || t.contains("rejected") {
        outcome.push("dismissed");
    }
    if t.contains("restarted") {
        outcome.push("tender restarted");
    } else if t.contains("cancelled") {
        outcome.push("tender cancelled");
    }
    Complaint {
        body,
        summary: text.to_string(),
        outcome: outcome.join("; "),
    }
}

// ---- Small parsers -------------------------------------------------------------------

/// `2023`, `2023-05` or `2023-05-17`.
fn parse_date(text: &str) -> Option<PartialDate> {
    let mut parts = text.trim().split('-');
    let year = parts.next().filter(|y| y.len() == 4)?.parse().ok()?;
    let month = match parts.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    let day = match parts.next() {
        Some(d) => d.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(PartialDate { year, month, day })
}

/// `2025-2028`.
fn parse_year_range(text: &str) -> Option<(i32, i32)> {
    let (from, until) = text.trim().split_once('-')?;
    let year = |s: &str| -> Option<i32> {
        let s = s.trim();
        (s.len() == 4).then(|| s.parse().ok()).flatten()
    };
    Some((year(from)?, year(until)?))
}

fn year_only(year: i32) -> PartialDate {
    PartialDate {
        year,
        month: 0,
        day: 0,
    }
}

fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.ends_with(['.', '!', '?']) {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

fn show_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::{RecordStore, Stored, validate_pilot, validate_procurement};
    use crate::store::SledStore;
    use std::sync::Arc;

    #[test]
    fn the_fixture_files_load_strictly() {
        let pilots = parse_pilots(PILOTS_TOML, "pilots").expect("pilots.toml maps");
        let procurements =
            parse_procurements(PROCUREMENTS_TOML, "procurements").expect("procurements.toml maps");
        assert_eq!(pilots.len(), PILOTS_TOML.matches("[[pilot]]").count());
        assert_eq!(
            procurements.len(),
            PROCUREMENTS_TOML.matches("[[procurement]]").count()
        );
        assert_eq!(fixture_pilots("pilots"), pilots);
        assert_eq!(fixture_procurements("procurements"), procurements);
        assert!(pilots.iter().all(|p| p.dataset_id == "pilots"));
    }

    #[test]
    fn every_fixture_record_is_valid_and_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("open"));
        let records = RecordStore::new(store);
        for pilot in fixture_pilots("pilots") {
            validate_pilot(&pilot).unwrap_or_else(|e| panic!("{}: {e}", pilot.id));
            assert_eq!(records.put_pilot(pilot).expect("put"), Stored::New);
        }
        for procurement in fixture_procurements("procurements") {
            validate_procurement(&procurement)
                .unwrap_or_else(|e| panic!("{}: {e}", procurement.id));
            assert_eq!(
                records.put_procurement(procurement).expect("put"),
                Stored::New
            );
        }
        let counts = records.count().expect("count");
        assert_eq!(counts.pilots, 4);
        assert_eq!(counts.procurements, 8);
    }

    fn procurement(id: &str) -> Procurement {
        fixture_procurements("p")
            .into_iter()
            .find(|p| p.id == id)
            .expect("fixture procurement")
    }

    fn pilot(id: &str) -> Pilot {
        fixture_pilots("p")
            .into_iter()
            .find(|p| p.id == id)
            .expect("fixture pilot")
    }

    #[test]
    fn payroll_and_finance_facts() {
        let p = procurement("digit-2022-payroll-finance");
        assert_eq!(p.suppliers, vec!["KMD".to_string()]);
        assert_eq!(p.value_dkk, 876_500_000);
        assert_eq!(p.awarded, Some(year_only(2022)));
        assert_eq!(p.buyer_count, 11);
        assert_eq!(p.buyer_fellowship, "digit");
        assert_eq!(p.contract_end, Some(year_only(2033)));
        assert_eq!(p.contract_start, None);
        assert_eq!(p.status, ProcurementStatus::Awarded as i32);
        assert_eq!(p.procedure, Procedure::Unspecified as i32);
        for fact in [
            "season (autumn)",
            "11 years",
            "Users: 9000",
            "Processes in scope: 6",
            "First agreed in 2018 among 7 DIGIT municipalities",
        ] {
            assert!(p.notes.contains(fact), "{fact} missing from {:?}", p.notes);
        }
    }

    #[test]
    fn care_system_facts() {
        let p = procurement("digit-2020-care-system");
        assert_eq!(p.procedure, Procedure::Negotiation as i32);
        assert!(
            p.procedure_detail
                .contains("mini-tender on framework agreement SKI 02.19")
        );
        assert!(
            p.procedure_detail
                .contains("competitive procedure with negotiation")
        );
        assert_eq!(p.complaints.len(), 1);
        let c = &p.complaints[0];
        assert_eq!(c.body, "Klagenaevnet for Udbud");
        assert_eq!(c.outcome, "upheld; tender restarted");
        assert!(c.summary.contains("A losing bidder complained"));
        assert_eq!(p.suppliers, vec!["KMD (Nexus)".to_string()]);
        assert_eq!(p.value_dkk, 137_000_000);
        assert_eq!(p.awarded, None);
        assert_eq!(p.status, ProcurementStatus::Awarded as i32);
        assert!(p.notes.contains("7 of the 11 municipalities"));
    }

    #[test]
    fn statuses_buyers_and_leftover_facts() {
        let p = procurement("sbsys-2024-frameworks");
        assert_eq!(p.status, ProcurementStatus::InTender as i32);
        assert_eq!(p.contract_start, Some(year_only(2025)));
        assert_eq!(p.contract_end, Some(year_only(2028)));
        assert!(p.notes.contains("Expected signing: 2024-12-01"));

        let p = procurement("ddh-2024-ai-chatbot");
        assert_eq!(p.status, ProcurementStatus::Negotiating as i32);
        assert_eq!(p.buyer_count, 39);
        for fact in [
            "negotiating with prequalified bidders",
            "2025 (spring)",
            "dialogues per year 80000",
            "built in answers 5000",
            "user rating 2.2 of 3",
            "training sentences 14000",
            "knowledge areas 60",
        ] {
            assert!(p.notes.contains(fact), "{fact} missing from {:?}", p.notes);
        }

        let p = procurement("kombit-library-system");
        assert_eq!(p.buyer_organisation, "KOMBIT");
        assert_eq!(p.status, ProcurementStatus::InTender as i32);
        assert!(p.notes.contains("EU GPP"));

        let p = procurement("sbsys-2020-esdh-framework");
        assert_eq!(p.procedure, Procedure::FrameworkAgreement as i32);
        assert_eq!(p.procedure_detail, "EU tender, framework agreement");
        assert_eq!(p.suppliers, vec!["Netcompany".to_string()]);
        assert_eq!(p.awarded, Some(year_only(2020)));
    }

    #[test]
    fn pilot_facts() {
        let p = pilot("kalundborg-digitalisation");
        assert_eq!(p.municipalities, vec![326]);
        assert_eq!(p.phase, PilotPhase::Operation as i32);
        assert_eq!(p.kpis.len(), 3);
        assert_eq!(p.kpis[1].name, "target yearly saving");
        assert_eq!(p.kpis[1].value, 20_000_000.0);
        assert_eq!(p.kpis[1].unit, "DKK");
        assert_eq!(p.started, Some(year_only(2023)));
        assert!(p.findings.contains("chatbot"));

        let p = pilot("no-smart-parking");
        assert_eq!(p.phase, PilotPhase::Test as i32);
        assert!(p.owner.contains("By og Miljoe"));
        assert_eq!(p.technology.len(), 3);
        assert!(p.municipalities.is_empty());
        assert_eq!(p.started, None);

        assert_eq!(pilot("kl-iot-adoption").phase, PilotPhase::Scaling as i32);
        assert_eq!(pilot("gladsaxe-green-it").municipalities, vec![159]);
    }

    #[test]
    fn an_unknown_fixture_key_is_refused_not_dropped() {
        let text = "[[pilot]]\nid = \"x-y-z\"\ntitle = \"T\"\nphase = \"test\"\nsponsor = \"A\"\n";
        let err = parse_pilots(text, "d").expect_err("unknown key");
        assert!(err.contains("sponsor"), "{err}");
    }

    #[test]
    fn small_parsers() {
        assert_eq!(
            parse_date("2024-12-01"),
            Some(PartialDate {
                year: 2024,
                month: 12,
                day: 1
            })
        );
        assert_eq!(parse_date("2025 (spring)"), None);
        assert_eq!(parse_date("unknown"), None);
        assert_eq!(parse_year_range("2025-2028"), Some((2025, 2028)));
        assert_eq!(
            classify_procedure("mini-tender on framework agreement SKI 02.19"),
            Procedure::FrameworkMiniTender
        );
        assert_eq!(classify_procedure("open EU tender"), Procedure::Open);
        assert!(parse_status("on hold").is_err());
    }
}
