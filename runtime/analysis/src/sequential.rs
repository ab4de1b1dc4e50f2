//! Always-valid inference by the mixture sequential probability ratio test (mSPRT; Robbins 1970,
//! Johari, Koomen, Pekelis & Walsh 2017 "Peeking at A/B tests", Howard et al. 2021).
//!
//! An estimate `θ̂` with variance `V` (here the log risk ratio) is treated as a Gaussian observation
//! whose precision `1/V` grows with data. Mixing the likelihood ratio of `θ` against a null `θ₀`
//! over a normal prior `θ ~ N(θ₀, τ²)` gives
//!
//! ```text
//! Λ(θ₀) = sqrt(V / (V + τ²)) · exp( τ² (θ̂ - θ₀)² / (2 V (V + τ²)) )
//! ```
//!
//! a non-negative martingale under the null, so by Ville's inequality `P(sup_t Λ_t ≥ 1/α) ≤ α`:
//! the test can be evaluated after every analysis interval, as often as wanted, without inflating
//! the false-positive rate. Inverting it gives a confidence sequence: the set of `θ₀` with
//! `Λ(θ₀) < 1/α` is `θ̂ ± sqrt( V (V + τ²)/τ² · (2 ln(1/α) + ln((V + τ²)/V)) )`, which covers the
//! true `θ` at all times simultaneously with probability at least `1 - α`. With a plug-in variance
//! the guarantee is asymptotic (as for any z-test); the A/A simulations in `tests/` measure it at
//! the sample sizes the guardrail acts on.
//!
//! The mixing standard deviation `τ` is fixed before the data (choosing it from the data would
//! break the martingale). It does not affect validity, only where power is concentrated: for a
//! given `V*` the half-width is smallest when `τ² = r·V*` with `r = 2 ln(1/α) + ln(1 + r)`
//! (r ≈ 8.2 at α = 0.05); see [`tuned_mixing_sd`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Error, Interval, Result, check_probability};

/// A mixture SPRT for a normal estimate: its level and its mixing standard deviation `τ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MixtureSprt {
    /// Probability that the confidence sequence ever misses the true value.
    pub alpha: f64,
    /// Standard deviation `τ` of the normal mixing distribution, in the estimate's units.
    pub mixing_sd: f64,
}

impl MixtureSprt {
    /// A test at level `alpha` mixing over `N(θ₀, mixing_sd²)`.
    pub fn new(alpha: f64, mixing_sd: f64) -> Result<Self> {
        check_probability("alpha", alpha)?;
        if !(mixing_sd.is_finite() && mixing_sd > 0.0) {
            return Err(Error::InvalidParameter {
                name: "mixingSd",
                value: mixing_sd,
                expected: "finite and positive",
            });
        }
        Ok(Self { alpha, mixing_sd })
    }

    /// ln Λ(θ₀): the log e-value against the point null `null` given `estimate` with `variance`.
    /// Infinite when the variance is zero and the estimate differs from the null.
    pub fn log_e_value(&self, estimate: f64, variance: f64, null: f64) -> f64 {
        let tau2 = self.mixing_sd * self.mixing_sd;
        let total = variance + tau2;
        let deviation = estimate - null;
        0.5 * (variance / total).ln() + tau2 * deviation * deviation / (2.0 * variance * total)
    }

    /// ln(1/α): the log e-value at which the null is rejected.
    pub fn log_threshold(&self) -> f64 {
        -self.alpha.ln()
    }

    /// Half-width of the confidence sequence at `variance`.
    pub fn half_width(&self, variance: f64) -> f64 {
        let tau2 = self.mixing_sd * self.mixing_sd;
        let total = variance + tau2;
        (variance * total / tau2 * (2.0 * self.log_threshold() + (total / variance).ln())).sqrt()
    }

    /// The always-valid 1 - α interval around `estimate`.
    pub fn interval(&self, estimate: f64, variance: f64) -> Interval {
        let half = self.half_width(variance);
        Interval {
            lower: estimate - half,
            upper: estimate + half,
        }
    }
}

/// The `τ` that makes the confidence sequence narrowest when the estimate's variance is
/// `variance_at_horizon` (e.g. the variance expected at the planned sample size): `τ² = r·V*` with
/// `r = 2 ln(1/α) + ln(1 + r)`. Narrower elsewhere costs little: the width grows only like the
/// square root of a logarithm away from `V*`.
pub fn tuned_mixing_sd(variance_at_horizon: f64, alpha: f64) -> Result<f64> {
    check_probability("alpha", alpha)?;
    if !(variance_at_horizon.is_finite() && variance_at_horizon > 0.0) {
        return Err(Error::InvalidParameter {
            name: "varianceAtHorizon",
            value: variance_at_horizon,
            expected: "finite and positive",
        });
    }
    let two_log = -2.0 * alpha.ln();
    // The fixed point iteration contracts (derivative 1/(1+r) < 1).
    let mut r = two_log + 1.0;
    for _ in 0..100 {
        let next = two_log + r.ln_1p();
        if (next - r).abs() < 1e-12 {
            break;
        }
        r = next;
    }
    Ok((r * variance_at_horizon).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_the_set_where_the_e_value_is_below_threshold() {
        let test = MixtureSprt::new(0.05, 0.1).unwrap();
        let (estimate, variance) = (0.2, 0.003);
        let interval = test.interval(estimate, variance);
        for bound in [interval.lower, interval.upper] {
            let log_e = test.log_e_value(estimate, variance, bound);
            assert!((log_e - test.log_threshold()).abs() < 1e-9, "{log_e}");
        }
        assert!(test.log_e_value(estimate, variance, estimate) < test.log_threshold());
    }

    #[test]
    fn tuned_mixing_minimises_the_width_at_the_horizon() {
        let variance = 0.0012;
        let tau = tuned_mixing_sd(variance, 0.05).unwrap();
        let width = |tau: f64| MixtureSprt::new(0.05, tau).unwrap().half_width(variance);
        assert!(width(tau) < width(tau * 0.9) && width(tau) < width(tau * 1.1));
        // r ≈ 8.2 at alpha = 0.05.
        assert!((tau * tau / variance - 8.2).abs() < 0.1);
    }

    #[test]
    fn always_valid_interval_is_wider_than_the_fixed_one() {
        let test = MixtureSprt::new(0.05, 0.1).unwrap();
        let variance: f64 = 0.001;
        assert!(test.half_width(variance) > 1.96 * variance.sqrt());
    }
}
