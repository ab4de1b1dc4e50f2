#!/usr/bin/env python3
"""Reference values for switchboard-analysis, computed with scipy and statsmodels.

Writes runtime/analysis/tests/fixtures/*.json, which runtime/analysis/tests/reference.rs checks.
Run from the repository root with a venv holding numpy, scipy and statsmodels:

    python3 -m venv .cache/venv-stats && .cache/venv-stats/bin/pip install numpy scipy statsmodels
    .cache/venv-stats/bin/python hack/reference/analysis_fixtures.py

Deterministic: generated data uses fixed seeds; re-running rewrites identical files (given the
same library versions, recorded in each file).
"""

import json
import math
from pathlib import Path

import numpy as np
import scipy
import statsmodels
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    samplesize_proportions_2indep_onetail,
    test_proportions_2indep,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

OUT = Path(__file__).resolve().parents[2] / "runtime" / "analysis" / "tests" / "fixtures"
VERSIONS = {"numpy": np.__version__, "scipy": scipy.__version__, "statsmodels": statsmodels.__version__}


def write(name, cases, note):
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"generator": "hack/reference/analysis_fixtures.py", "versions": VERSIONS, "note": note, "cases": cases}
    (OUT / name).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{name}: {len(cases)} cases")


def distributions():
    cases = []
    for z in [-37.5, -8.0, -5.0, -3.0, -1.959963984540054, -1.0, -0.25, 0.0, 0.3, 1.0, 1.644853626951472, 2.5, 6.0, 9.0]:
        cases.append({"kind": "normal_cdf", "x": z, "value": float(stats.norm.cdf(z))})
        cases.append({"kind": "normal_sf", "x": z, "value": float(stats.norm.sf(z))})
    for p in [1e-15, 1e-9, 1e-4, 0.001, 0.0125, 0.025, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.975, 0.995, 0.999999]:
        cases.append({"kind": "normal_ppf", "p": p, "value": float(stats.norm.ppf(p))})
    for df in [1, 2, 3, 4, 7, 10, 30, 100]:
        for x in [0.001, 0.5, 1.0, 3.84, 7.5, 20.0, 60.0, 150.0]:
            cases.append({"kind": "chi_square_sf", "x": x, "df": df, "value": float(stats.chi2.sf(x, df))})
    for df in [1.0, 2.5, 4.0, 10.0, 29.7, 137.3, 5000.0, 120000.0]:
        for t in [-12.0, -3.0, -1.0, 0.0, 0.4, 2.0, 4.5, 30.0]:
            cases.append({"kind": "student_t_cdf", "x": t, "df": df, "value": float(stats.t.cdf(t, df))})
        for p in [0.0005, 0.025, 0.1, 0.5, 0.9, 0.975, 0.995]:
            cases.append({"kind": "student_t_ppf", "p": p, "df": df, "value": float(stats.t.ppf(p, df))})
    write("distributions.json", cases, "scipy.stats norm/chi2/t")


# (baseline events, baseline trials, candidate events, candidate trials)
RATE_CASES = [
    (1500, 10_000, 1650, 10_000),
    (1500, 10_000, 165, 1_000),
    (30_000, 200_000, 29_800, 200_000),
    (1_234, 9_876, 57, 432),
    (12, 5_000, 25, 4_000),
    (3_000, 20_000, 0, 2_000),
    (0, 1_000, 4, 900),
    (99, 100, 100, 100),
]


def rates():
    cases = []
    for xb, nb, xc, nc in RATE_CASES:
        method = "log-adjusted" if min(xb, xc) == 0 else "log"
        for alpha in [0.05, 0.1]:
            low, upp = confint_proportions_2indep(xc, nc, xb, nb, compare="ratio", method=method, alpha=alpha)
            case = {
                "baseline": [xb, nb], "candidate": [xc, nc], "alpha": alpha, "method": method,
                "relative_change": (xc / nc) / (xb / nb) - 1 if xb > 0 else None,
                "interval": [float(low) - 1, float(upp) - 1],
            }
            for margin in [0.05, 0.0, -0.02]:
                # One-sided (1 - alpha) upper bound = upper end of the two-sided 1 - 2 alpha interval.
                _, upper = confint_proportions_2indep(
                    xc, nc, xb, nb, compare="ratio", method=method, alpha=2 * alpha)
                test = test_proportions_2indep(
                    xc, nc, xb, nb, value=1 + margin, compare="ratio", method=method, alternative="smaller")
                case.setdefault("non_inferiority", []).append({
                    "margin": margin, "upper_bound": float(upper) - 1,
                    "statistic": float(test.statistic), "p_value": float(test.pvalue),
                })
            cases.append(case)
    write("rates.json", cases, "statsmodels confint/test_proportions_2indep, compare='ratio', candidate first")


def planning():
    cases = []
    for baseline, diff in [(0.15, -0.01), (0.15, 0.01), (0.05, -0.005), (0.3, 0.03), (0.5, -0.1), (0.02, 0.002)]:
        for alpha, power in [(0.05, 0.8), (0.01, 0.9), (0.05 / 3, 0.8)]:
            for alternative in ["two-sided", "larger"]:
                n = samplesize_proportions_2indep_onetail(
                    diff=diff, prop2=baseline, power=power, alpha=alpha, alternative=alternative)
                cases.append({
                    "kind": "proportion", "baseline": baseline, "effect": diff, "alpha": alpha, "power": power,
                    "two_sided": alternative == "two-sided", "n": float(n),
                })
    for sd, delta in [(1.2, 0.05), (1.0, -0.2), (25.0, 1.5)]:
        for alpha, power in [(0.05, 0.8), (0.01, 0.95)]:
            z = stats.norm.isf(alpha / 2) + stats.norm.ppf(power)
            closed = 2 * sd**2 * z**2 / delta**2
            # statsmodels solves the exact two-sided power (both tails) numerically; agrees to ~1e-6.
            solved = NormalIndPower().solve_power(effect_size=abs(delta) / sd, alpha=alpha, power=power, ratio=1)
            cases.append({
                "kind": "mean", "sd": sd, "effect": delta, "alpha": alpha, "power": power,
                "two_sided": True, "n": float(closed), "statsmodels_n": float(solved),
            })
    write("planning.json", cases, "statsmodels samplesize_proportions_2indep_onetail; means: closed form + NormalIndPower")


def sums(values):
    return math.fsum(values)


def experiment():
    rng = np.random.default_rng(20261127)
    cases = []
    # Difference of proportions (Wald, unpooled), treatment first in statsmodels.
    for xc, nc, xt, nt in [(1500, 10_000, 1400, 10_000), (57, 432, 1_234, 9_876), (18, 200, 31, 210)]:
        test = test_proportions_2indep(xt, nt, xc, nc, compare="diff", method="wald")
        low, upp = confint_proportions_2indep(xt, nt, xc, nc, compare="diff", method="wald", alpha=0.05)
        cases.append({
            "kind": "proportions", "control": [xc, nc], "treatment": [xt, nt], "alpha": 0.05,
            "difference": xt / nt - xc / nc, "interval": [float(low), float(upp)],
            "statistic": float(test.statistic), "p_value": float(test.pvalue),
        })
    # Welch difference of means from sufficient statistics.
    for n_c, n_t, mu_c, mu_t, sd_c, sd_t in [(40, 55, 3.9, 4.2, 1.1, 1.4), (2_000, 1_800, 4.1, 4.12, 1.2, 1.25), (8, 5, 10.0, 7.0, 2.0, 4.0)]:
        c = rng.normal(mu_c, sd_c, n_c)
        t = rng.normal(mu_t, sd_t, n_t)
        res = stats.ttest_ind(t, c, equal_var=False)
        low, upp = CompareMeans(DescrStatsW(t), DescrStatsW(c)).tconfint_diff(alpha=0.05, usevar="unequal")
        cases.append({
            "kind": "means", "alpha": 0.05,
            "control": {"count": n_c, "sum": sums(c), "sumSquares": sums(c * c)},
            "treatment": {"count": n_t, "sum": sums(t), "sumSquares": sums(t * t)},
            "difference": float(t.mean() - c.mean()), "interval": [float(low), float(upp)],
            "statistic": float(res.statistic), "p_value": float(res.pvalue), "df": float(res.df),
        })
    # Ratio metric per user (escalations / interactions), delta method with n-1 moments.
    def ratio_arm(users, rate):
        x = rng.poisson(3.0, users) + 1
        p = np.clip(rng.beta(2, 2 * (1 - rate) / rate, users), 0, 1)
        y = rng.binomial(x, p)
        n = users
        r = y.sum() / x.sum()
        cov = np.cov(np.vstack([y, x]), ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * x.mean() ** 2)
        moments = {
            "units": n, "numerator": sums(y.astype(float)), "denominator": sums(x.astype(float)),
            "numeratorSquares": sums((y * y).astype(float)), "denominatorSquares": sums((x * x).astype(float)),
            "cross": sums((x * y).astype(float)),
        }
        return moments, float(r), float(var)
    for users_c, users_t, rate_c, rate_t in [(3_000, 3_100, 0.15, 0.14), (500, 450, 0.3, 0.33)]:
        mc, rc, vc = ratio_arm(users_c, rate_c)
        mt, rt, vt = ratio_arm(users_t, rate_t)
        se = math.sqrt(vc + vt)
        z = stats.norm.isf(0.025)
        cases.append({
            "kind": "ratios", "alpha": 0.05, "control": mc, "treatment": mt,
            "control_ratio": rc, "treatment_ratio": rt, "standard_error": se,
            "interval": [rt - rc - z * se, rt - rc + z * se],
            "p_value": float(2 * stats.norm.sf(abs(rt - rc) / se)),
        })
    # CUPED: y - theta (x - mean x), theta from both arms pooled; Welch test on the adjusted values.
    for n_c, n_t, rho, lift in [(1_000, 1_050, 0.6, 0.1), (300, 280, 0.3, 0.0), (5_000, 5_000, 0.9, 0.05)]:
        def arm(n, shift):
            x = rng.normal(4.0, 1.0, n)
            y = 4.0 + shift + rho * (x - 4.0) + math.sqrt(1 - rho * rho) * rng.normal(0, 1, n)
            return y, x
        yc, xc = arm(n_c, 0.0)
        yt, xt = arm(n_t, lift)
        x_all, y_all = np.concatenate([xc, xt]), np.concatenate([yc, yt])
        cov = np.cov(np.vstack([x_all, y_all]), ddof=1)
        theta = cov[0, 1] / cov[0, 0]
        adj_c, adj_t = yc - theta * (xc - x_all.mean()), yt - theta * (xt - x_all.mean())
        res = stats.ttest_ind(adj_t, adj_c, equal_var=False)
        raw = stats.ttest_ind(yt, yc, equal_var=False)
        low, upp = CompareMeans(DescrStatsW(adj_t), DescrStatsW(adj_c)).tconfint_diff(alpha=0.05, usevar="unequal")

        def cm(y, x):
            return {"units": len(y), "sumY": sums(y), "sumYSquares": sums(y * y), "sumX": sums(x),
                    "sumXSquares": sums(x * x), "sumXy": sums(x * y)}
        se_adj = (adj_t.mean() - adj_c.mean()) / res.statistic
        se_raw = (yt.mean() - yc.mean()) / raw.statistic
        cases.append({
            "kind": "cuped", "alpha": 0.05, "control": cm(yc, xc), "treatment": cm(yt, xt),
            "theta": float(theta), "correlation": float(np.corrcoef(x_all, y_all)[0, 1]),
            "difference": float(adj_t.mean() - adj_c.mean()), "interval": [float(low), float(upp)],
            "statistic": float(res.statistic), "p_value": float(res.pvalue), "df": float(res.df),
            "unadjusted_statistic": float(raw.statistic),
            "variance_reduction": float(1 - se_adj**2 / se_raw**2),
        })
    # Sample-ratio mismatch: Pearson chi-square against the weights.
    for observed, weights in [([50_100, 49_900], [1, 1]), ([51_000, 49_000], [1, 1]), ([9_120, 880], [0.9, 0.1]),
                              ([3_300, 3_350, 3_210], [1, 1, 1]), ([4_000, 2_100, 1_900], [2, 1, 1])]:
        total = sum(observed)
        expected = [total * w / sum(weights) for w in weights]
        res = stats.chisquare(observed, expected)
        cases.append({"kind": "srm", "observed": observed, "weights": weights,
                      "chi_square": float(res.statistic), "p_value": float(res.pvalue)})
    write("experiment.json", cases, "statsmodels/scipy; control/treatment sums as the operator would read them")


if __name__ == "__main__":
    distributions()
    rates()
    planning()
    experiment()
