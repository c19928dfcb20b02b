//! Where a question goes: which partners a target names, which of a
//! partner's datasets a selector picks, and under which agreement each
//! (partner, dataset) is asked. Pure functions over the agreements in
//! force and the partners' catalogs, so the choices are easy to test and
//! to explain to an analyst ("not entitled: ...").

use std::collections::BTreeSet;

use samvirke_proto::v1 as pb;

use crate::governance::Operation;
use crate::governance::registry::{Partner, UsableAgreement};

/// What kind of question is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Catalog,
    Readings { aggregate: bool },
    Pilots,
    Procurements,
}

impl Kind {
    /// The dataset kind the question is about (none for a catalog search).
    pub fn dataset_kind(self) -> Option<&'static str> {
        match self {
            Kind::Catalog => None,
            Kind::Readings { .. } => Some("sensor"),
            Kind::Pilots => Some("pilot"),
            Kind::Procurements => Some("procurement"),
        }
    }

    /// The operation a partner must allow.
    pub fn operation(self) -> Operation {
        match self {
            Kind::Catalog => Operation::Catalog,
            Kind::Readings { aggregate: true } => Operation::Aggregate,
            _ => Operation::Read,
        }
    }

    /// Whether an agreement allows the question.
    pub fn allowed_by(self, agreement: &UsableAgreement) -> bool {
        match self {
            // An agreement that allows raw reads allows aggregates of them.
            Kind::Readings { aggregate: true } => {
                agreement.allows(Operation::Aggregate) || agreement.allows(Operation::Read)
            }
            other => agreement.allows(other.operation()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Catalog => "catalog",
            Kind::Readings { aggregate: false } => "readings",
            Kind::Readings { aggregate: true } => "aggregate",
            Kind::Pilots => "pilots",
            Kind::Procurements => "procurements",
        }
    }
}

/// The partners a target names, among `partners` (current members of
/// this node's fellowships). Codes named that are no partner are returned
/// apart, to be reported.
pub fn targets(partners: &[Partner], target: &pb::AskTarget) -> (Vec<Partner>, Vec<u32>) {
    let named: BTreeSet<u32> = target.partners.iter().copied().collect();
    let chosen: Vec<Partner> = partners
        .iter()
        .filter(|p| named.is_empty() || named.contains(&p.code))
        .filter(|p| target.fellowship.is_empty() || p.fellowships.contains(&target.fellowship))
        .cloned()
        .collect();
    let unknown = named
        .iter()
        .filter(|code| !partners.iter().any(|p| p.code == **code))
        .copied()
        .collect();
    (chosen, unknown)
}

/// Whether a target includes this node's own data by default: a question
/// to a whole fellowship or to every partner, not to named partners.
pub fn includes_own(target: &pb::AskTarget) -> bool {
    target.partners.is_empty()
}

/// Whether `dataset` is one the question is about.
pub fn selected(dataset: &pb::Dataset, kind: Kind, selector: &pb::DatasetSelector) -> bool {
    if let Some(wanted) = kind.dataset_kind()
        && dataset.kind != wanted
    {
        return false;
    }
    if !selector.ids.is_empty() && !selector.ids.contains(&dataset.id) {
        return false;
    }
    if !selector.keyword.is_empty()
        && !dataset
            .keywords
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&selector.keyword))
    {
        return false;
    }
    true
}

/// Whether `dataset` matches a catalog search.
pub fn found(dataset: &pb::Dataset, search: &pb::CatalogSearch) -> bool {
    let text = search.text.to_lowercase();
    let text_ok = text.is_empty()
        || [&dataset.id, &dataset.title, &dataset.description]
            .iter()
            .any(|field| field.to_lowercase().contains(&text))
        || dataset
            .keywords
            .iter()
            .any(|k| k.to_lowercase().contains(&text));
    text_ok
        && (search.keyword.is_empty()
            || dataset
                .keywords
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&search.keyword)))
        && (search.theme.is_empty() || dataset.theme.eq_ignore_ascii_case(&search.theme))
        && (search.kind.is_empty() || dataset.kind == search.kind)
}

/// The agreement to ask a dataset under, among those whose catalog lists
/// it: one that allows the question, preferring one that allows raw reads
/// (its aggregates are not held to a grid), then the longest valid, then
/// the lowest id (a stable choice). Or why none will do.
pub fn choose<'a>(
    candidates: &[&'a UsableAgreement],
    kind: Kind,
    dataset: &str,
) -> Result<&'a UsableAgreement, String> {
    let mut allowing: Vec<&'a UsableAgreement> = candidates
        .iter()
        .copied()
        .filter(|a| kind.allowed_by(a))
        .collect();
    allowing.sort_by(|a, b| {
        b.allows(Operation::Read)
            .cmp(&a.allows(Operation::Read))
            .then(b.valid_until.cmp(&a.valid_until))
            .then(a.id.cmp(&b.id))
    });
    if let Some(best) = allowing.first() {
        return Ok(best);
    }
    let aggregate_only = candidates
        .iter()
        .any(|a| a.allows(Operation::Aggregate) && !a.allows(Operation::Read));
    Err(match kind {
        Kind::Readings { aggregate: false } if aggregate_only => format!(
            "the agreements covering `{dataset}` allow only aggregates; ask with a bucket (e.g. \
             --bucket 1h)"
        ),
        _ => format!(
            "no agreement in force covering `{dataset}` allows {}",
            kind.operation().as_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::agreement::{AggregateTerms, Scope};
    use crate::identity::Fingerprint;
    use time::macros::datetime;
    use uuid::Uuid;

    fn agreement(id: u128, operations: &[Operation]) -> UsableAgreement {
        UsableAgreement {
            id: Uuid::from_u128(id),
            fellowship: "digit".to_string(),
            provider: 751,
            provider_name: "Aarhus Kommune".to_string(),
            provider_endpoint: "https://127.0.0.1:1".to_string(),
            provider_fingerprint: Fingerprint::of_der(b"x"),
            provider_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key(),
            operations: operations.to_vec(),
            scope: Scope::default(),
            aggregate: AggregateTerms::default(),
            min_group_size: Some(5),
            valid_until: datetime!(2027-01-01 00:00 UTC),
        }
    }

    #[test]
    fn raw_reads_are_preferred_and_aggregate_only_is_explained() {
        let aggregate_only = agreement(1, &[Operation::Catalog, Operation::Aggregate]);
        let read = agreement(2, &[Operation::Catalog, Operation::Read]);
        let both = [&aggregate_only, &read];
        let aggregate = Kind::Readings { aggregate: true };
        assert_eq!(choose(&both, aggregate, "d").map(|a| a.id), Ok(read.id));
        assert_eq!(
            choose(&[&aggregate_only], aggregate, "d").map(|a| a.id),
            Ok(aggregate_only.id)
        );
        let raw = Kind::Readings { aggregate: false };
        let why = choose(&[&aggregate_only], raw, "aarhus-air").expect_err("aggregate only");
        assert!(why.contains("allow only aggregates"), "{why}");
        assert!(choose(&[&aggregate_only], Kind::Pilots, "p").is_err());
    }

    #[test]
    fn selectors_pick_by_kind_id_and_keyword() {
        let dataset = pb::Dataset {
            id: "aarhus-air-quality".to_string(),
            kind: "sensor".to_string(),
            keywords: vec!["air-quality".to_string()],
            ..Default::default()
        };
        let readings = Kind::Readings { aggregate: false };
        let by = |ids: &[&str], keyword: &str| pb::DatasetSelector {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            keyword: keyword.to_string(),
        };
        assert!(selected(&dataset, readings, &by(&[], "")));
        assert!(selected(&dataset, readings, &by(&[], "AIR-quality")));
        assert!(!selected(&dataset, readings, &by(&[], "noise")));
        assert!(selected(
            &dataset,
            readings,
            &by(&["aarhus-air-quality"], "")
        ));
        assert!(!selected(
            &dataset,
            readings,
            &by(&["vejle-air-quality"], "")
        ));
        assert!(!selected(&dataset, Kind::Pilots, &by(&[], "")));
    }
}
