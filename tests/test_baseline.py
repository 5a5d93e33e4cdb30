"""`--baseline` and `--fail-if-worse`: paired verdicts against an earlier run, their false-alarm
rate and power on simulated sessions, and the baseline a session refuses before it trains.

The simulations draw sessions of one population (a difficulty per validation image shared by
both sessions, a spread per seed) and are vectorised over their sessions: seconds in all.
"""

import json

import numpy as np
import pytest

from lab import config
from lab.errors import LabInputError
from lab.measurements import ValidationSet
from lab.report import baseline, statistics, writing
from lab.report.results import WORSE, BenchmarkResult, Record, Results, RunHeader, Table
from lab.report.statistics import ALPHA

SESSIONS = 4000
# Rows of one simulated session, Holm-adjusted together as `against_baseline` does.
ROWS = 4
TABLE = Table("The lab CNN on tf_flowers", keys=("filters",))


def sessions(rng, runs: int, n_seeds: int, difficulty: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """(runs, rows, seeds, images) correctness of simulated sessions on shared images."""
    seed_spread = rng.normal(0, 0.02, (runs, difficulty.shape[1], n_seeds, 1))
    chance = np.clip(difficulty[:, :, None, :] + seed_spread + shift, 0, 1)
    return (rng.random(chance.shape) < chance).astype(float)


def holm_any_worse(p_values: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Whether any row of each session is called worse after Holm over its rows (as
    `statistics.adjusted_for_family` decides): the step-down on the sorted p-values."""
    order = np.argsort(p_values, axis=1)
    sorted_p = np.take_along_axis(p_values, order, axis=1)
    rows = p_values.shape[1]
    stepped = np.maximum.accumulate(sorted_p * (rows - np.arange(rows)), axis=1)
    rejected = np.empty_like(stepped, dtype=bool)
    np.put_along_axis(rejected, order, stepped < ALPHA, axis=1)
    return (rejected & (effects < 0)).any(axis=1)


@pytest.mark.parametrize(("this_seeds", "baseline_seeds"), [(2, 2), (3, 3), (1, 3), (5, 5)])
def test_sessions_of_one_population_are_called_worse_in_at_most_5_percent(this_seeds, baseline_seeds):
    """Same settings, other seeds, the same images: family-wise over a session's rows, a false
    "worse than the baseline" in at most 5% of simulated sessions (with 4000 of them the rate's
    Monte Carlo standard error is about 0.3%, well inside the bound)."""
    rng = np.random.default_rng(this_seeds * 10 + baseline_seeds)
    difficulty = rng.beta(2, 2, (SESSIONS, ROWS, 100))
    intervals = statistics.independent_seed_intervals(
        sessions(rng, SESSIONS, this_seeds, difficulty), sessions(rng, SESSIONS, baseline_seeds, difficulty)
    )
    false_alarms = holm_any_worse(intervals.p_value, intervals.mean).mean()
    assert false_alarms <= 0.05, f"{false_alarms:.1%} of sessions called worse"


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_a_drop_of_the_size_a_row_would_detect_is_found_with_about_that_power(n_seeds):
    rng = np.random.default_rng(100 + n_seeds)
    runs = 2000
    difficulty = rng.beta(2, 2, (runs, 1, 200))
    null = statistics.independent_seed_intervals(
        sessions(rng, runs, n_seeds, difficulty)[:, 0], sessions(rng, runs, n_seeds, difficulty)[:, 0]
    )
    drop = float(np.median(null.detectable()))
    found = statistics.independent_seed_intervals(
        sessions(rng, runs, n_seeds, difficulty, -drop)[:, 0], sessions(rng, runs, n_seeds, difficulty)[:, 0]
    )
    power = float(np.mean((found.p_value < ALPHA) & (found.mean < 0)))
    assert 0.72 <= power <= 0.88, f"a drop of {drop:.3f} found {power:.1%} of the time"


def test_independent_seeds_p_and_interval_agree():
    rng = np.random.default_rng(7)
    difficulty = rng.beta(2, 2, (400, 1, 60))
    intervals = statistics.independent_seed_intervals(
        sessions(rng, 400, 2, difficulty, rng.uniform(-0.1, 0.1))[:, 0], sessions(rng, 400, 3, difficulty)[:, 0]
    )
    excludes = (intervals.low > 0) | (intervals.high < 0)
    assert ((intervals.p_value < ALPHA) == excludes).all()


# `against_baseline` on hand-made runs: pairing, reasons, verdicts.

def run(seeds: list[int], correct: dict[str, list[np.ndarray]], digest: str = "d", benchmarks=(), **options) -> Results:
    labels = [0] * 200
    validation = ValidationSet("tf_flowers (sample), 32px, 200 images", 5, labels, digest)
    records = []
    for filters, per_seed in correct.items():
        for seed, right in zip(seeds, per_seed, strict=True):
            predictions = [0 if hit else 1 for hit in right]
            row = {"filters": filters, "validation accuracy": float(np.mean(right))}
            records.append(Record(1, TABLE.title, TABLE.keys, row, seed=seed, validation_set=validation.name,
                                  validation_images=200, predictions=predictions))
    header = RunHeader("smoke", seeds[0], "sample", "the sample", "--weights none", seeds=seeds,
                       options=options, started="2026-12-07T00:00:00+00:00", commit="abc1234")
    return Results(header, records, list(benchmarks), validation_sets=[validation])


def drawn(rng, accuracy: float, n_seeds: int) -> list[np.ndarray]:
    return [rng.random(200) < accuracy for _ in range(n_seeds)]


def test_rows_pair_on_the_same_images_and_say_why_they_do_not():
    rng = np.random.default_rng(3)
    earlier = run([0, 1], {"lab": drawn(rng, 0.6, 2), "narrow": drawn(rng, 0.6, 2), "wide": drawn(rng, 0.6, 2)})
    this = run([2, 3], {"lab": drawn(rng, 0.6, 2), "narrow": drawn(rng, 0.2, 2), "tiny": drawn(rng, 0.6, 2)},
               **{"--epochs": "2"})
    compared = baseline.against_baseline(this, earlier, "reports/earlier")

    verdicts = {row.row.split(": ")[-1]: row.comparison.verdict for row in compared.rows}
    assert verdicts["narrow"] == WORSE
    assert verdicts["tiny"] == statistics.NOT_COMPARED and verdicts["wide"] == statistics.NOT_COMPARED
    assert [row.row for row in compared.worse()] == [f"Experiment 1, {TABLE.title}: narrow"]
    assert "--epochs 2 / (default)" in compared.differing and "seeds 2,3 / 0,1" in compared.differing
    reasons = {row.row.split(": ")[-1]: row.comparison.reason for row in compared.rows}
    assert reasons["tiny"] == "the baseline has no such row" and reasons["wide"] == "this run has no such row"
    narrow = next(row for row in compared.rows if row.row.endswith("narrow"))
    assert "independent training runs" in narrow.comparison.method

    other_images = baseline.against_baseline(run([2, 3], {"lab": drawn(rng, 0.6, 2)}, digest="other"), earlier, "x")
    assert other_images.rows[0].comparison.reason == "other validation images"
    no_predictions = run([0, 1], {"lab": drawn(rng, 0.6, 2)})
    for record in no_predictions.records:
        record.predictions = None
    unpaired = baseline.against_baseline(run([2, 3], {"lab": drawn(rng, 0.6, 2)}), no_predictions, "x")
    assert unpaired.rows[0].comparison.reason == "the baseline kept no predictions for it"


def test_one_seed_on_each_side_says_what_it_cannot_speak_for_and_epoch_times_are_ratios():
    rng = np.random.default_rng(4)
    timed = [BenchmarkResult("t", "mobilenet", "frozen", 96, 128, 1.0, round_seconds=[1.0, 1.1, 0.9])]
    slower = [BenchmarkResult("t", "mobilenet", "frozen", 96, 128, 2.0, round_seconds=[2.0, 2.1, 1.9])]
    this = run([0], {"lab": drawn(rng, 0.5, 1)}, benchmarks=timed)
    compared = baseline.against_baseline(this, run([0], {"lab": drawn(rng, 0.5, 1)}, benchmarks=slower), "x")
    assert "a change that only perturbs training looks like a change" in compared.rows[0].comparison.method
    (epoch,) = compared.epoch_times
    assert epoch.comparison.measure == "ratio" and epoch.comparison.effect == pytest.approx(2.0, rel=0.05)
    assert compared.worse() == []


def test_a_baseline_round_trips_through_results_json(tmp_path):
    rng = np.random.default_rng(5)
    results = run([0, 1], {"lab": drawn(rng, 0.6, 2)})
    results.baseline = baseline.against_baseline(results, run([2, 3], {"lab": drawn(rng, 0.3, 2)}), "x")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results.to_json()))
    assert writing.load_results(str(path)).baseline == results.baseline


def test_fail_if_worse_without_a_baseline_is_refused():
    with pytest.raises(LabInputError, match="--fail-if-worse needs --baseline RUN"):
        config.build_config(fail_if_worse=True)


def test_a_baseline_that_predicted_none_of_this_session_s_images_is_refused_before_training(tmp_path, run_python):
    rng = np.random.default_rng(6)
    other = run([0], {"lab": drawn(rng, 0.5, 1)}, digest="0" * 64)
    (tmp_path / "results.json").write_text(json.dumps(other.to_json()))
    process, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", "-p", "no:cacheprovider",
        f"--baseline={tmp_path / 'results.json'}", "--fail-if-worse", f"--report-dir={tmp_path / 'reports'}",
    )
    assert process.returncode == pytest.ExitCode.USAGE_ERROR, process.stdout[-3000:] + process.stderr[-3000:]
    assert "predicted none of this session's validation images" in process.stdout + process.stderr
    assert not list((tmp_path / "reports").glob("*")), "a refused session left a run folder"
