//! Weighted logistic regression and the measures of a probability forecast: log loss, Brier
//! score, a reliability curve.
//!
//! Small models over a handful of features (the evidence model, the router's difficulty model):
//! full-batch gradient descent on the L2-regularised weighted log loss is exact enough, has no
//! dependencies and gives the same weights on every machine.
use serde::{Deserialize, Serialize};

/// One labelled example: features, label, weight (`1` for a plain sample; class-balancing or
/// inverse-propensity weights otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct Example<'a> {
    /// Feature values (every example the same length).
    pub features: &'a [f64],
    /// The positive class.
    pub label: bool,
    /// Sample weight (> 0).
    pub weight: f64,
}

/// A fitted model: `P(label) = sigmoid(bias + weights · features)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    /// Intercept.
    pub bias: f64,
    /// One weight per feature.
    pub weights: Vec<f64>,
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Logistic {
    /// Probability of the positive class.
    pub fn predict(&self, features: &[f64]) -> f64 {
        sigmoid(
            self.bias
                + self
                    .weights
                    .iter()
                    .zip(features)
                    .map(|(w, x)| w * x)
                    .sum::<f64>(),
        )
    }

    /// Fits `examples` by full-batch gradient descent (step `rate`, `iterations` steps) on the
    /// weighted mean log loss plus `l2 / 2 · |weights|²` (the bias is not penalised). The
    /// weights start at zero, so the result depends on nothing but the data.
    pub fn fit(examples: &[Example<'_>], l2: f64, rate: f64, iterations: usize) -> Self {
        let len = examples.first().map_or(0, |e| e.features.len());
        let mut model = Self {
            bias: 0.0,
            weights: vec![0.0; len],
        };
        let n = examples.len().max(1) as f64;
        let mut grad_w = vec![0.0; len];
        for _ in 0..iterations {
            let mut grad_b = 0.0;
            grad_w.iter_mut().for_each(|g| *g = 0.0);
            for e in examples {
                let err = e.weight * (model.predict(e.features) - f64::from(u8::from(e.label)));
                grad_b += err;
                for (g, x) in grad_w.iter_mut().zip(e.features) {
                    *g += err * x;
                }
            }
            model.bias -= rate * grad_b / n;
            for (w, g) in model.weights.iter_mut().zip(&grad_w) {
                *w -= rate * (g / n + l2 * *w);
            }
        }
        model
    }
}

/// Weights that give both classes the same total weight (`n / (2 · class count)`), for a
/// scorer whose ranking matters more than its calibration.
pub fn balanced_weights(labels: &[bool]) -> (f64, f64) {
    let positives = labels.iter().filter(|y| **y).count().max(1) as f64;
    let negatives = labels.iter().filter(|y| !**y).count().max(1) as f64;
    let n = labels.len() as f64;
    (n / (2.0 * positives), n / (2.0 * negatives))
}

/// A probability forecast against what happened: `(probability, outcome, weight)`.
pub type Forecast = (f64, bool, f64);

fn total_weight(forecasts: &[Forecast]) -> Option<f64> {
    let w: f64 = forecasts.iter().map(|f| f.2).sum();
    (w > 0.0).then_some(w)
}

/// Weighted mean squared error of the probabilities (0 perfect; 0.25 a constant 0.5).
pub fn brier(forecasts: &[Forecast]) -> Option<f64> {
    let w = total_weight(forecasts)?;
    Some(
        forecasts
            .iter()
            .map(|(p, y, wt)| wt * (p - f64::from(u8::from(*y))).powi(2))
            .sum::<f64>()
            / w,
    )
}

/// Weighted mean negative log-likelihood (probabilities clamped to `[1e-12, 1 - 1e-12]`).
pub fn log_loss(forecasts: &[Forecast]) -> Option<f64> {
    let w = total_weight(forecasts)?;
    Some(
        forecasts
            .iter()
            .map(|(p, y, wt)| {
                let p = p.clamp(1e-12, 1.0 - 1e-12);
                -wt * if *y { p.ln() } else { (1.0 - p).ln() }
            })
            .sum::<f64>()
            / w,
    )
}

/// One bin of a reliability curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReliabilityBin {
    /// Lower edge of the bin's predicted probabilities.
    pub low: f64,
    /// Upper edge (inclusive for the last bin).
    pub high: f64,
    /// Examples in the bin.
    pub count: usize,
    /// Weighted mean predicted probability.
    pub predicted: f64,
    /// Weighted share of positive outcomes.
    pub observed: f64,
}

/// The reliability curve over `bins` equal-width bins of the predicted probability (empty bins
/// left out): a calibrated forecast has `observed ≈ predicted` in every bin.
pub fn reliability(forecasts: &[Forecast], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0.0, 0.0, 0.0); bins];
    for (p, y, w) in forecasts {
        let i = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        let a = &mut acc[i];
        a.0 += 1;
        a.1 += w;
        a.2 += w * p;
        a.3 += w * f64::from(u8::from(*y));
    }
    acc.into_iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0 && a.1 > 0.0)
        .map(|(i, (count, w, p, y))| ReliabilityBin {
            low: i as f64 / bins as f64,
            high: (i + 1) as f64 / bins as f64,
            count,
            predicted: p / w,
            observed: y / w,
        })
        .collect()
}

/// Expected calibration error: the bins' `|observed - predicted|`, weighted by their weight.
pub fn calibration_error(forecasts: &[Forecast], bins: usize) -> Option<f64> {
    let total = total_weight(forecasts)?;
    let bins = bins.max(1);
    let mut acc = vec![(0.0, 0.0); bins];
    for (p, y, w) in forecasts {
        let i = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        acc[i].0 += w * p;
        acc[i].1 += w * f64::from(u8::from(*y));
    }
    // A bin's |observed - predicted| times its weight is |Σ w·p - Σ w·y| over the bin.
    Some(acc.iter().map(|(p, y)| (p - y).abs()).sum::<f64>() / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream in `0..1`.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn fitting_recovers_the_generating_weights() {
        let truth = Logistic {
            bias: -1.0,
            weights: vec![2.5, -1.5],
        };
        let mut seed = 7;
        let rows: Vec<(Vec<f64>, bool)> = (0..4000)
            .map(|_| {
                let x = vec![uniform(&mut seed), uniform(&mut seed)];
                let y = uniform(&mut seed) < truth.predict(&x);
                (x, y)
            })
            .collect();
        let examples: Vec<Example<'_>> = rows
            .iter()
            .map(|(x, y)| Example {
                features: x,
                label: *y,
                weight: 1.0,
            })
            .collect();
        let fitted = Logistic::fit(&examples, 0.0, 2.0, 4000);
        assert!((fitted.bias - truth.bias).abs() < 0.3, "{fitted:?}");
        for (w, t) in fitted.weights.iter().zip(&truth.weights) {
            assert!((w - t).abs() < 0.4, "{fitted:?}");
        }
        // Calibrated on its own data: the curve follows the diagonal, and it beats a constant.
        let forecasts: Vec<Forecast> = rows
            .iter()
            .map(|(x, y)| (fitted.predict(x), *y, 1.0))
            .collect();
        assert!(calibration_error(&forecasts, 10).unwrap() < 0.05);
        let base = rows.iter().filter(|r| r.1).count() as f64 / rows.len() as f64;
        let constant: Vec<Forecast> = rows.iter().map(|(_, y)| (base, *y, 1.0)).collect();
        assert!(brier(&forecasts).unwrap() < brier(&constant).unwrap());
        assert!(log_loss(&forecasts).unwrap() < log_loss(&constant).unwrap());
        for bin in reliability(&forecasts, 5).iter().filter(|b| b.count >= 100) {
            assert!((bin.predicted - bin.observed).abs() < 0.1, "{bin:?}");
        }
    }

    #[test]
    fn weights_count_as_repeated_examples() {
        let x1 = [1.0];
        let x0 = [0.0];
        let weighted = [
            Example {
                features: &x1,
                label: true,
                weight: 3.0,
            },
            Example {
                features: &x1,
                label: false,
                weight: 1.0,
            },
            Example {
                features: &x0,
                label: false,
                weight: 1.0,
            },
        ];
        let repeated: Vec<Example<'_>> = [true, true, true, false]
            .into_iter()
            .map(|label| Example {
                features: &x1,
                label,
                weight: 1.0,
            })
            .chain(std::iter::once(Example {
                features: &x0,
                label: false,
                weight: 1.0,
            }))
            .collect();
        let a = Logistic::fit(&weighted, 0.0, 0.5, 500);
        let b = Logistic::fit(&repeated, 0.0, 0.5, 500);
        // Same optimum; the mean is over examples, not weight, so the paths differ slightly.
        assert!((a.predict(&x1) - b.predict(&x1)).abs() < 0.05);
        assert!(a.predict(&x1) > 0.6);
    }

    #[test]
    fn measures_of_a_perfect_and_an_empty_forecast() {
        let perfect = [(1.0, true, 1.0), (0.0, false, 1.0)];
        assert_eq!(brier(&perfect), Some(0.0));
        assert!(log_loss(&perfect).unwrap() < 1e-9);
        assert_eq!(brier(&[]), None);
        assert_eq!(calibration_error(&[], 10), None);
        assert!(reliability(&[], 10).is_empty());
        let (wp, wn) = balanced_weights(&[true, false, false, false]);
        assert!((wp - 2.0).abs() < 1e-12 && (wn - 2.0 / 3.0).abs() < 1e-12);
    }
}
