//! The distribution functions the tests need, implemented from textbook algorithms so the crate has
//! no numeric dependency: the log-gamma function (Lanczos, g = 7, n = 9), the regularized incomplete
//! gamma function (series and Lentz continued fraction, Numerical Recipes 3rd ed. §6.2), the
//! regularized incomplete beta function (Lentz continued fraction, §6.4), and quantiles by
//! Newton/Halley refinement of a rough start. `tests/fixtures/distributions.json` (scipy) checks
//! them to 1e-12 relative over the ranges the analysis uses.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// Relative precision the iterative expansions stop at.
const EPSILON: f64 = 1e-16;
/// A number near the smallest representable, used by Lentz's method to avoid division by zero.
const TINY: f64 = 1e-300;
/// Enough for the continued fractions to converge for the degrees of freedom seen here (the beta
/// fraction needs O(sqrt(max(a, b))) terms).
const MAX_ITERATIONS: usize = 100_000;

/// Lanczos approximation coefficients for g = 7, n = 9 (Godfrey), about 15 significant digits.
const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// Natural logarithm of the gamma function for `x > 0`.
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection keeps the Lanczos sum in its accurate range.
        (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x)
    } else {
        let x = x - 1.0;
        let mut sum = LANCZOS[0];
        for (i, c) in LANCZOS.iter().enumerate().skip(1) {
            sum += c / (x + i as f64);
        }
        let t = x + LANCZOS_G + 0.5;
        0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
    }
}

/// Regularized lower incomplete gamma function P(a, x).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if x < a + 1.0 {
        gamma_series(a, x)
    } else {
        1.0 - gamma_continued_fraction(a, x)
    }
}

/// Regularized upper incomplete gamma function Q(a, x) = 1 - P(a, x), accurate in the upper tail.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        1.0
    } else if x < a + 1.0 {
        1.0 - gamma_series(a, x)
    } else {
        gamma_continued_fraction(a, x)
    }
}

fn gamma_prefactor(a: f64, x: f64) -> f64 {
    (a * x.ln() - x - ln_gamma(a)).exp()
}

/// P(a, x) by its power series; converges quickly for x < a + 1.
fn gamma_series(a: f64, x: f64) -> f64 {
    let mut denominator = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..MAX_ITERATIONS {
        denominator += 1.0;
        term *= x / denominator;
        sum += term;
        if term.abs() < sum.abs() * EPSILON {
            break;
        }
    }
    sum * gamma_prefactor(a, x)
}

/// Q(a, x) by its continued fraction (modified Lentz); converges quickly for x > a + 1.
fn gamma_continued_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITERATIONS {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPSILON {
            break;
        }
    }
    gamma_prefactor(a, x) * h
}

/// Regularized incomplete beta function I_x(a, b).
pub fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The continued fraction converges fast on the side of the mean; use symmetry on the other.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..MAX_ITERATIONS {
        let m = m as f64;
        let m2 = 2.0 * m;
        let even = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPSILON {
            break;
        }
    }
    h
}

/// Complementary error function.
pub fn erfc(x: f64) -> f64 {
    if x >= 0.0 {
        gamma_q(0.5, x * x)
    } else {
        1.0 + gamma_p(0.5, x * x)
    }
}

/// Standard normal density.
pub fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * PI).sqrt()
}

/// Standard normal distribution function Φ(z).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z * FRAC_1_SQRT_2)
}

/// Standard normal survival function 1 - Φ(z), accurate far into the upper tail.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z * FRAC_1_SQRT_2)
}

/// Standard normal quantile Φ⁻¹(p) for 0 < p < 1 (infinite at 0 and 1, NaN outside).
pub fn normal_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        return upper_normal_quantile(1.0 - p);
    }
    -upper_normal_quantile(p)
}

/// The z with 1 - Φ(z) = q, for 0 < q <= 0.5. Working with the small tail probability avoids the
/// cancellation of 1 - p near 1.
fn upper_normal_quantile(q: f64) -> f64 {
    // Abramowitz & Stegun 26.2.23 (error < 4.5e-4) as the start.
    let t = (-2.0 * q.ln()).sqrt();
    let mut z = t
        - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
            / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t);
    // Halley steps on sf(z) - q: cubic convergence, two or three steps reach full precision.
    for _ in 0..8 {
        let density = normal_pdf(z);
        if density == 0.0 {
            break;
        }
        let u = (normal_sf(z) - q) / density;
        let step = u / (1.0 - z * u / 2.0);
        z += step;
        if step.abs() <= 1e-15 * z.abs().max(1.0) {
            break;
        }
    }
    z
}

/// Survival function of the chi-square distribution with `df` degrees of freedom.
pub fn chi_square_sf(x: f64, df: f64) -> f64 {
    gamma_q(df / 2.0, x / 2.0)
}

/// Degrees of freedom above which Student's t is replaced by the normal (difference < 1e-9 at
/// the quantiles used for intervals).
const T_AS_NORMAL_DF: f64 = 1e10;

/// Survival function of Student's t distribution: P(T > t).
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if df >= T_AS_NORMAL_DF {
        return normal_sf(t);
    }
    let tail = 0.5 * beta_inc(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { tail } else { 1.0 - tail }
}

/// Distribution function of Student's t distribution: P(T <= t).
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    student_t_sf(-t, df)
}

fn student_t_pdf(t: f64, df: f64) -> f64 {
    (ln_gamma((df + 1.0) / 2.0)
        - ln_gamma(df / 2.0)
        - 0.5 * (df * PI).ln()
        - (df + 1.0) / 2.0 * (t * t / df).ln_1p())
    .exp()
}

/// Quantile of Student's t distribution for 0 < p < 1.
pub fn student_t_ppf(p: f64, df: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if df >= T_AS_NORMAL_DF {
        return normal_ppf(p);
    }
    if p < 0.5 {
        return -student_t_ppf(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    // Newton on sf(t) = 1 - p from the normal quantile. For t > 0 the distribution function is
    // concave and the t quantile lies above the normal one, so the iterates increase monotonically
    // to the root without overshooting.
    let q = 1.0 - p;
    let mut t = upper_normal_quantile(q);
    for _ in 0..200 {
        let step = (student_t_sf(t, df) - q) / student_t_pdf(t, df);
        if !step.is_finite() {
            break;
        }
        t += step;
        if step.abs() <= 1e-14 * t.abs().max(1.0) {
            break;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-13);
        assert!((normal_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-13);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((chi_square_sf(3.841_458_820_694_124, 1.0) - 0.05).abs() < 1e-12);
        // Cauchy: t with one degree of freedom.
        assert!((student_t_ppf(0.975, 1.0) - 12.706_204_736_174_7).abs() < 1e-9);
    }

    #[test]
    fn quantiles_invert_distribution_functions() {
        for &p in &[1e-12, 1e-6, 0.01, 0.2, 0.5, 0.8, 0.99, 1.0 - 1e-9] {
            let z = normal_ppf(p);
            assert!((normal_cdf(z) - p).abs() <= 1e-14 * p.max(1e-3), "p = {p}");
            for &df in &[1.0, 3.5, 30.0, 1e5] {
                let t = student_t_ppf(p, df);
                // ln Γ differences at a = df/2 = 5e4 limit the precision to about 1e-11.
                assert!(
                    (student_t_cdf(t, df) - p).abs() < 1e-10,
                    "p = {p}, df = {df}"
                );
            }
        }
    }
}
