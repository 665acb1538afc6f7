import numpy as np
import pytest

from trainer.calibration import (
    MIN_FIT_IMAGES,
    binomial_tail,
    calibrate_paths,
    calibrate_threshold,
    empirical_threshold,
    fit_tail,
    gumbel_cdf,
    gumbel_fit,
    gumbel_quantile,
    join_paths,
    ks_critical,
    ks_critical_5pct,
    median_gains,
    path_ks_critical,
)


def test_gumbel_fit_recovers_parameters_of_a_large_sample() -> None:
    x = np.random.default_rng(1).gumbel(loc=2.5, scale=0.3, size=20000)
    loc, scale = gumbel_fit(x)
    assert loc == pytest.approx(2.5, abs=0.01)
    assert scale == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("n_images", [30, 150])
def test_threshold_hits_target_frr_on_frechet_maxima(n_images: int) -> None:
    """Over many calibration sets of maxima with a power-law tail, the true false-reject rate of the
    calibrated threshold is the target."""
    rng = np.random.default_rng(7)
    log_loc, log_scale, target = 0.2, 0.15, 0.005  # scores around 1.2, as a levelled map's maxima are
    true_frr, methods = [], []
    for _ in range(300):
        cal = calibrate_threshold(np.exp(rng.gumbel(log_loc, log_scale, size=n_images)), target)
        methods.append(cal.method)
        true_frr.append(1.0 - float(gumbel_cdf(np.log(cal.threshold), log_loc, log_scale)))
    # the KS and tail tests each flag about their level's share of genuine Fréchet sets (then: the
    # empirical quantile, which is the sample maximum here, so more conservative, never less)
    assert methods.count("frechet") >= 0.98 * len(methods)
    assert np.median(true_frr) == pytest.approx(target, rel=0.35)
    # Estimation noise of a small set pushes the *mean* rate up (rates cannot go below 0): 30 images give
    # about 1.6x the target on average, 150 images about the target.
    assert target * 0.8 < np.mean(true_frr) < target * (2.0 if n_images == 30 else 1.3)


def test_the_frechet_fit_is_the_gumbel_fit_of_the_log_scores_and_both_are_recorded() -> None:
    x = np.exp(np.random.default_rng(0).gumbel(0.1, 0.1, size=50))
    cal = calibrate_threshold(x, 0.01)
    p = cal.parameters
    assert cal.method == "frechet" and cal.threshold == p["frechet_threshold"]
    assert (p["log_loc"], p["log_scale"]) == gumbel_fit(np.log(x))
    assert cal.threshold == pytest.approx(np.exp(gumbel_quantile(0.99, p["log_loc"], p["log_scale"])))
    assert p["tail_index"] == pytest.approx(1 / p["log_scale"])
    # a power-law tail reaches further than the Gumbel fitted to the same scores
    assert (p["loc"], p["scale"]) == gumbel_fit(x) and p["gumbel_threshold"] < cal.threshold


def test_light_tailed_maxima_get_a_conservative_threshold_never_a_lax_one() -> None:
    """Gumbel maxima and maxima of Gaussian maps have lighter tails than the Fréchet assumes: fewer good parts
    are rejected than the target, never more (the price is defects near the threshold)."""
    rng = np.random.default_rng(7)
    gumbel_frr = [1.0 - float(gumbel_cdf(calibrate_threshold(rng.gumbel(3.0, 0.4, 40)).threshold, 3.0, 0.4))
                  for _ in range(100)]
    assert 0.00002 < np.median(gumbel_frr) < 0.005
    fresh = rng.standard_normal((20000, 400)).max(axis=1)
    rates = [
        float(np.mean(fresh > calibrate_threshold(rng.standard_normal((40, 400)).max(axis=1)).threshold))
        for _ in range(40)
    ]
    assert np.median(rates) < 0.005
    assert np.percentile(rates, 90) < 0.01


def test_calibration_records_the_numbers_behind_the_threshold() -> None:
    x = np.exp(np.random.default_rng(0).gumbel(0.0, 0.1, size=50))
    cal = calibrate_threshold(x, 0.01)
    assert cal.n_images == 50 and cal.target_frr == 0.01
    assert {"log_loc", "log_scale", "tail_index", "frechet_threshold", "loc", "scale", "gumbel_threshold",
            "ks_statistic", "ks_critical_5pct", "exceedances", "tail_p_value", "empirical_threshold",
            "calibration_frr"} <= set(cal.parameters)
    assert cal.parameters["calibration_frr"] == float(np.mean(x > cal.threshold))
    assert cal.good_scores["max"] == pytest.approx(x.max())
    assert cal.good_scores["min"] <= cal.good_scores["p50"] <= cal.good_scores["max"]


def test_scores_outside_the_frechets_support_get_a_gumbel() -> None:
    # a Fréchet needs positive scores; a head whose scores can be negative still gets an extreme-value fit
    x = np.r_[-0.5, np.random.default_rng(1).gumbel(1.0, 0.3, 49)]
    cal = calibrate_threshold(x, 0.005)
    assert cal.method == "gumbel" and cal.threshold == cal.parameters["gumbel_threshold"]
    assert (cal.parameters["loc"], cal.parameters["scale"]) == gumbel_fit(x)
    assert "log_loc" not in cal.parameters


def test_too_few_images_fall_back_to_the_empirical_quantile() -> None:
    x = np.array([1.0, 1.2, 0.9])
    assert len(x) < MIN_FIT_IMAGES
    cal = calibrate_threshold(x, 0.005)
    assert cal.method == "quantile" and cal.threshold == 1.2


def test_scores_that_are_not_gumbel_fall_back_to_the_empirical_quantile() -> None:
    rng = np.random.default_rng(5)
    bimodal = np.r_[rng.normal(1.0, 0.01, 100), rng.normal(5.0, 0.01, 100)]
    cal = calibrate_threshold(bimodal, 0.005)
    assert cal.method == "quantile"
    assert cal.parameters["ks_statistic"] > cal.parameters["ks_critical_5pct"]
    assert cal.threshold == empirical_threshold(bimodal, 0.005)


def test_a_tail_heavier_than_the_fit_falls_back_to_the_empirical_quantile() -> None:
    """Good parts whose body is Fréchet but 4 % carry real marks (KS cannot see a tail): the threshold must
    not reject them all."""
    rng = np.random.default_rng(11)
    scores = np.r_[np.exp(rng.gumbel(1.0, 0.1, 144)), rng.uniform(8.0, 12.0, 6)]
    cal = calibrate_threshold(scores, 0.005)
    assert cal.parameters["ks_statistic"] <= cal.parameters["ks_critical_5pct"]  # the body passes KS
    assert cal.parameters["exceedances"] >= 6 and cal.parameters["tail_p_value"] < 0.01
    assert cal.method == "quantile" and cal.threshold == empirical_threshold(scores, 0.005) == scores.max()
    assert cal.parameters["calibration_frr"] == 0.0
    assert binomial_tail(150, 0.005, 0) == 1.0
    assert binomial_tail(150, 0.005, 1) == pytest.approx(1 - 0.995**150)
    assert binomial_tail(150, 0.005, 151) == 0.0
    # tens of thousands of calibration images (cross-fitting scores every good image) must not overflow
    assert binomial_tail(20000, 0.005, 150) == pytest.approx(1.7676e-06, rel=1e-3)
    big = np.exp(np.random.default_rng(2).gumbel(1.0, 0.1, 20000))
    assert calibrate_threshold(big, 0.05).method in ("frechet", "quantile")


def test_empirical_threshold_leaves_at_most_the_target_above() -> None:
    x = np.arange(1000, dtype=float)
    t = empirical_threshold(x, 0.005)
    assert np.mean(x > t) == pytest.approx(0.005)
    assert empirical_threshold(np.array([3.0, 1.0, 2.0]), 0.005) == 3.0


def test_equal_scores_and_bad_inputs() -> None:
    assert calibrate_threshold(np.full(20, 0.7)).threshold == 0.7
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        calibrate_threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="false-reject"):
        calibrate_threshold(np.array([1.0, 2.0]), target_frr=0.0)


def _frechet_paths(rng: np.random.Generator, n: int, tail_indices: tuple[float, ...], median: float = 0.72
                   ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """N×P scores of independent Fréchet paths with one median and the given tail indices, and their laws."""
    laws = [(float(np.log(median) + np.log(np.log(2)) / a), 1.0 / a) for a in tail_indices]
    return np.exp(np.stack([rng.gumbel(loc, scale, n) for loc, scale in laws], axis=1)), laws


def _max_frr(threshold: float, laws: list[tuple[float, float]]) -> float:
    return 1.0 - float(np.prod([gumbel_cdf(np.log(threshold), loc, scale) for loc, scale in laws]))


@pytest.mark.parametrize("n_images", [40, 150])
def test_a_maximum_of_paths_with_different_tails_gets_the_target_rate(n_images: int) -> None:
    """A part's score is the largest of the averaged map's and an alone member's, weighed to one median.
    With a heavy-tailed and a light-tailed path (tail indices 9 and 25, as a grass product's), one fit to the
    maximum lets about 3x the target through; the paths' own fits hit it."""
    rng = np.random.default_rng(3)
    per_path, one_fit, methods = [], [], []
    for _ in range(200):
        scores, laws = _frechet_paths(rng, n_images, (9.0, 25.0))
        cal = calibrate_paths(scores, 0.005)
        methods.append(cal.method)
        per_path.append(_max_frr(cal.threshold, laws))
        one_fit.append(_max_frr(calibrate_threshold(scores.max(axis=1), 0.005).threshold, laws))
    assert methods.count("frechet_paths") >= 0.95 * len(methods)
    assert np.median(per_path) == pytest.approx(0.005, rel=0.3)
    assert np.median(one_fit) > 2.5 * 0.005


def test_the_paths_threshold_is_recorded_and_lies_above_each_paths_own() -> None:
    scores, _ = _frechet_paths(np.random.default_rng(0), 60, (8.0, 20.0, 12.0))
    cal = calibrate_paths(scores, 0.01)
    p = cal.parameters
    assert cal.method == "frechet_paths" and cal.n_images == 60
    for i in range(3):
        fit = fit_tail(scores[:, i])
        assert (p[f"path{i}_loc"], p[f"path{i}_scale"]) == (fit.loc, fit.scale)
        assert p[f"path{i}_threshold"] == pytest.approx(fit.quantile(0.99))
        # the largest of independent paths exceeds t at least as often as any one of them
        assert cal.threshold > p[f"path{i}_threshold"]
    # at the threshold, the independent paths' maximum exceeds it with the target probability
    exceed = 1.0 - np.prod([1.0 - fit_tail(scores[:, i]).exceedance(cal.threshold) for i in range(3)])
    assert exceed == pytest.approx(0.01, rel=1e-6)
    top = scores.max(axis=1)
    assert p["calibration_frr"] == float(np.mean(top > cal.threshold))
    assert cal.good_scores["max"] == pytest.approx(top.max())
    assert {"max_fit_threshold", "empirical_threshold", "ks_critical_5pct", "exceedances",
            "tail_p_value"} <= set(p)


def test_paths_that_cannot_be_fitted_fall_back_to_one_fit_of_the_maximum() -> None:
    rng = np.random.default_rng(1)
    scores, _ = _frechet_paths(rng, 60, (9.0, 25.0))
    one = calibrate_paths(scores[:, :1], 0.005)
    assert one == calibrate_threshold(scores[:, 0], 0.005)  # one path: the plain calibration
    flat = scores.copy()
    flat[:, 1] = 0.5  # a path that never varies (below the other: the maximum still does)
    assert calibrate_paths(flat, 0.005).method == "frechet"
    two_bodies = scores.copy()
    two_bodies[:, 1] = np.where(rng.random(60) < 0.5, 0.3, 3.0) * (1 + 0.001 * rng.random(60))
    cal = calibrate_paths(two_bodies, 0.005)  # KS rejects the second path's law
    assert cal == calibrate_threshold(two_bodies.max(axis=1), 0.005)
    assert calibrate_paths(scores[:5], 0.005).method == "quantile"  # too few images to fit anything


def test_paths_whose_calibration_scores_overrun_the_threshold_get_the_empirical_quantile() -> None:
    scores, _ = _frechet_paths(np.random.default_rng(2), 100, (9.0, 25.0))
    scores[:6, 0] *= 3.0  # six good parts with real marks: far more than 0.5 % of 100 above any fit
    cal = calibrate_paths(scores, 0.005)
    assert cal.method == "quantile"
    assert cal.threshold == empirical_threshold(scores.max(axis=1), 0.005)


def test_path_scores_must_be_a_matrix_of_finite_numbers() -> None:
    with pytest.raises(ValueError, match="N×P"):
        calibrate_paths(np.ones(5), 0.005)
    with pytest.raises(ValueError, match="NaN"):
        calibrate_paths(np.full((10, 2), np.nan), 0.005)


def test_joined_paths_are_each_on_their_own_tail_and_share_the_target() -> None:
    """Each path exceeds the threshold with an equal share of the target, in its own fitted law; the joined
    score is the averaged path's law applied to the most unusual path's standardised score."""
    scores, _ = _frechet_paths(np.random.default_rng(4), 60, (8.0, 20.0, 12.0))
    join = join_paths(scores, 0.005)
    cal = join.calibration
    assert cal.method == "frechet_joined" and len(join.gains) == len(join.exponents) == 2
    fits = [fit_tail(scores[:, p]) for p in range(3)]
    share = 1.0 - (1.0 - 0.005) ** (1 / 3)
    assert cal.parameters["path_share"] == pytest.approx(share)
    for p in range(3):
        raw_threshold = cal.parameters[f"path{p}_threshold"]  # in the path's own units
        assert fits[p].exceedance(raw_threshold) == pytest.approx(share, rel=1e-9)
        # the joined score crosses the threshold exactly where the path's own score crosses its own
        probe = np.tile(np.min(scores, axis=0) * 0.5, (2, 1))
        probe[:, p] = raw_threshold * np.array([0.999, 1.001])
        below, above = join.joined(probe)
        assert below <= cal.threshold < above
    # path 1's tail (index 20) is lighter than path 0's (index 8): a power above 1 stretches it to path 0's
    assert join.exponents == pytest.approx((fits[0].scale / fits[1].scale, fits[0].scale / fits[2].scale))
    assert join.exponents[0] > join.exponents[1] > 1.0
    z = np.max([f.standardised(scores[:, p]) for p, f in enumerate(fits)], axis=0)
    np.testing.assert_allclose(join.joined(scores), np.exp(fits[0].loc + fits[0].scale * z), rtol=1e-9)
    assert cal.parameters["calibration_frr"] == float(np.mean(join.joined(scores) > cal.threshold))


@pytest.mark.parametrize("n_images", [40, 150])
def test_joined_paths_get_the_target_rate(n_images: int) -> None:
    rng = np.random.default_rng(3)
    frr = []
    for _ in range(200):
        scores, laws = _frechet_paths(rng, n_images, (9.0, 25.0))
        join = join_paths(scores, 0.005)
        if join.calibration.method != "frechet_joined":
            continue
        # a good part passes when every path stays below its own equivalent of the threshold
        raw = [join.calibration.parameters[f"path{p}_threshold"] for p in range(2)]
        frr.append(1.0 - float(np.prod([gumbel_cdf(np.log(t), loc, scale)
                                        for t, (loc, scale) in zip(raw, laws, strict=True)])))
    assert len(frr) >= 190
    assert np.median(frr) == pytest.approx(0.005, rel=0.3)


def test_a_mark_on_the_light_tailed_path_is_not_hidden_by_the_heavy_one() -> None:
    """The reason for the join: an alone path whose good parts vary little (tail index 30) sees a mark at
    1.35× its median; the averaged path's heavy tail (tail index 6) sets a median-weighed threshold above
    that. Weighed to one median the mark is missed; on its own tail it is caught, at the same target."""
    rng = np.random.default_rng(11)
    cal, _ = _frechet_paths(rng, 150, (6.0, 30.0))
    test_good, _ = _frechet_paths(rng, 4000, (6.0, 30.0))
    marked = _frechet_paths(rng, 400, (6.0, 30.0))[0] * np.array([1.0, 1.35])
    join = join_paths(cal, 0.005)
    assert join.calibration.method == "frechet_joined"
    weighed = cal * np.array([1.0, *median_gains(cal)])
    by_median = calibrate_paths(weighed, 0.005).threshold
    caught_by_median = np.mean((marked * np.array([1.0, *median_gains(cal)])).max(axis=1) > by_median)
    caught_by_tails = np.mean(join.joined(marked) > join.calibration.threshold)
    assert caught_by_median < 0.5 and caught_by_tails > 0.9
    # at the cost of no more good parts rejected than the target allows
    assert np.mean(join.joined(test_good) > join.calibration.threshold) < 0.01


def test_paths_without_a_fitted_tail_are_joined_by_their_medians() -> None:
    rng = np.random.default_rng(1)
    scores, _ = _frechet_paths(rng, 60, (9.0, 25.0))
    assert join_paths(scores[:, :1], 0.005).calibration == calibrate_threshold(scores[:, 0], 0.005)
    two_bodies = scores.copy()
    two_bodies[:, 1] = np.where(rng.random(60) < 0.5, 0.3, 3.0) * (1 + 0.001 * rng.random(60))
    join = join_paths(two_bodies, 0.005)  # KS rejects the second path's law: today's join and threshold
    gains = median_gains(two_bodies)
    assert join.exponents == () and join.gains == tuple(gains)
    assert join.calibration == calibrate_paths(two_bodies * np.array([1.0, *gains]), 0.005)
    np.testing.assert_allclose(join.joined(two_bodies), (two_bodies * np.array([1.0, *gains])).max(axis=1))
    # a tail so much lighter than the averaged path's (scale 1/9) that its power would be about 12 > 8
    light = scores.copy()
    light[:, 1] = np.exp(rng.gumbel(0.0, 1 / 9 / 12, 60))
    far = join_paths(light, 0.005)
    assert far.exponents == () and far.calibration.method != "frechet_joined"
    assert join_paths(scores[:5], 0.005).calibration.method == "quantile"  # too few images to fit anything


def test_joined_paths_whose_calibration_scores_overrun_the_threshold_get_the_empirical_quantile() -> None:
    scores, _ = _frechet_paths(np.random.default_rng(2), 100, (9.0, 25.0))
    scores[:6, 0] *= 3.0
    join = join_paths(scores, 0.005)
    assert join.exponents and join.calibration.method == "quantile"
    assert join.calibration.threshold == empirical_threshold(join.joined(scores), 0.005)


def test_the_paths_share_the_5_percent_level_of_their_tail_tests() -> None:
    """With four paths each KS test runs at 1.25 %: a tail a little off (KS 0.227 of 40 images, beyond the
    5 % value 0.210, within the shared 0.247) keeps the paths on their own tails instead of sending all four
    to the median join; one further off (0.26) still does."""
    assert ks_critical(40, 0.05) == ks_critical_5pct(40) == pytest.approx(0.2102, abs=1e-4)
    assert path_ks_critical(40, 4) == pytest.approx(ks_critical(40, 0.0125))
    assert path_ks_critical(40, 4) == pytest.approx(0.2465, abs=1e-4)
    rng = np.random.default_rng(4)
    scores, _ = _frechet_paths(rng, 40, (6.0, 9.0, 12.0, 9.0))
    n = 40
    frechet = np.exp(-np.log(-np.log((np.arange(n) + 0.5) / n)) / 9.0)  # the law's quantiles, in order

    def clumped(k: int) -> np.ndarray:
        """The quantiles with k of the middle ones bunched at the median: a body the law does not fit."""
        x = frechet.copy()
        x[n // 2 - k // 2: n // 2 + (k + 1) // 2] = np.median(frechet) * (1 + 1e-4 * np.arange(k))
        return rng.permutation(x)

    scores[:, 3] = clumped(18)
    assert max(fit_tail(scores[:, p]).ks for p in range(3)) < ks_critical_5pct(n)
    assert ks_critical_5pct(n) < fit_tail(scores[:, 3]).ks < path_ks_critical(n, 4)
    join = join_paths(scores, 0.005)
    assert join.calibration.method == "frechet_joined" and len(join.exponents) == 3
    assert join.calibration.parameters["path_ks_critical"] == pytest.approx(path_ks_critical(n, 4))
    scores[:, 3] = clumped(24)
    assert fit_tail(scores[:, 3]).ks > path_ks_critical(n, 4)
    assert join_paths(scores, 0.005).exponents == ()  # the median join
