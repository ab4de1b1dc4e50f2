//! Curriculum sampling of an export (seed section 12): not uniform, but more of what the model
//! needs to learn from —
//!
//! - **negative** records (escalated, reopened, CSAT 1-2);
//! - **low-confidence** ones: the router itself expected the small model to fail (its
//!   difficulty at or above its threshold), yet the small model answered (exploration, a full
//!   large-model queue, no large model);
//! - **novel** ones: queries unlike anything in the current training set (`--seen`: their
//!   nearest seen query's cosine is below a threshold);
//! - the rest.
//!
//! A record belongs to the first of these that applies. Each category gets its configured share
//! of the sample: first its records without repetition (in a seeded random order), then again
//! (oversampled) when the share asks for more than it has. A category with no records gives its
//! share to the rest; the mix actually drawn is reported next to the one asked for.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::label::Overall;
use crate::record::ExportRecord;

/// A record's curriculum category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Category {
    /// Negative label.
    Negative,
    /// Routed with a difficulty at or above its threshold, answered small.
    LowConfidence,
    /// Unlike the seen training set.
    Novel,
    /// Everything else.
    Rest,
}

impl Category {
    /// In priority order.
    pub const ALL: [Category; 4] = [
        Category::Negative,
        Category::LowConfidence,
        Category::Novel,
        Category::Rest,
    ];

    /// `negative`, `lowConfidence`, `novel`, `rest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negative => "negative",
            Self::LowConfidence => "lowConfidence",
            Self::Novel => "novel",
            Self::Rest => "rest",
        }
    }
}

/// The mix asked for: shares of the sample (the rest gets `1 - sum`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mix {
    /// Share of negative records.
    pub negative: f64,
    /// Share of low-confidence records.
    pub low_confidence: f64,
    /// Share of novel records.
    pub novel: f64,
}

impl Mix {
    /// Parses `negative=0.3,lowConfidence=0.2,novel=0.2` (also `low-confidence`); every share in
    /// 0..=1, their sum at most 1.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut mix = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=share"))?;
            let share: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {value:?} is not a number"))?;
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{part:?}: a share between 0 and 1"));
            }
            match name.trim() {
                "negative" => mix.negative = share,
                "lowConfidence" | "low-confidence" => mix.low_confidence = share,
                "novel" => mix.novel = share,
                other => {
                    return Err(format!(
                        "{other:?}: the categories are negative, lowConfidence and novel"
                    ));
                }
            }
        }
        let sum = mix.negative + mix.low_confidence + mix.novel;
        if sum > 1.0 + 1e-9 {
            return Err(format!("the shares add up to {sum}, more than 1"));
        }
        Ok(mix)
    }

    fn share(&self, c: Category) -> f64 {
        match c {
            Category::Negative => self.negative,
            Category::LowConfidence => self.low_confidence,
            Category::Novel => self.novel,
            Category::Rest => (1.0 - self.negative - self.low_confidence - self.novel).max(0.0),
        }
    }
}

/// The category of `record` (`novel`: its query is unlike the seen training set).
pub fn categorize(record: &ExportRecord, novel: bool) -> Category {
    if record.labels.overall == Overall::Negative {
        Category::Negative
    } else if record.routing.is_some_and(|r| r.difficulty >= r.threshold)
        && record.served_by.model == "small"
    {
        Category::LowConfidence
    } else if novel {
        Category::Novel
    } else {
        Category::Rest
    }
}

/// One category in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryMix {
    /// The category.
    pub category: Category,
    /// Records of the export in it.
    pub available: usize,
    /// Share asked for.
    pub asked: f64,
    /// Records drawn (with repetitions).
    pub drawn: usize,
    /// Distinct records drawn.
    pub distinct: usize,
    /// Share of the sample.
    pub share: f64,
    /// Share of the export (what uniform sampling would give).
    pub uniform_share: f64,
}

/// What a curriculum sample holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurriculumReport {
    /// Records in the sample.
    pub size: usize,
    /// The seed of the draw.
    pub seed: u64,
    /// Per category, in priority order.
    pub mix: Vec<CategoryMix>,
    /// Whether novelty was measured (a seen training set was given).
    pub novelty_measured: bool,
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Draws `size` records of `records` (`novel[i]`: record `i` is novel; empty when novelty was
/// not measured) in the `mix`: indices into `records` with their category, shuffled, and the
/// report.
pub fn sample(
    records: &[ExportRecord],
    novel: &[bool],
    mix: &Mix,
    size: usize,
    seed: u64,
) -> (Vec<(usize, Category)>, CurriculumReport) {
    let mut pools: BTreeMap<Category, Vec<usize>> =
        Category::ALL.iter().map(|c| (*c, Vec::new())).collect();
    for (i, r) in records.iter().enumerate() {
        let c = categorize(r, novel.get(i).copied().unwrap_or(false));
        pools.entry(c).or_default().push(i);
    }
    let mut rng = Rng(seed);
    // Targets: each category's share; an empty category's share goes to the rest.
    let mut targets: BTreeMap<Category, usize> = BTreeMap::new();
    let mut assigned = 0;
    for c in [Category::Negative, Category::LowConfidence, Category::Novel] {
        let n = if pools[&c].is_empty() {
            0
        } else {
            (mix.share(c) * size as f64).round() as usize
        };
        let n = n.min(size - assigned);
        targets.insert(c, n);
        assigned += n;
    }
    targets.insert(Category::Rest, size - assigned);
    // A rest with nothing in it: its share goes to the largest other pool.
    if pools[&Category::Rest].is_empty() && targets[&Category::Rest] > 0 {
        let extra = targets[&Category::Rest];
        targets.insert(Category::Rest, 0);
        if let Some(c) = [Category::Negative, Category::LowConfidence, Category::Novel]
            .into_iter()
            .filter(|c| !pools[c].is_empty())
            .max_by_key(|c| pools[c].len())
        {
            *targets.entry(c).or_default() += extra;
        }
    }
    let mut drawn: Vec<(usize, Category)> = Vec::with_capacity(size);
    let mut report = Vec::new();
    for c in Category::ALL {
        let mut pool = pools[&c].clone();
        rng.shuffle(&mut pool);
        let want = targets[&c];
        let mut taken = Vec::with_capacity(want);
        while taken.len() < want && !pool.is_empty() {
            // Without repetition first, then again in a fresh order.
            let round = want - taken.len();
            taken.extend(pool.iter().take(round).copied());
            rng.shuffle(&mut pool);
        }
        let distinct = {
            let mut d = taken.clone();
            d.sort_unstable();
            d.dedup();
            d.len()
        };
        report.push(CategoryMix {
            category: c,
            available: pools[&c].len(),
            asked: (mix.share(c) * 1e6).round() / 1e6,
            drawn: taken.len(),
            distinct,
            share: 0.0,
            uniform_share: pools[&c].len() as f64 / records.len().max(1) as f64,
        });
        drawn.extend(taken.into_iter().map(|i| (i, c)));
    }
    let total = drawn.len().max(1) as f64;
    for m in &mut report {
        m.share = m.drawn as f64 / total;
    }
    rng.shuffle(&mut drawn);
    let report = CurriculumReport {
        size: drawn.len(),
        seed,
        mix: report,
        novelty_measured: !novel.is_empty(),
    };
    (drawn, report)
}

/// Whether each of `vectors` is novel against `seen`: its best cosine to a seen vector is below
/// `threshold` (vectors are unit length, as the encoder returns them).
pub fn novelty(vectors: &[Vec<f32>], seen: &[Vec<f32>], threshold: f32) -> Vec<bool> {
    vectors
        .iter()
        .map(|v| {
            seen.iter()
                .map(|s| v.iter().zip(s).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max)
                < threshold
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Overall;

    fn record(overall: Overall, difficulty: f64) -> ExportRecord {
        let mut r: ExportRecord = serde_json::from_value(serde_json::json!({
            "format": crate::record::FORMAT, "id": "i", "createdAt": 0, "router": "r",
            "servedBy": {"lineage": "", "adapterVersion": "", "adapterRole": "", "experiment": "",
                         "arm": "", "model": "small", "routeReason": "easy"},
            "kbGeneration": "g", "configRevision": "c", "query": "q", "answer": "a",
            "citedDocuments": [], "retrievedDocuments": [],
            "routing": {"difficulty": difficulty, "threshold": 0.5, "propensity": 1.0,
                        "features": {}},
            "labels": {"overall": "positive", "reason": "", "settled": true, "resolved": true,
                       "resolvedWithoutReopen": true, "reopened": false, "escalated": false,
                       "refusal": false, "invalidCitation": false, "retrievalFailed": false},
            "cluster": {"id": 0, "size": 1, "labelSize": 1},
        }))
        .unwrap();
        r.labels.overall = overall;
        r
    }

    #[test]
    fn mixes_parse_and_bad_ones_name_the_problem() {
        let m = Mix::parse("negative=0.3, low-confidence=0.2,novel=0.1").unwrap();
        assert_eq!((m.negative, m.low_confidence, m.novel), (0.3, 0.2, 0.1));
        assert!((m.share(Category::Rest) - 0.4).abs() < 1e-12);
        assert!(
            Mix::parse("negative=0.8,novel=0.5")
                .unwrap_err()
                .contains("more than 1")
        );
        assert!(Mix::parse("hard=0.1").unwrap_err().contains("\"hard\""));
        assert!(
            Mix::parse("negative=lots")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(Mix::parse("negative").unwrap_err().contains("name=share"));
    }

    #[test]
    fn rare_categories_are_oversampled_to_their_share() {
        // 100 records: 5 negative, 10 the router expected to fail, 85 the rest; 20 of the rest
        // novel.
        let mut records = Vec::new();
        let mut novel = Vec::new();
        for i in 0..100 {
            let (overall, difficulty) = match i {
                0..5 => (Overall::Negative, 0.2),
                5..15 => (Overall::Positive, 0.8),
                _ => (Overall::Positive, 0.2),
            };
            records.push(record(overall, difficulty));
            novel.push((15..35).contains(&i));
        }
        let mix = Mix::parse("negative=0.3,lowConfidence=0.2,novel=0.2").unwrap();
        let (drawn, report) = sample(&records, &novel, &mix, 200, 7);
        assert_eq!(drawn.len(), 200);
        assert_eq!(report.size, 200);
        let m = |c: Category| report.mix.iter().find(|m| m.category == c).unwrap().clone();
        let neg = m(Category::Negative);
        assert_eq!((neg.available, neg.drawn, neg.distinct), (5, 60, 5));
        assert!((neg.share - 0.3).abs() < 1e-9 && (neg.uniform_share - 0.05).abs() < 1e-9);
        assert_eq!(m(Category::LowConfidence).drawn, 40);
        assert_eq!(m(Category::Novel).drawn, 40);
        let rest = m(Category::Rest);
        assert_eq!((rest.available, rest.drawn, rest.distinct), (65, 60, 60));
        // Each drawn index is of its category; the same seed gives the same sample.
        for (i, c) in &drawn {
            assert_eq!(categorize(&records[*i], novel[*i]), *c);
        }
        assert_eq!(sample(&records, &novel, &mix, 200, 7).0, drawn);
        assert_ne!(sample(&records, &novel, &mix, 200, 8).0, drawn);
        // Without novelty measured, nothing is novel and its share goes to the rest.
        let (_, report) = sample(&records, &[], &mix, 200, 7);
        assert!(!report.novelty_measured);
        assert_eq!(report.mix[2].drawn, 0);
        assert_eq!(report.mix[3].drawn, 100);
    }

    #[test]
    fn novelty_is_the_distance_to_the_nearest_seen_query() {
        let seen = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let vectors = vec![vec![0.8, 0.6], vec![0.70710677, 0.70710677]];
        assert_eq!(novelty(&vectors, &seen, 0.75), [false, true]);
        assert_eq!(novelty(&vectors, &[], 0.75), [true, true]);
    }
}
