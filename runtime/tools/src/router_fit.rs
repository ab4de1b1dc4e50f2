//! `switchboard-runtime router fit`: the Router's difficulty model learned from outcomes.
//!
//! Input: flywheel exports (`switchboard-runtime export`), whose records carry the routing
//! decision each interaction was served with (features, difficulty, threshold, propensity) and
//! its outcome labels. The examples are the small model's labelled answers: unacceptable when
//! the label is negative (escalated, reopened, CSAT 1-2), acceptable when positive; each
//! weighted by the inverse of the propensity it was served small with, so the hard queries
//! exploration kept on the small model stand for every hard query sent large (seed section 10:
//! the feedback loop that starves the small model of hard cases also starves its router).
//!
//! Steps: split by assignment unit (a unit's interactions stay on one side), fit a weighted
//! logistic regression on the train side, measure it on the held-out side against the hand-set
//! weights, always-small and always-large (Brier score, log loss, calibration error, the
//! reliability curve, AUC; at a threshold: routing accuracy, false escalations, large-model
//! share, quality and cost), choose the threshold for a large-model share, a cost budget or a
//! quality target, and write `spec.difficulty` for the Router (GitOps) with the calibration the
//! Router's status shows. docs/training.md, "A router learned from outcomes".
use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize as _, Serialize};
use sha2::{Digest as _, Sha256};
use switchboard_analysis::logistic::{self, Forecast, ReliabilityBin};
use switchboard_crds::router::{Calibration, DifficultyModel as ModelSpec, DifficultyWeights};
use switchboard_flywheel::label::Overall;
use switchboard_flywheel::record::ExportRecord;
use switchboard_policy::{DifficultyModel, QueryFeatures};

/// Options of `router fit`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterFitArgs {
    /// Flywheel exports (JSONL from `switchboard-runtime export`); repeat for several.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Only the records of this Router (`<namespace>/<name>`).
    #[arg(long)]
    pub router_name: Option<String>,
    /// Share of assignment units held out for the report.
    #[arg(long, default_value_t = 0.3)]
    pub held_out_fraction: f64,
    /// L2 penalty on the weights.
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f64,
    /// Choose the threshold that sends this share of queries to the large model.
    #[arg(long, conflicts_with_all = ["cost_budget", "target_quality"])]
    pub large_share: Option<f64>,
    /// Choose the threshold whose mean cost per query (a small-model answer costs 1) stays
    /// within this budget.
    #[arg(long, conflicts_with = "target_quality")]
    pub cost_budget: Option<f64>,
    /// Choose the cheapest threshold whose expected share of acceptable answers reaches this.
    #[arg(long)]
    pub target_quality: Option<f64>,
    /// Cost of a large-model answer in small-model answers.
    #[arg(long, default_value_t = 10.0)]
    pub large_cost: f64,
    /// Acceptance rate of large-model answers, when the exports hold fewer than 20 labelled
    /// ones to measure it from (default then: 1, an upper bound the report names).
    #[arg(long)]
    pub large_acceptance: Option<f64>,
    /// Fewest labelled small-model answers to fit on.
    #[arg(long, default_value_t = 40)]
    pub min_examples: usize,
    /// A Router manifest: written to --out with `spec.difficulty` replaced (other documents
    /// of the file are kept; YAML comments are not).
    #[arg(long)]
    pub router: Option<PathBuf>,
    /// Where the Router manifest (or, without --router, the `difficulty:` block) goes
    /// (default: standard output).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Also write the full report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One labelled small-model answer.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteExample {
    /// The query's features when it was routed.
    pub features: QueryFeatures,
    /// The answer was unacceptable (negative label).
    pub unacceptable: bool,
    /// Inverse propensity of being served small (capped at [`MAX_WEIGHT`]).
    pub weight: f64,
    /// Assignment unit (or interaction id): what the split keeps together.
    pub unit: String,
    /// The threshold it was routed against (the Router's then).
    pub served_threshold: f64,
}

/// Inverse-propensity weights above this are capped (a 1% exploration share would otherwise
/// give one answer the weight of a hundred).
pub const MAX_WEIGHT: f64 = 50.0;

/// What the exports held.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inputs {
    /// Records read.
    pub records: usize,
    /// Labelled small-model answers used.
    pub examples: usize,
    /// Of them, unacceptable.
    pub unacceptable: usize,
    /// Of them, served small by exploration (weighted up).
    pub explored: usize,
    /// Labelled large-model answers (the large model's acceptance rate).
    pub large_labelled: usize,
    /// Of them, acceptable.
    pub large_acceptable: usize,
    /// Records left out, by reason.
    pub skipped: BTreeMap<String, usize>,
}

/// Reasons a policy routed small; other route reasons (forced, retrieval failure, a large-model
/// error) say nothing about the routing policy.
const POLICY_REASONS: [&str; 5] = [
    "easy",
    "difficult",
    "exploration",
    "queue_full",
    "no_large_model",
];

/// The labelled small-model examples of `records` and what was skipped.
pub fn examples_of(records: &[ExportRecord], router: Option<&str>) -> (Vec<RouteExample>, Inputs) {
    let mut inputs = Inputs {
        records: records.len(),
        ..Inputs::default()
    };
    let mut skip = |why: &str| *inputs.skipped.entry(why.to_owned()).or_default() += 1;
    let mut examples = Vec::new();
    let (mut large, mut large_ok) = (0, 0);
    for r in records {
        if router.is_some_and(|name| r.router != name) {
            skip("other router");
            continue;
        }
        let Some(routing) = r.routing else {
            skip("no routing record");
            continue;
        };
        let unacceptable = match r.labels.overall {
            Overall::Negative => true,
            Overall::Positive => false,
            Overall::Unknown => {
                skip("label unknown");
                continue;
            }
        };
        if !POLICY_REASONS.contains(&r.served_by.route_reason.as_str()) {
            skip(&format!("route reason {}", r.served_by.route_reason));
            continue;
        }
        if r.served_by.model == "large" {
            large += 1;
            large_ok += usize::from(!unacceptable);
            continue;
        }
        if routing.propensity <= 0.0 || !routing.propensity.is_finite() {
            skip("no propensity");
            continue;
        }
        examples.push(RouteExample {
            features: routing.features,
            unacceptable,
            weight: (1.0 / routing.propensity).min(MAX_WEIGHT),
            unit: r.unit.clone().unwrap_or_else(|| r.id.clone()),
            served_threshold: routing.threshold,
        });
    }
    inputs.examples = examples.len();
    inputs.unacceptable = examples.iter().filter(|e| e.unacceptable).count();
    inputs.explored = examples.iter().filter(|e| e.weight > 1.0).count();
    inputs.large_labelled = large;
    inputs.large_acceptable = large_ok;
    (examples, inputs)
}

/// Whether `unit` is on the held-out side: a stable hash of the unit, so a unit's interactions
/// stay together and a refit on a grown export keeps its old split.
pub fn held_out(unit: &str, fraction: f64) -> bool {
    let digest = Sha256::digest(format!("router-fit/{unit}").as_bytes());
    let x = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    (x as f64 / u64::MAX as f64) < fraction
}

/// A routing policy on the held-out answers at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetrics {
    /// The policy.
    pub policy: String,
    /// Its threshold (`None`: always small / always large).
    pub threshold: Option<f64>,
    /// Weighted share sent to the large model.
    pub large_share: f64,
    /// Weighted share where "send large" equals "the small model's answer is unacceptable".
    pub routing_accuracy: f64,
    /// Weighted share of queries sent large that the small model answered acceptably.
    pub false_escalation_rate: f64,
    /// Weighted share of unacceptable small-model answers that were sent large.
    pub caught: f64,
    /// Expected share of acceptable answers (sent small: the small model's outcome; sent large:
    /// the large model's acceptance rate).
    pub quality: f64,
    /// Mean cost per query (a small-model answer costs 1).
    pub cost: f64,
}

/// How well a scorer's probabilities forecast the held-out outcomes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScorerMetrics {
    /// The scorer.
    pub scorer: String,
    /// Brier score (lower is better).
    pub brier: f64,
    /// Log loss.
    pub log_loss: f64,
    /// Expected calibration error over 10 bins.
    pub calibration_error: f64,
    /// Probability that an unacceptable answer scores above an acceptable one.
    pub auc: Option<f64>,
    /// Reliability curve (10 bins).
    pub reliability: Vec<ReliabilityBin>,
    /// Cheapest threshold reaching the quality of the hand-set weights at the Router's
    /// threshold, and its cost (the "cost at equal quality").
    pub at_equal_quality: Option<PolicyMetrics>,
}

/// The report of one fit.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FitReport {
    /// What the exports held.
    pub inputs: Inputs,
    /// Train / held-out examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub held_out_examples: usize,
    /// The large model's acceptance rate used for quality, and where it comes from.
    pub large_acceptance: f64,
    /// `measured (n labelled large answers)`, `--large-acceptance`, or `assumed 1 (upper
    /// bound)`.
    pub large_acceptance_source: String,
    /// Cost of a large answer in small answers.
    pub large_cost: f64,
    /// How the threshold was chosen.
    pub threshold_rule: String,
    /// The fitted weights.
    pub weights: DifficultyWeights,
    /// The chosen threshold.
    pub threshold: f64,
    /// The hand-set weights' threshold compared against (the most common one in the records).
    pub hand_set_threshold: f64,
    /// Probability forecasts, fitted vs hand-set.
    pub scorers: Vec<ScorerMetrics>,
    /// Policies at their thresholds: fitted, hand-set, always small, always large.
    pub policies: Vec<PolicyMetrics>,
    /// What the Router carries.
    pub calibration: Calibration,
}

fn policy_metrics(
    name: &str,
    threshold: Option<f64>,
    routed_large: impl Fn(usize) -> bool,
    examples: &[&RouteExample],
    large_acceptance: f64,
    large_cost: f64,
) -> PolicyMetrics {
    let total: f64 = examples
        .iter()
        .map(|e| e.weight)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let (mut large, mut correct, mut false_esc, mut bad, mut caught, mut quality) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, e) in examples.iter().enumerate() {
        let w = e.weight;
        let to_large = routed_large(i);
        if to_large {
            large += w;
            quality += w * large_acceptance;
            if !e.unacceptable {
                false_esc += w;
            }
        } else if !e.unacceptable {
            quality += w;
        }
        if to_large == e.unacceptable {
            correct += w;
        }
        if e.unacceptable {
            bad += w;
            if to_large {
                caught += w;
            }
        }
    }
    let large_share = large / total;
    PolicyMetrics {
        policy: name.to_owned(),
        threshold,
        large_share,
        routing_accuracy: correct / total,
        false_escalation_rate: false_esc / total,
        caught: if bad > 0.0 { caught / bad } else { 0.0 },
        quality: quality / total,
        cost: (1.0 - large_share) + large_share * large_cost,
    }
}

/// The policy "large above `threshold`" of `scores`.
fn at_threshold(
    name: &str,
    scores: &[f64],
    threshold: f64,
    examples: &[&RouteExample],
    large_acceptance: f64,
    large_cost: f64,
) -> PolicyMetrics {
    policy_metrics(
        name,
        Some(threshold),
        |i| scores[i] > threshold,
        examples,
        large_acceptance,
        large_cost,
    )
}

/// Candidate thresholds: just below each distinct score, and 1 (everything small).
fn candidates(scores: &[f64]) -> Vec<f64> {
    let mut c: Vec<f64> = scores.iter().map(|s| (s - 1e-9).max(0.0)).collect();
    c.push(1.0);
    c.sort_by(f64::total_cmp);
    c.dedup();
    c
}

/// How the threshold is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdRule {
    /// This weighted share goes large.
    LargeShare(f64),
    /// Mean cost per query at most this.
    CostBudget(f64),
    /// Cheapest reaching this expected quality.
    Quality(f64),
}

impl ThresholdRule {
    fn describe(self) -> String {
        match self {
            Self::LargeShare(s) => format!("large-model share {:.1}%", s * 100.0),
            Self::CostBudget(c) => format!("mean cost per query at most {c}"),
            Self::Quality(q) => format!("cheapest reaching quality {:.1}%", q * 100.0),
        }
    }
}

/// The threshold `rule` picks for `scores` on `examples`: the lowest threshold (most large
/// traffic) within a share or budget, the highest (least large traffic) reaching a quality.
pub fn choose_threshold(
    rule: ThresholdRule,
    scores: &[f64],
    examples: &[&RouteExample],
    large_acceptance: f64,
    large_cost: f64,
) -> Option<f64> {
    let eval = |t| at_threshold("", scores, t, examples, large_acceptance, large_cost);
    let c = candidates(scores);
    match rule {
        ThresholdRule::LargeShare(share) => c
            .into_iter()
            .find(|t| eval(*t).large_share <= share + 1e-12),
        ThresholdRule::CostBudget(budget) => {
            c.into_iter().find(|t| eval(*t).cost <= budget + 1e-12)
        }
        ThresholdRule::Quality(q) => c.into_iter().rev().find(|t| eval(*t).quality >= q - 1e-12),
    }
}

/// Weighted AUC: the probability that an unacceptable answer scores above an acceptable one
/// (ties count half).
pub fn auc(scores: &[f64], examples: &[&RouteExample]) -> Option<f64> {
    let (mut num, mut pos, mut neg) = (0.0, 0.0, 0.0);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Sweep ascending; at each group of equal scores, positives beat all negatives seen before.
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let (mut gp, mut gn) = (0.0, 0.0);
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            let e = examples[order[j]];
            if e.unacceptable {
                gp += e.weight;
            } else {
                gn += e.weight;
            }
            j += 1;
        }
        num += gp * neg + 0.5 * gp * gn;
        pos += gp;
        neg += gn;
        i = j;
    }
    (pos > 0.0 && neg > 0.0).then(|| num / (pos * neg))
}

fn scorer_metrics(
    name: &str,
    scores: &[f64],
    examples: &[&RouteExample],
    target_quality: f64,
    large_acceptance: f64,
    large_cost: f64,
) -> ScorerMetrics {
    let forecasts: Vec<Forecast> = scores
        .iter()
        .zip(examples)
        .map(|(p, e)| (*p, e.unacceptable, e.weight))
        .collect();
    let at_equal_quality = choose_threshold(
        ThresholdRule::Quality(target_quality),
        scores,
        examples,
        large_acceptance,
        large_cost,
    )
    .map(|t| at_threshold(name, scores, t, examples, large_acceptance, large_cost));
    ScorerMetrics {
        scorer: name.to_owned(),
        brier: logistic::brier(&forecasts).unwrap_or(f64::NAN),
        log_loss: logistic::log_loss(&forecasts).unwrap_or(f64::NAN),
        calibration_error: logistic::calibration_error(&forecasts, 10).unwrap_or(f64::NAN),
        auc: auc(scores, examples),
        reliability: logistic::reliability(&forecasts, 10),
        at_equal_quality,
    }
}

/// Fitting settings.
#[derive(Clone, Copy, Debug)]
pub struct FitSettings {
    /// Held-out share of units.
    pub held_out_fraction: f64,
    /// L2 penalty.
    pub l2: f64,
    /// Threshold rule.
    pub rule: ThresholdRule,
    /// Large answer cost.
    pub large_cost: f64,
    /// `--large-acceptance`.
    pub large_acceptance: Option<f64>,
    /// Fewest examples.
    pub min_examples: usize,
}

/// Fits, measures and calibrates: the pure core of `router fit`.
pub fn fit(
    examples: &[RouteExample],
    inputs: Inputs,
    settings: &FitSettings,
    fitted_at: String,
) -> Result<FitReport> {
    if examples.len() < settings.min_examples {
        bail!(
            "{} labelled small-model answers with a routing record (need at least {}: --min-examples); skipped: {:?}",
            examples.len(),
            settings.min_examples,
            inputs.skipped
        );
    }
    let (held, train): (Vec<&RouteExample>, Vec<&RouteExample>) = examples
        .iter()
        .partition(|e| held_out(&e.unit, settings.held_out_fraction));
    if held.is_empty() || train.is_empty() {
        bail!(
            "--held-out-fraction {} leaves {} train and {} held-out examples: both sides need some",
            settings.held_out_fraction,
            train.len(),
            held.len()
        );
    }
    for (side, set) in [("train", &train), ("held-out", &held)] {
        if set.iter().all(|e| e.unacceptable) || set.iter().all(|e| !e.unacceptable) {
            bail!(
                "the {side} examples are all {}: nothing to learn which queries the small model fails",
                if set[0].unacceptable {
                    "unacceptable"
                } else {
                    "acceptable"
                }
            );
        }
    }
    let train_rows: Vec<(QueryFeatures, bool, f64)> = train
        .iter()
        .map(|e| (e.features, e.unacceptable, e.weight))
        .collect();
    let model = DifficultyModel::fit(&train_rows, settings.l2);
    let hand = DifficultyModel::default();

    let (large_acceptance, source) = if inputs.large_labelled >= 20 {
        (
            inputs.large_acceptable as f64 / inputs.large_labelled as f64,
            format!(
                "measured ({} labelled large-model answers)",
                inputs.large_labelled
            ),
        )
    } else if let Some(p) = settings.large_acceptance {
        (p, "--large-acceptance".to_owned())
    } else {
        (
            1.0,
            "assumed 1 (an upper bound: the exports hold no labelled large-model answers)"
                .to_owned(),
        )
    };

    let score = |m: &DifficultyModel, set: &[&RouteExample]| -> Vec<f64> {
        set.iter().map(|e| m.estimate(e.features).score).collect()
    };
    let train_scores = score(&model, &train);
    let threshold = choose_threshold(
        settings.rule,
        &train_scores,
        &train,
        large_acceptance,
        settings.large_cost,
    )
    .with_context(|| {
        format!(
            "no threshold meets {} on the train examples",
            settings.rule.describe()
        )
    })?;

    // The hand-set weights at the threshold the records were routed with (the most common).
    let hand_threshold = served_threshold(examples);
    let fitted_held = score(&model, &held);
    let hand_held = score(&hand, &held);
    let cost = settings.large_cost;
    let hand_policy = at_threshold(
        "hand-set weights",
        &hand_held,
        hand_threshold,
        &held,
        large_acceptance,
        cost,
    );
    let fitted_policy = at_threshold(
        "fitted",
        &fitted_held,
        threshold,
        &held,
        large_acceptance,
        cost,
    );
    let policies = vec![
        fitted_policy.clone(),
        hand_policy.clone(),
        policy_metrics(
            "always small",
            None,
            |_| false,
            &held,
            large_acceptance,
            cost,
        ),
        policy_metrics(
            "always large",
            None,
            |_| true,
            &held,
            large_acceptance,
            cost,
        ),
    ];
    let target = hand_policy.quality;
    let fitted_scorer = scorer_metrics(
        "fitted",
        &fitted_held,
        &held,
        target,
        large_acceptance,
        cost,
    );
    let scorers = vec![
        fitted_scorer.clone(),
        scorer_metrics(
            "hand-set weights",
            &hand_held,
            &held,
            target,
            large_acceptance,
            cost,
        ),
    ];
    let calibration = Calibration {
        fitted_at,
        train_examples: i64::try_from(train.len()).unwrap_or(i64::MAX),
        held_out_examples: i64::try_from(held.len()).unwrap_or(i64::MAX),
        held_out_accuracy: round4(fitted_policy.routing_accuracy),
        brier_score: round4(fitted_scorer.brier),
        large_share: Some(round4(fitted_policy.large_share)),
    };
    Ok(FitReport {
        inputs,
        train_examples: train.len(),
        held_out_examples: held.len(),
        large_acceptance,
        large_acceptance_source: source,
        large_cost: cost,
        threshold_rule: settings.rule.describe(),
        weights: round_weights(model.into()),
        threshold: round4(threshold),
        hand_set_threshold: hand_threshold,
        scorers,
        policies,
        calibration,
    })
}

/// The most common threshold of the examples (ties: the lowest); 0.5 (the CRD's default) when
/// there are none.
fn served_threshold(examples: &[RouteExample]) -> f64 {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for e in examples {
        *counts.entry(e.served_threshold.to_bits()).or_default() += 1;
    }
    counts
        .iter()
        .max_by(|a, b| {
            a.1.cmp(b.1)
                .then(f64::from_bits(*b.0).total_cmp(&f64::from_bits(*a.0)))
        })
        .map_or(0.5, |(bits, _)| f64::from_bits(*bits))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn round_weights(w: DifficultyWeights) -> DifficultyWeights {
    DifficultyWeights::from_array(w.to_array().map(round4))
}

/// Reads flywheel export records (a line that is not one is an error naming the file and line;
/// a record of another format version is refused).
pub fn read_records(path: &Path) -> Result<Vec<ExportRecord>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: ExportRecord = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: not a flywheel export record (switchboard-runtime export)",
                path.display(),
                n + 1
            )
        })?;
        if record.format != switchboard_flywheel::record::FORMAT {
            bail!(
                "{}:{}: format {:?}, this build reads {:?}",
                path.display(),
                n + 1,
                record.format,
                switchboard_flywheel::record::FORMAT
            );
        }
        out.push(record);
    }
    Ok(out)
}

fn rule(args: &RouterFitArgs) -> Result<ThresholdRule> {
    let unit = |name: &str, x: f64| -> Result<f64> {
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            bail!("{name} {x}: must be between 0 and 1")
        }
    };
    Ok(
        match (args.large_share, args.cost_budget, args.target_quality) {
            (Some(s), _, _) => ThresholdRule::LargeShare(unit("--large-share", s)?),
            (_, Some(c), _) => {
                if c.is_nan() || c < 1.0 {
                    bail!("--cost-budget {c}: at least 1 (every query answered small)");
                }
                ThresholdRule::CostBudget(c)
            }
            (_, _, Some(q)) => ThresholdRule::Quality(unit("--target-quality", q)?),
            _ => ThresholdRule::LargeShare(0.2),
        },
    )
}

/// The `spec.difficulty` a Router carries after the fit.
pub fn difficulty_spec(report: &FitReport) -> switchboard_crds::router::Difficulty {
    switchboard_crds::router::Difficulty {
        threshold: report.threshold,
        model: Some(ModelSpec {
            weights: report.weights,
            calibration: report.calibration.clone(),
        }),
    }
}

/// `documents` with every Router's `spec.difficulty` replaced (or `name`'s only).
pub fn patch_routers(
    documents: Vec<serde_yaml::Value>,
    difficulty: &switchboard_crds::router::Difficulty,
    name: Option<&str>,
) -> Result<(Vec<serde_yaml::Value>, usize)> {
    let value = serde_yaml::to_value(difficulty).context("writing spec.difficulty")?;
    let mut patched = 0;
    let mut out = Vec::with_capacity(documents.len());
    for mut doc in documents {
        let is_router = doc.get("kind").and_then(|k| k.as_str()) == Some("Router");
        let doc_name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let wanted = name.is_none_or(|n| {
            let short = n.rsplit('/').next().unwrap_or(n);
            doc_name.as_deref() == Some(short)
        });
        if is_router && wanted {
            let spec = doc
                .get_mut("spec")
                .and_then(|s| s.as_mapping_mut())
                .context("a Router without spec")?;
            spec.insert("difficulty".into(), value.clone());
            patched += 1;
        }
        out.push(doc);
    }
    Ok((out, patched))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn print_report(r: &FitReport) {
    eprintln!(
        "router fit: {} labelled small-model answers ({} unacceptable, {} explored) of {} records; train {} / held out {}",
        r.inputs.examples,
        r.inputs.unacceptable,
        r.inputs.explored,
        r.inputs.records,
        r.train_examples,
        r.held_out_examples
    );
    if !r.inputs.skipped.is_empty() {
        eprintln!("skipped: {:?}", r.inputs.skipped);
    }
    eprintln!(
        "large model: acceptance {} ({}), cost {}x",
        pct(r.large_acceptance),
        r.large_acceptance_source,
        r.large_cost
    );
    eprintln!("threshold: {} ({})", r.threshold, r.threshold_rule);
    eprintln!();
    eprintln!(
        "held out          | brier  | log loss | calib. err | AUC   | cost at equal quality (large share)"
    );
    for s in &r.scorers {
        eprintln!(
            "{:<17} | {:.4} | {:.4}   | {:.4}     | {:<5} | {}",
            s.scorer,
            s.brier,
            s.log_loss,
            s.calibration_error,
            s.auc.map_or("-".to_owned(), |a| format!("{a:.3}")),
            s.at_equal_quality
                .as_ref()
                .map_or("-".to_owned(), |p| format!(
                    "{:.2} ({})",
                    p.cost,
                    pct(p.large_share)
                ))
        );
    }
    eprintln!();
    eprintln!(
        "policy            | threshold | large | routing acc. | false esc. | caught | quality | cost"
    );
    for p in &r.policies {
        eprintln!(
            "{:<17} | {:<9} | {:<5} | {:<12} | {:<10} | {:<6} | {:<7} | {:.2}",
            p.policy,
            p.threshold.map_or("-".to_owned(), |t| format!("{t:.3}")),
            pct(p.large_share),
            pct(p.routing_accuracy),
            pct(p.false_escalation_rate),
            pct(p.caught),
            pct(p.quality),
            p.cost
        );
    }
}

/// `switchboard-runtime router fit`.
pub fn run(args: &RouterFitArgs) -> Result<()> {
    let rule = rule(args)?;
    if !(0.0 < args.held_out_fraction && args.held_out_fraction < 1.0) {
        bail!(
            "--held-out-fraction {}: must be between 0 and 1 (exclusive)",
            args.held_out_fraction
        );
    }
    if args.large_cost.is_nan() || args.large_cost < 1.0 {
        bail!("--large-cost {}: at least 1", args.large_cost);
    }
    if let Some(p) = args.large_acceptance
        && !(0.0..=1.0).contains(&p)
    {
        bail!("--large-acceptance {p}: must be between 0 and 1");
    }
    // Read the Router manifest first: a bad path fails before the fit.
    let documents = args
        .router
        .as_deref()
        .map(|path| -> Result<Vec<serde_yaml::Value>> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::Deserializer::from_str(&text)
                .map(serde_yaml::Value::deserialize)
                .filter(|d| !matches!(d, Ok(serde_yaml::Value::Null)))
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing {}", path.display()))
        })
        .transpose()?;
    let mut records = Vec::new();
    for path in &args.data {
        records.extend(read_records(path)?);
    }
    let (examples, inputs) = examples_of(&records, args.router_name.as_deref());
    let settings = FitSettings {
        held_out_fraction: args.held_out_fraction,
        l2: args.l2,
        rule,
        large_cost: args.large_cost,
        large_acceptance: args.large_acceptance,
        min_examples: args.min_examples,
    };
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the time")?;
    let report = fit(&examples, inputs, &settings, now)?;
    print_report(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let difficulty = difficulty_spec(&report);
    let text = match documents {
        Some(docs) => {
            let (docs, patched) = patch_routers(docs, &difficulty, args.router_name.as_deref())?;
            if patched == 0 {
                bail!(
                    "{}: no Router{} in it",
                    args.router.as_deref().unwrap_or(Path::new("-")).display(),
                    args.router_name
                        .as_deref()
                        .map(|n| format!(" named {n}"))
                        .unwrap_or_default()
                );
            }
            let mut text = String::new();
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    text.push_str("---\n");
                }
                text.push_str(&serde_yaml::to_string(d)?);
            }
            text
        }
        None => serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
            "difficulty".into(),
            serde_yaml::to_value(&difficulty)?,
        )]))?,
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A flywheel record of a routed, labelled answer.
    fn record(
        id: usize,
        features: QueryFeatures,
        overall: &str,
        model: &str,
        reason: &str,
        propensity: f64,
    ) -> ExportRecord {
        serde_json::from_value(json!({
            "format": switchboard_flywheel::record::FORMAT,
            "id": format!("i-{id}"), "createdAt": 0, "router": "support/helpdesk",
            "unit": format!("sha256:{id:016x}"),
            "servedBy": {"lineage": "", "adapterVersion": "", "adapterRole": "", "experiment": "",
                         "arm": "", "model": model, "routeReason": reason},
            "kbGeneration": "gen-1", "configRevision": "r1", "query": "q", "answer": "a",
            "citedDocuments": [], "retrievedDocuments": [],
            "routing": {"difficulty": 0.4, "threshold": 0.5, "propensity": propensity,
                        "features": features},
            "labels": {"overall": overall, "reason": "", "settled": true, "resolved": false,
                       "resolvedWithoutReopen": false, "reopened": false, "escalated": false,
                       "refusal": false, "invalidCitation": false, "retrievalFailed": false},
            "cluster": {"id": id, "size": 1, "labelSize": 1},
        }))
        .unwrap()
    }

    /// Outcomes where short, vague queries fail (the opposite of what the hand-set weights
    /// assume about length) and a weak best passage fails too.
    fn outcomes(n: usize) -> Vec<ExportRecord> {
        (0..n)
            .map(|i| {
                let short = i % 3 == 0;
                let weak = i % 5 < 2;
                let features = QueryFeatures {
                    length: if short {
                        0.1
                    } else {
                        0.5 + (i % 7) as f64 / 20.0
                    },
                    clauses: if short { 0.0 } else { 0.5 },
                    weak_match: if weak { 0.7 } else { 0.3 },
                    ..QueryFeatures::default()
                };
                // Deterministic "noise": a few answers go the other way.
                let fails = (short && (weak || i % 4 == 0)) || i % 17 == 0;
                record(
                    i,
                    features,
                    if fails { "negative" } else { "positive" },
                    "small",
                    "easy",
                    1.0,
                )
            })
            .collect()
    }

    fn settings(rule: ThresholdRule) -> FitSettings {
        FitSettings {
            held_out_fraction: 0.3,
            l2: 1e-3,
            rule,
            large_cost: 10.0,
            large_acceptance: Some(0.99),
            min_examples: 40,
        }
    }

    #[test]
    fn only_labelled_policy_routed_small_answers_are_examples() {
        let f = QueryFeatures::default();
        let mut records = vec![
            record(1, f, "negative", "small", "easy", 1.0),
            record(2, f, "positive", "small", "exploration", 0.05),
            record(3, f, "unknown", "small", "easy", 1.0),
            record(4, f, "positive", "small", "forced", 1.0),
            record(5, f, "positive", "large", "difficult", 0.95),
            record(6, f, "negative", "small", "retrieval_failure", 1.0),
        ];
        let mut old = record(7, f, "positive", "small", "easy", 1.0);
        old.routing = None;
        records.push(old);
        let mut other = record(8, f, "positive", "small", "easy", 1.0);
        other.router = "support/other".into();
        records.push(other);
        let (examples, inputs) = examples_of(&records, Some("support/helpdesk"));
        assert_eq!(examples.len(), 2);
        assert!(examples[0].unacceptable && examples[0].weight == 1.0);
        // Explored: a difficult query kept small stands for the 1/0.05 sent large.
        assert!(!examples[1].unacceptable && (examples[1].weight - 20.0).abs() < 1e-9);
        assert_eq!((inputs.large_labelled, inputs.large_acceptable), (1, 1));
        assert_eq!(inputs.explored, 1);
        for why in [
            "label unknown",
            "route reason forced",
            "route reason retrieval_failure",
            "no routing record",
            "other router",
        ] {
            assert_eq!(
                inputs.skipped.get(why),
                Some(&1),
                "{why}: {:?}",
                inputs.skipped
            );
        }
    }

    #[test]
    fn the_fitted_model_beats_the_hand_set_weights_on_held_out_outcomes() {
        let records = outcomes(600);
        let (examples, inputs) = examples_of(&records, None);
        let report = fit(
            &examples,
            inputs,
            &settings(ThresholdRule::LargeShare(0.25)),
            "2026-12-08T03:00:00Z".into(),
        )
        .unwrap();
        assert_eq!(report.train_examples + report.held_out_examples, 600);
        assert!(
            report.held_out_examples > 120,
            "{}",
            report.held_out_examples
        );
        let (fitted, hand) = (&report.scorers[0], &report.scorers[1]);
        assert!(fitted.auc.unwrap() > 0.85, "{fitted:?}");
        assert!(fitted.auc.unwrap() > hand.auc.unwrap() + 0.2, "{hand:?}");
        assert!(fitted.brier < hand.brier, "{fitted:?} {hand:?}");
        // A logistic model of an interaction ("short and weak") is not perfectly calibrated.
        assert!(fitted.calibration_error < 0.15, "{fitted:?}");
        // Short queries are harder here: the fit says so.
        assert!(report.weights.length < 0.0, "{:?}", report.weights);
        assert!(report.weights.weak_match > 0.0, "{:?}", report.weights);
        // The threshold holds the large share it was chosen for (train side), about so on the
        // held-out side, and the policies add up.
        let p = &report.policies[0];
        // (Scores come in groups of equal features, so the share moves in steps.)
        assert!(p.large_share > 0.0 && p.large_share <= 0.35, "{p:?}");
        assert_eq!(report.calibration.large_share, Some(round4(p.large_share)));
        let small = &report.policies[2];
        let large = &report.policies[3];
        assert_eq!((small.large_share, small.cost), (0.0, 1.0));
        assert_eq!((large.large_share, large.cost), (1.0, 10.0));
        assert!((large.quality - 0.99).abs() < 1e-9);
        assert!(p.quality > small.quality && p.cost < large.cost, "{p:?}");
        assert!(p.routing_accuracy > report.policies[1].routing_accuracy);
        // At the hand-set policy's quality, the fitted model is cheaper.
        let (fq, hq) = (
            fitted.at_equal_quality.as_ref().unwrap(),
            hand.at_equal_quality.as_ref().unwrap(),
        );
        assert!(fq.cost < hq.cost, "{fq:?} {hq:?}");
        assert!(fq.quality >= report.policies[1].quality - 1e-9);
        assert_eq!(report.calibration.fitted_at, "2026-12-08T03:00:00Z");
        assert_eq!(report.hand_set_threshold, 0.5);
    }

    #[test]
    fn thresholds_follow_the_rule() {
        let (examples, inputs) = examples_of(&outcomes(300), None);
        for rule in [
            ThresholdRule::CostBudget(2.0),
            ThresholdRule::Quality(0.9),
            ThresholdRule::LargeShare(0.0),
        ] {
            let r = fit(&examples, inputs.clone(), &settings(rule), "t".into()).unwrap();
            let train: Vec<&RouteExample> = examples
                .iter()
                .filter(|e| !held_out(&e.unit, 0.3))
                .collect();
            let model = DifficultyModel::from(r.weights);
            let scores: Vec<f64> = train
                .iter()
                .map(|e| model.estimate(e.features).score)
                .collect();
            let p = at_threshold("", &scores, r.threshold, &train, 0.99, 10.0);
            match rule {
                ThresholdRule::CostBudget(c) => assert!(p.cost <= c + 1e-3, "{p:?}"),
                ThresholdRule::Quality(q) => assert!(p.quality >= q - 1e-3, "{p:?}"),
                ThresholdRule::LargeShare(_) => assert_eq!(p.large_share, 0.0),
            }
        }
        // Too few examples, or nothing that fails: a clear error.
        let err = fit(
            &examples[..10],
            inputs.clone(),
            &settings(ThresholdRule::LargeShare(0.2)),
            "t".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("10 labelled small-model answers"), "{err}");
        let fine: Vec<RouteExample> = examples
            .iter()
            .cloned()
            .map(|mut e| {
                e.unacceptable = false;
                e
            })
            .collect();
        let err = fit(
            &fine,
            inputs,
            &settings(ThresholdRule::LargeShare(0.2)),
            "t".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("all acceptable"), "{err}");
    }

    #[test]
    fn auc_counts_pairs_and_ties() {
        let e = |unacceptable| RouteExample {
            features: QueryFeatures::default(),
            unacceptable,
            weight: 1.0,
            unit: String::new(),
            served_threshold: 0.5,
        };
        let set = [e(false), e(true), e(false), e(true)];
        let refs: Vec<&RouteExample> = set.iter().collect();
        assert_eq!(auc(&[0.1, 0.9, 0.2, 0.8], &refs), Some(1.0));
        assert_eq!(auc(&[0.9, 0.1, 0.8, 0.2], &refs), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &refs), Some(0.5));
        assert_eq!(auc(&[0.5], &refs[..1]), None);
    }

    #[test]
    fn the_router_manifest_gets_the_fitted_difficulty_and_still_parses() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/router.yaml"),
        )
        .unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(serde_yaml::Value::deserialize)
            .collect::<Result<_, _>>()
            .unwrap();
        let (examples, inputs) = examples_of(&outcomes(300), None);
        let report = fit(
            &examples,
            inputs,
            &settings(ThresholdRule::LargeShare(0.2)),
            "2026-12-08T03:00:00Z".into(),
        )
        .unwrap();
        let difficulty = difficulty_spec(&report);
        let (patched, n) = patch_routers(docs.clone(), &difficulty, None).unwrap();
        assert_eq!(n, 1);
        let router: switchboard_crds::Router = serde_yaml::from_value(
            patched
                .into_iter()
                .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("Router"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(router.spec.difficulty, difficulty);
        assert_eq!(router.spec.difficulty.threshold, report.threshold);
        let (_, none) = patch_routers(docs, &difficulty, Some("support/nobody")).unwrap();
        assert_eq!(none, 0);
    }
}
