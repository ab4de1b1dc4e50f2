//! `kubectl switchboard plan`: how many units each variant of an experiment needs to detect its
//! minimum detectable effect, and how long the traffic takes to provide them. Pure computation; it
//! does not talk to the cluster.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use serde::Serialize;
use switchboard_analysis::planning::{
    Alternative, Correction, Effect, Eta, Metric, Plan, PlanInputs, estimate_eta, plan,
};

use crate::output::{OutputFormat, parse_scaled, short, thousands};

/// Inputs of `plan`. Rates, effects and probabilities accept fractions (0.15), percentages (15%)
/// or percentage points (-1pp).
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("metric").required(true).args(["baseline_rate", "baseline_mean"])),
    group(ArgGroup::new("mde").required(true).args(["mde_absolute", "mde_relative"])),
    after_help = "Example (the escalation-rate worked example):\n  \
        kubectl switchboard plan --baseline-rate 15% --mde-absolute -1pp --traffic-per-day 10000"
)]
pub struct PlanArgs {
    /// Control's rate of a proportion metric, e.g. the escalation rate: 0.15 or 15%.
    #[arg(long, value_parser = parse_scaled)]
    baseline_rate: Option<f64>,
    /// Control's mean of a mean metric, e.g. CSAT; needs --sd.
    #[arg(long, requires = "sd", allow_negative_numbers = true)]
    baseline_mean: Option<f64>,
    /// Standard deviation of a mean metric per unit.
    #[arg(long, requires = "baseline_mean")]
    sd: Option<f64>,
    /// Minimum detectable effect in the metric's units, negative for a decrease: -0.01 or -1pp is
    /// one point lower.
    #[arg(long, value_parser = parse_scaled, allow_hyphen_values = true)]
    mde_absolute: Option<f64>,
    /// Minimum detectable effect relative to the baseline: -0.05 or -5%.
    #[arg(long, value_parser = parse_scaled, allow_hyphen_values = true)]
    mde_relative: Option<f64>,
    /// Family-wise significance level.
    #[arg(long, value_parser = parse_scaled, default_value = "0.05")]
    alpha: f64,
    /// Probability of detecting the effect when it is there.
    #[arg(long, value_parser = parse_scaled, default_value = "0.8")]
    power: f64,
    /// Treatment variants, each compared with the control.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    variants: u32,
    /// Test in the effect's direction only (default: two-sided).
    #[arg(long)]
    one_sided: bool,
    /// How alpha is shared among several variants.
    #[arg(long, value_enum, default_value_t = CorrectionArg::Bonferroni)]
    correction: CorrectionArg,
    /// Correlation ρ between the metric and its pre-period covariate, for CUPED (variance × (1 − ρ²)).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    cuped_correlation: f64,
    /// Share of units whose outcome is observed, e.g. a 20% CSAT response rate: 0.2 or 20%.
    #[arg(long, value_parser = parse_scaled, default_value = "1")]
    outcome_coverage: f64,
    /// Units (interactions, users) entering the experiment per day, all arms together.
    #[arg(long)]
    traffic_per_day: Option<f64>,
    /// The same per hour.
    #[arg(long, conflicts_with = "traffic_per_day")]
    traffic_per_hour: Option<f64>,
    /// Traffic weight of each arm, control first, comma-separated (default: even split): 90,10.
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CorrectionArg {
    Bonferroni,
    Sidak,
    None,
}

/// What `plan -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    /// The sample size.
    pub plan: Plan,
    /// When the traffic provides it; absent without a traffic rate.
    pub eta: Option<Eta>,
}

impl PlanArgs {
    fn inputs(&self) -> Result<PlanInputs> {
        let metric = match (self.baseline_rate, self.baseline_mean, self.sd) {
            (Some(baseline_rate), _, _) => Metric::Proportion { baseline_rate },
            (None, Some(baseline_mean), Some(standard_deviation)) => Metric::Mean {
                baseline_mean,
                standard_deviation,
            },
            _ => anyhow::bail!("give --baseline-rate, or --baseline-mean with --sd"),
        };
        let effect = match (self.mde_absolute, self.mde_relative) {
            (Some(absolute), _) => Effect::Absolute(absolute),
            (None, Some(relative)) => Effect::Relative(relative),
            (None, None) => anyhow::bail!("give --mde-absolute or --mde-relative"),
        };
        let rho = self.cuped_correlation;
        anyhow::ensure!(
            rho.is_finite() && rho.abs() < 1.0,
            "--cuped-correlation must lie strictly between -1 and 1, got {rho}"
        );
        Ok(PlanInputs {
            alpha: self.alpha,
            power: self.power,
            treatment_variants: self.variants,
            alternative: if self.one_sided {
                Alternative::OneSided
            } else {
                Alternative::TwoSided
            },
            correction: match self.correction {
                CorrectionArg::Bonferroni => Correction::Bonferroni,
                CorrectionArg::Sidak => Correction::Sidak,
                CorrectionArg::None => Correction::None,
            },
            variance_reduction: rho * rho,
            outcome_coverage: self.outcome_coverage,
            ..PlanInputs::new(metric, effect)
        })
    }

    fn units_per_day(&self) -> Option<f64> {
        self.traffic_per_day
            .or(self.traffic_per_hour.map(|per_hour| per_hour * 24.0))
    }
}

/// Computes the plan (and ETA when a traffic rate is given) and prints it.
pub fn run(args: &PlanArgs, format: OutputFormat, out: &mut dyn Write) -> Result<()> {
    let report = compute(args)?;
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        OutputFormat::Text => out.write_all(render_text(&report).as_bytes())?,
    }
    Ok(())
}

fn compute(args: &PlanArgs) -> Result<PlanReport> {
    let plan = plan(&args.inputs()?).context("cannot plan the experiment")?;
    let eta = match args.units_per_day() {
        Some(units_per_day) => {
            let even = vec![1.0; plan.arms as usize];
            let weights = args.weights.as_ref().unwrap_or(&even);
            anyhow::ensure!(
                weights.len() == plan.arms as usize,
                "--weights needs one weight per arm ({} = control + {} variant(s)), got {}",
                plan.arms,
                plan.comparisons,
                weights.len()
            );
            Some(
                estimate_eta(plan.units_per_variant, units_per_day, weights)
                    .context("cannot estimate the duration")?,
            )
        }
        None => None,
    };
    Ok(PlanReport { plan, eta })
}

fn render_text(report: &PlanReport) -> String {
    let plan = &report.plan;
    let inputs = &plan.inputs;
    let mut text = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(text, "{label:<18}{value}");
    };
    let relative = plan
        .relative_effect
        .map(|r| format!(" ({:+.2}% relative)", r * 100.0))
        .unwrap_or_default();
    match inputs.metric {
        Metric::Proportion { .. } => {
            line(
                "Metric",
                format!("proportion, baseline {:.2}%", plan.baseline * 100.0),
            );
            line(
                "Minimum effect",
                format!(
                    "{:+.2} points{relative}: {:.2}% -> {:.2}%",
                    plan.absolute_effect * 100.0,
                    plan.baseline * 100.0,
                    plan.target * 100.0
                ),
            );
        }
        Metric::Mean {
            standard_deviation, ..
        } => {
            line(
                "Metric",
                format!(
                    "mean, baseline {}, sd {}",
                    short(plan.baseline),
                    short(standard_deviation)
                ),
            );
            let sign = if plan.absolute_effect >= 0.0 { "+" } else { "" };
            line(
                "Minimum effect",
                format!(
                    "{sign}{}{relative}: {} -> {}",
                    short(plan.absolute_effect),
                    short(plan.baseline),
                    short(plan.target)
                ),
            );
        }
    }
    let sides = match inputs.alternative {
        Alternative::TwoSided => "two-sided",
        Alternative::OneSided => "one-sided",
    };
    let mut test = format!(
        "{sides}, alpha {}, power {:.0}%",
        inputs.alpha,
        inputs.power * 100.0
    );
    if plan.comparisons > 1 {
        let correction = match inputs.correction {
            Correction::Bonferroni => "Bonferroni",
            Correction::Sidak => "Sidak",
            Correction::None => "no correction",
        };
        let _ = write!(
            test,
            "; alpha {:.4} per comparison ({correction}, {} variants vs control)",
            plan.alpha_per_comparison, plan.comparisons
        );
    }
    line("Test", test);
    if inputs.variance_reduction > 0.0 {
        line(
            "CUPED",
            format!(
                "variance x {:.2} (rho {:.2})",
                1.0 - inputs.variance_reduction,
                inputs.variance_reduction.sqrt()
            ),
        );
    }
    if inputs.outcome_coverage < 1.0 {
        line(
            "Outcomes",
            format!(
                "{:.0}% of units report one: {} outcomes per variant",
                inputs.outcome_coverage * 100.0,
                thousands(plan.outcomes_per_variant)
            ),
        );
    }
    line(
        "Per variant",
        format!("{} units", thousands(plan.units_per_variant)),
    );
    line(
        "Arms",
        format!(
            "{} (control + {} variant{})",
            plan.arms,
            plan.comparisons,
            if plan.comparisons == 1 { "" } else { "s" }
        ),
    );
    line("Total", format!("{} units", thousands(plan.total_units)));
    match &report.eta {
        Some(eta) => {
            let even = eta.shares.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-12);
            let split = if even {
                "even split".to_owned()
            } else {
                format!(
                    "arm {} gets {:.1}%",
                    eta.limiting_arm,
                    eta.shares[eta.limiting_arm] * 100.0
                )
            };
            line(
                "ETA",
                format!(
                    "{:.1} days ({:.0} h) at {} units/day, {split}",
                    eta.days,
                    eta.days * 24.0,
                    thousands(eta.units_per_day.round() as u64)
                ),
            );
        }
        None => line(
            "ETA",
            "give --traffic-per-day or --traffic-per-hour".to_owned(),
        ),
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        args: PlanArgs,
    }

    fn report(argv: &[&str]) -> Result<PlanReport> {
        let harness = Harness::try_parse_from(std::iter::once("plan").chain(argv.iter().copied()))?;
        compute(&harness.args)
    }

    #[test]
    fn the_worked_example() {
        let report = report(&[
            "--baseline-rate",
            "15%",
            "--mde-absolute",
            "-1pp",
            "--traffic-per-day",
            "10000",
        ])
        .unwrap();
        assert_eq!(report.plan.units_per_variant, 19_461);
        let text = render_text(&report);
        assert!(text.contains("Per variant       19,461 units"), "{text}");
        assert!(
            text.contains("-1.00 points (-6.67% relative): 15.00% -> 14.00%"),
            "{text}"
        );
        assert!(
            text.contains("ETA               3.9 days (93 h) at 10,000 units/day, even split"),
            "{text}"
        );
    }

    #[test]
    fn several_variants_cuped_and_uneven_weights() {
        let report = report(&[
            "--baseline-mean",
            "4.1",
            "--sd",
            "1.2",
            "--mde-relative",
            "2%",
            "--variants",
            "2",
            "--cuped-correlation",
            "0.5",
            "--traffic-per-hour",
            "100",
            "--weights",
            "50,25,25",
        ])
        .unwrap();
        assert_eq!(report.plan.arms, 3);
        assert!((report.plan.alpha_per_comparison - 0.025).abs() < 1e-15);
        let eta = report.eta.as_ref().unwrap();
        assert_eq!(eta.limiting_arm, 1);
        let text = render_text(&report);
        assert!(text.contains("Bonferroni, 2 variants vs control"), "{text}");
        assert!(text.contains("CUPED             variance x 0.75"), "{text}");
        assert!(text.contains("arm 1 gets 25.0%"), "{text}");
    }

    #[test]
    fn bad_inputs_are_explained() {
        assert!(
            report(&["--mde-absolute", "-1pp"]).is_err(),
            "metric missing"
        );
        assert!(
            report(&["--baseline-rate", "0.15"]).is_err(),
            "effect missing"
        );
        let error = report(&["--baseline-rate", "0.15", "--mde-absolute", "0.9"]).unwrap_err();
        assert!(format!("{error:#}").contains("target rate"), "{error:#}");
        let error = report(&[
            "--baseline-rate",
            "0.15",
            "--mde-absolute",
            "0.01",
            "--traffic-per-day",
            "10",
            "--weights",
            "1,2,3",
        ])
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("one weight per arm"),
            "{error:#}"
        );
        assert!(
            report(&[
                "--baseline-rate",
                "0.15",
                "--mde-absolute",
                "0.01",
                "--cuped-correlation",
                "1"
            ])
            .is_err()
        );
    }
}
