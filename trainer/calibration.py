"""The reject threshold from good parts only, for a target false-reject rate (DESIGN 2.5).

The scores come from good images scored by a prototype they were not part of (``trainer.fit``: out of fold
when cross-fitted, held out otherwise). An image score is the maximum of a distance map, so the scores of
good parts follow an extreme-value law. Which one was measured, not assumed: on 3 200 good test parts of 16
synthetic products (RESULTS.md §13) a Gumbel (type I) fitted to the 40 calibration scores of each product let
1.34 / 1.94 / 3.16 / 6.38 % of them through for targets of 0.5 / 1 / 2 / 5 %, a Fréchet (type II: a Gumbel
fitted to the logarithms of the scores, F(x) = exp(-(x / s)^-a)) 0.56 / 1.06 / 1.97 / 5.22 %. The maps are
distances divided by spreads estimated from good parts, and ratios have power-law tails, the Fréchet's domain.
So the threshold is the (1 - target_frr) quantile of a Fréchet fitted by maximum likelihood (the Gumbel fit
of the log scores). That extrapolates beyond the few dozen or few hundred good images a fit has, where an
empirical 99.5 % quantile would just be their maximum. Scores that are not all positive (a Fréchet's support
is x > 0; distances always are) get the Gumbel on the scores themselves.

Cross-check and fallback: the empirical quantile is always computed and recorded, and so is the Gumbel
threshold for comparison. The empirical quantile is used instead when there are too few scores for a fit
(< ``MIN_FIT_IMAGES``), when the scores do not vary, when a Kolmogorov-Smirnov test rejects the fit at
the 5 % level, or when the calibration scores themselves exceed the fitted threshold far more often than
the target allows (a one-sided binomial test at the 1 % level). The last one matters most: KS looks at the
body of the distribution, the threshold lives in the tail, and a few good parts may carry genuine marks.
Every number behind the choice goes into the manifest's ``Calibration``.

A score that is the largest of several paths (the averaged map and the members that reject alone) gets each
path on its own fitted tail first (``join_paths``): a weight and a power per alone path, and the threshold
where each path exceeds with an equal share of the target.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from linewatch.bundle.manifest import MAX_ALONE_EXPONENT, Calibration

log = logging.getLogger(__name__)

MIN_FIT_IMAGES = 8
TAIL_TEST_LEVEL = 0.01
EULER_GAMMA = 0.5772156649015329


def gumbel_fit(scores: npt.ArrayLike) -> tuple[float, float]:
    """Maximum-likelihood (loc, scale) of a Gumbel-max distribution.

    The scale solves  scale = mean(x) - sum(x w) / sum(w),  w = exp(-x / scale); the left side minus the
    right grows monotonically in scale, so bisection (in log space) always converges.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError("a Gumbel fit needs at least 2 scores")
    spread = float(x.std())
    if spread <= 0.0 or not np.isfinite(spread):
        raise ValueError("a Gumbel fit needs scores that vary")
    mean = float(x.mean())
    x_min = float(x.min())

    def excess(scale: float) -> float:
        w = np.exp(-(x - x_min) / scale)  # shifted for stability; the ratio is unchanged
        return scale - mean + float((x * w).sum() / w.sum())

    lo, hi = spread * 1e-4, spread * 1e2
    while excess(lo) > 0:
        lo /= 10
    while excess(hi) < 0:
        hi *= 10
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-12:
            break
    scale = math.sqrt(lo * hi)
    loc = x_min - scale * math.log(float(np.mean(np.exp(-(x - x_min) / scale))))
    return loc, scale


def gumbel_cdf(x: npt.ArrayLike, loc: float, scale: float) -> npt.NDArray[np.float64]:
    z = (np.asarray(x, dtype=np.float64) - loc) / scale
    return np.asarray(np.exp(-np.exp(-z)), dtype=np.float64)


def gumbel_quantile(p: float, loc: float, scale: float) -> float:
    """x with F(x) = p."""
    return loc - scale * math.log(-math.log(p))


def empirical_threshold(scores: npt.ArrayLike, target_frr: float) -> float:
    """The smallest observed score with at most ``target_frr`` of the scores above it."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    k = max(1, math.ceil(x.size * (1.0 - target_frr) - 1e-9))
    return float(x[min(k, x.size) - 1])


def ks_statistic(scores: npt.ArrayLike, loc: float, scale: float) -> float:
    """Kolmogorov-Smirnov distance between the scores' empirical CDF and the fitted Gumbel."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = x.size
    cdf = gumbel_cdf(x, loc, scale)
    above = np.arange(1, n + 1) / n - cdf
    below = cdf - np.arange(0, n) / n
    return float(max(above.max(), below.max()))


def ks_critical(n: int, level: float) -> float:
    """Asymptotic critical value of the KS distance at ``level`` (conservative when parameters were fitted):
    c(level) = sqrt(-ln(level / 2) / 2), 1.358 at 5 %, with Stephens' correction for small n."""
    return math.sqrt(-0.5 * math.log(level / 2.0)) / (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n))


def ks_critical_5pct(n: int) -> float:
    """The 5 % value: one fit's test (``calibrate_threshold``), recorded as ``ks_critical_5pct``."""
    return ks_critical(n, 0.05)


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how surprising k exceedances of a (1 - p) quantile are. Summed in
    log space over the upper tail, so tens of thousands of calibration images cannot overflow a float."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = [log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def score_summary(scores: npt.ArrayLike) -> dict[str, float]:
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        return {}
    return {
        "min": float(x.min()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "p50": float(np.percentile(x, 50)),
        "p95": float(np.percentile(x, 95)),
        "p99": float(np.percentile(x, 99)),
        "max": float(x.max()),
    }


@dataclasses.dataclass(frozen=True)
class TailFit:
    """An extreme-value law fitted to good parts' scores by maximum likelihood: ``frechet`` (a Gumbel of the
    log scores, for positive scores) or ``gumbel`` (of the scores themselves); ``ks`` its KS distance."""

    law: str
    loc: float
    scale: float
    ks: float

    def quantile(self, p: float) -> float:
        q = gumbel_quantile(p, self.loc, self.scale)
        return math.exp(q) if self.law == "frechet" else q

    def standardised(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(log x − loc) / scale for a Fréchet, (x − loc) / scale for a Gumbel: a standard Gumbel variable for
        good parts (−inf for a Fréchet's scores ≤ 0)."""
        v = np.asarray(x, np.float64)
        if self.law == "frechet":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0.0, np.log(np.maximum(v, 1e-300)), -np.inf)
        return (v - self.loc) / self.scale

    def exceedance(self, x: float) -> float:
        """P(score > x) for a good part."""
        return -math.expm1(-math.exp(-float(self.standardised(x))))


def fit_tail(scores: npt.NDArray[np.float64]) -> TailFit:
    """The Fréchet when every score is positive (distances are), else the Gumbel; scores must vary."""
    if float(scores.min()) > 0.0:
        logs = np.log(scores)
        loc, scale = gumbel_fit(logs)
        return TailFit("frechet", loc, scale, ks_statistic(logs, loc, scale))
    loc, scale = gumbel_fit(scores)
    return TailFit("gumbel", loc, scale, ks_statistic(scores, loc, scale))


def calibrate_threshold(scores: npt.ArrayLike, target_frr: float = 0.005) -> Calibration:
    """Threshold for ``target_frr`` from good images' scores, each from a prototype the image was not in."""
    x = _checked(scores, target_frr).ravel()
    empirical = empirical_threshold(x, target_frr)
    parameters: dict[str, float] = {"empirical_threshold": empirical}
    method = "quantile"
    threshold = empirical
    if x.size < MIN_FIT_IMAGES:
        log.warning(
            "only %d calibration images (< %d): threshold is the empirical quantile (their maximum for "
            "small sets), so the real false-reject rate may be well above %.2f %%",
            x.size, MIN_FIT_IMAGES, 100 * target_frr,
        )
    elif float(np.ptp(x)) <= 0.0:  # exactly equal (a spread of 1e-16 from rounding would pass x.std())
        log.warning("all %d calibration scores are equal; threshold is that score", x.size)
    else:
        fit = fit_tail(x)
        fit_threshold = fit.quantile(1.0 - target_frr)
        loc, scale = gumbel_fit(x) if fit.law == "frechet" else (fit.loc, fit.scale)
        gumbel = gumbel_quantile(1.0 - target_frr, loc, scale)
        parameters.update(loc=loc, scale=scale, gumbel_threshold=gumbel)
        if fit.law == "frechet":
            parameters.update(log_loc=fit.loc, log_scale=fit.scale, tail_index=1.0 / fit.scale,
                              frechet_threshold=fit_threshold)
        else:
            log.warning("%d calibration scores are <= 0, outside a Fréchet's support: fitting a Gumbel "
                        "to the scores themselves", int(np.sum(x <= 0.0)))
        critical = ks_critical_5pct(x.size)
        above = int(np.sum(x > fit_threshold))
        tail_p = binomial_tail(x.size, target_frr, above)
        parameters.update(ks_statistic=fit.ks, ks_critical_5pct=critical, exceedances=float(above),
                          tail_p_value=tail_p)
        if fit.ks > critical:
            log.warning(
                "good-part scores do not look %s-distributed (KS %.3f > %.3f); using the empirical "
                "quantile instead", fit.law, fit.ks, critical,
            )
        elif tail_p < TAIL_TEST_LEVEL:
            log.warning(
                "%d of %d good-part scores lie above the %s threshold %.4g for a %.2f %% false-reject "
                "rate (p = %.2g): their tail is heavier than the fit; using the empirical quantile %.4g "
                "instead",
                above, x.size, fit.law, fit_threshold, 100 * target_frr, tail_p, empirical,
            )
        else:
            method, threshold = fit.law, fit_threshold
    if method == "quantile" and threshold == float(x.max()) and x.size >= MIN_FIT_IMAGES:
        log.warning(
            "the threshold is the largest of the %d good-part scores: a single good part with a real mark "
            "sets it; more good images give a threshold that does not hang on one part", x.size,
        )
    return _calibration(method, target_frr, x, threshold, parameters)


def calibrate_paths(path_scores: npt.ArrayLike, target_frr: float = 0.005) -> Calibration:
    """Threshold for ``target_frr`` on a score that is the largest of P paths' scores (N×P, as weighed in the
    bundle): each path's tail fitted on its own, the threshold where the largest of P independent paths
    exceeds it with probability ``target_frr``.

    One fit to the maximum under-reaches when the paths' tails differ: at equal medians the light-tailed path
    wins the body of the maximum half the time and the fit's tail comes out lighter than the heavy path's
    (0.5 % target: 31 of 4 000 good test parts of 20 synthetic products rejected, 10 with a fit per path;
    RESULTS.md §17). Paths that share members are positively associated, and then the maximum exceeds the
    threshold less often than independent ones would: the error is on the conservative side. Falls back to
    one fit to the maximum (``calibrate_threshold``) where a path's tail cannot be fitted or its KS test
    rejects the fit, and to the empirical quantile where the calibration scores exceed the threshold more
    often than the target allows (the tail test of ``calibrate_threshold``). ``join_paths`` is what a fit
    calls: this is its fallback, on paths weighed to one median."""
    x = _checked_paths(path_scores, target_frr)
    top = x.max(axis=1)
    if x.shape[1] == 1:
        return calibrate_threshold(top, target_frr)
    fits, problem = path_fits(x)
    if problem:
        log.warning("%s: the threshold comes from one fit to the maximum of the %d paths", problem,
                    x.shape[1])
        return calibrate_threshold(top, target_frr)
    threshold = solve_falling(lambda t: -math.expm1(sum(math.log1p(-f.exceedance(t)) for f in fits)),
                               target_frr, float(top.min()), float(top.max()))
    parameters: dict[str, float] = {"path_ks_critical": path_ks_critical(*x.shape)}
    for p, fit in enumerate(fits):
        parameters.update({f"path{p}_loc": fit.loc, f"path{p}_scale": fit.scale,
                           f"path{p}_ks_statistic": fit.ks,
                           f"path{p}_threshold": fit.quantile(1.0 - target_frr)})
    method = f"{fits[0].law}_paths" if len({f.law for f in fits}) == 1 else "extreme_value_paths"
    return _tail_tested(method, target_frr, top, threshold, parameters, x.shape[0])


def path_ks_critical(n: int, paths: int) -> float:
    """The KS critical value each of ``paths`` tails is tested at: the 5 % level shared among them
    (Bonferroni), so that all P tails fitting well are taken for a misfit 5 % of the time at most, not up
    to 1 − 0.95^P (19 % with four independent paths). RESULTS.md §21: on the 32 synthetic products and
    KolektorSDD's three fits this moves no product's join; with ``--bright-alone`` it keeps seed-3 grass off
    the median join, whose bright path failed at 5 % alone by 0.214 against 0.210 (7 → 0 of 200 good parts
    rejected)."""
    return ks_critical(n, 0.05 / paths)


def path_fits(x: npt.NDArray[np.float64]) -> tuple[list[TailFit], str]:
    """Each column's tail law, or what keeps them from being used (too few images, a path whose scores do
    not vary, a fit the KS test rejects at the paths' shared 5 % level, ``path_ks_critical``): ``(fits,
    "")`` or ``([...], problem)``."""
    critical = path_ks_critical(x.shape[0], x.shape[1])
    if x.shape[0] < MIN_FIT_IMAGES:
        return [], f"only {x.shape[0]} calibration images (< {MIN_FIT_IMAGES})"
    fits: list[TailFit] = []
    for p in range(x.shape[1]):
        if float(np.ptp(x[:, p])) <= 0.0:
            return fits, f"path {p}'s scores are all equal"
        fits.append(fit_tail(x[:, p]))
        if fits[-1].ks > critical:
            return fits, (f"path {p}'s scores do not look {fits[-1].law}-distributed "
                          f"(KS {fits[-1].ks:.3f} > {critical:.3f}, the 5 % level shared by {x.shape[1]} "
                          "paths)")
    return fits, ""


@dataclasses.dataclass(frozen=True)
class PathJoin:
    """How P path scores become a part's score, and its threshold: path 0 (the averaged map) as it is, path
    p ≥ 1 (an alone member) as ``(gains[p-1] · s)^exponents[p-1]``, then the largest. ``exponents`` is
    empty where every path keeps exponent 1 (the median join, ``join_paths``' fallback)."""

    gains: tuple[float, ...]
    exponents: tuple[float, ...]
    calibration: Calibration

    def joined(self, path_scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """N: the part scores the bundle's graph gives for N×P path scores (before the weights)."""
        return joined_scores(np.asarray(path_scores, np.float64), self.gains, self.exponents)


def joined_scores(x: npt.NDArray[np.float64], gains: Sequence[float], exponents: Sequence[float]
                  ) -> npt.NDArray[np.float64]:
    """N: the largest of column 0 and each (gains[p-1] · column p)^exponents[p-1] (exponent 1 without)."""
    powers = exponents or (1.0,) * len(gains)
    columns = [x[:, 0]] + [(g * x[:, p]) ** a for p, (g, a) in enumerate(zip(gains, powers, strict=True),
                                                                          start=1)]
    return np.asarray(np.max(columns, axis=0), np.float64)


def join_paths(path_scores: npt.ArrayLike, target_frr: float = 0.005) -> PathJoin:
    """The join and threshold of N×P out-of-fold path scores of good images (column 0 the averaged map's).

    Each path is put on its own fitted tail: with Fréchet laws (log s − loc_p) / scale_p is a standard Gumbel
    variable for good parts, monotone in how unusual the score is for that path, and a part is as unusual as
    its most unusual path. Mapped back to the averaged path's units (loc_0 + scale_0 · z, exponentiated),
    path p becomes (g_p · s)^a_p with a_p = scale_0 / scale_p and log g_p = loc_0 / a_p − loc_p: path 0 keeps
    its scores, heatmap and threshold units, and an alone path is weighed by its tail, not only by its
    median. Each path exceeds the threshold with an equal share 1 − (1 − target)^(1/P), so the threshold is
    exp(loc_0 + scale_0 · t) with t the standard Gumbel's (1 − share) quantile. On 32 synthetic products,
    against the median join: mean image AUROC 0.9728 → 0.9744, good test parts rejected 24 → 16 of 6 400,
    defects missed 15.2 → 13.6 % (RESULTS.md §19).

    Falls back to the median join (each alone path's median put on the averaged path's, exponent 1,
    ``calibrate_paths``) where a path's tail cannot be fitted, its KS test rejects it, its scores are not all
    positive, or its exponent lies beyond ``MAX_ALONE_EXPONENT`` either way; and to the empirical quantile of
    the joined scores where the calibration images exceed the threshold more often than the target allows."""
    x = _checked_paths(path_scores, target_frr)
    if x.shape[1] == 1:
        return PathJoin((), (), calibrate_threshold(x[:, 0], target_frr))
    fits, problem = path_fits(x)
    if not problem and any(f.law != "frechet" for f in fits):
        problem = "a path has scores <= 0, outside a Fréchet's support"
    exponents = [fits[0].scale / f.scale for f in fits[1:]] if not problem else []
    for p, a in enumerate(exponents, start=1):
        if not 1.0 / MAX_ALONE_EXPONENT <= a <= MAX_ALONE_EXPONENT:
            problem = (f"path {p}'s tail needs exponent {a:.3g}, beyond 1/{MAX_ALONE_EXPONENT:g} .. "
                       f"{MAX_ALONE_EXPONENT:g}")
            break
    if problem:
        log.warning("%s: the paths are joined by their medians", problem)
        gains = median_gains(x)
        return PathJoin(tuple(gains), (), calibrate_paths(x * np.asarray([1.0, *gains]), target_frr))
    base = fits[0]
    gains = [math.exp(base.loc / a - f.loc) for a, f in zip(exponents, fits[1:], strict=True)]
    top = joined_scores(x, gains, exponents)
    share = -math.expm1(math.log1p(-target_frr) / x.shape[1])  # 1 − (1 − target)^(1/P)
    threshold = math.exp(base.loc + base.scale * -math.log(-math.log1p(-share)))
    parameters: dict[str, float] = {"path_share": share, "path_ks_critical": path_ks_critical(*x.shape)}
    for p, fit in enumerate(fits):
        parameters.update({f"path{p}_loc": fit.loc, f"path{p}_scale": fit.scale,
                           f"path{p}_ks_statistic": fit.ks,
                           f"path{p}_threshold": fit.quantile(1.0 - share)})  # in its own units
    for p, (g, a) in enumerate(zip(gains, exponents, strict=True), start=1):
        parameters.update({f"path{p}_gain": g, f"path{p}_exponent": a})
    return PathJoin(tuple(gains), tuple(exponents),
                    _tail_tested("frechet_joined", target_frr, top, threshold, parameters, x.shape[0]))


def median_gains(path_scores: npt.NDArray[np.float64]) -> list[float]:
    """Per alone path (columns 1.. of N×P path scores of good images it did not see), the factor that puts
    its median score at the averaged map's (column 0): each path then raises about as many good parts'
    scores as the others."""
    medians = np.maximum(np.median(path_scores, axis=0), 1e-6)
    return [float(medians[0] / m) for m in medians[1:]]


def _tail_tested(method: str, target_frr: float, top: npt.NDArray[np.float64], threshold: float,
                 parameters: dict[str, float], n_images: int) -> Calibration:
    """The calibration of ``threshold`` on the part scores ``top``, or of their empirical quantile where the
    calibration images exceed it more often than the target allows (a one-sided binomial test at 1 %)."""
    above = int(np.sum(top > threshold))
    tail_p = binomial_tail(top.size, target_frr, above)
    empirical = empirical_threshold(top, target_frr)
    # for comparison: what one fit to the maximum would have said
    max_fit = fit_tail(top).quantile(1.0 - target_frr) if float(np.ptp(top)) > 0.0 else float(top[0])
    parameters = {"empirical_threshold": empirical, "max_fit_threshold": max_fit, **parameters,
                  "ks_critical_5pct": ks_critical_5pct(n_images), "exceedances": float(above),
                  "tail_p_value": tail_p}
    if tail_p < TAIL_TEST_LEVEL:
        log.warning(
            "%d of %d good-part scores lie above the paths' threshold %.4g for a %.2f %% false-reject rate "
            "(p = %.2g): using the empirical quantile %.4g instead",
            above, top.size, threshold, 100 * target_frr, tail_p, empirical,
        )
        method, threshold = "quantile", empirical
    return _calibration(method, target_frr, top, threshold, parameters)


def _checked_paths(path_scores: npt.ArrayLike, target_frr: float) -> npt.NDArray[np.float64]:
    x = _checked(path_scores, target_frr)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"path scores must be N×P, got shape {x.shape}")
    return x


def solve_falling(rate: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """t with rate(t) = target, for a rate that falls as t grows (bisection)."""
    span = max(hi - lo, abs(hi), 1e-12)
    while rate(lo) < target:
        lo -= span
    while rate(hi) > target:
        hi += span
        span *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if rate(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(abs(hi), 1.0):
            break
    return hi


def _checked(scores: npt.ArrayLike, target_frr: float) -> npt.NDArray[np.float64]:
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("calibration needs the score of at least one good image")
    if not np.all(np.isfinite(x)):
        raise ValueError("calibration scores contain NaN or infinity")
    if not 0.0 < target_frr < 1.0:
        raise ValueError(f"target false-reject rate must lie in (0, 1), got {target_frr}")
    return x


def _calibration(method: str, target_frr: float, scores: npt.NDArray[np.float64], threshold: float,
                 parameters: dict[str, float]) -> Calibration:
    parameters["calibration_frr"] = float(np.mean(scores > threshold))
    return Calibration(
        method=method,
        target_frr=target_frr,
        n_images=int(scores.size),
        threshold=float(threshold),
        good_scores=score_summary(scores),
        parameters=parameters,
    )
