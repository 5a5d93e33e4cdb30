"""lab/report/findings.py, and the seeds, intervals and findings in the report: comparisons matched
from hand-made records, their lines in the report and in `--compare`, and one real session
with `--seeds 2` (then the same seed again) on mock data."""

import dataclasses
import json

import numpy as np
import pytest

from lab.measurements import ValidationSet
from lab.report import compare, findings, render, statistics
from lab.report.results import BenchmarkResult, Outcome, Record, Results, RunHeader

LABELS = [index % 5 for index in range(100)]
FLOWERS = "tf_flowers (mock), 32px, 100 images"


def _run(**fields) -> RunHeader:
    values = {"profile": "smoke", "seed": 0, "data_source": "mock", "data_source_description": "mock",
              "weights_description": "--weights none", "device_slug": "cpu", "seeds": [0]}
    return RunHeader(**{**values, **fields})


def _predictions(right: int, offset: int = 0) -> list[int]:
    """Predictions right on `right` images (the images from `offset` on, wrapping), wrong elsewhere."""
    correct = np.roll(np.arange(100) < right, offset)
    return [label if ok else (label + 1) % 5 for label, ok in zip(LABELS, correct, strict=True)]


def _record(experiment, table, keys, row, predictions, seed=0) -> Record:
    accuracy = float(np.mean(np.array(predictions) == np.array(LABELS)))
    column = "final validation accuracy" if experiment == 5 else "validation accuracy"
    return Record(experiment, table, keys, {**row, column: accuracy}, seed=seed, validation_set=FLOWERS,
                  validation_images=100, predictions=predictions)


def _transfer(initialisation, predictions, seed=0) -> Record:
    return _record(2, "Transferred against scratch", ("initialisation",), {"initialisation": initialisation},
                   predictions, seed)


def _results(records, **fields) -> Results:
    return Results(run=_run(**fields.pop("run", {})), records=records,
                   validation_sets=[ValidationSet(FLOWERS, 5, LABELS)], **fields)


def test_one_seed_compares_the_arms_by_mcnemar_on_their_predictions():
    results = _results([_transfer("transferred", _predictions(80)), _transfer("scratch", _predictions(40))])

    (comparison,) = findings.comparisons(results)

    expected = statistics.compare_predictions(
        "Experiment 2", "transferred", [np.array(_predictions(80))], "scratch", [np.array(_predictions(40))],
        np.array(LABELS),
    )
    assert comparison == dataclasses.replace(expected, experiment=2)
    assert comparison.verdict == "transferred better than scratch"
    assert "McNemar" in comparison.method and comparison.n_images == 100


def test_several_seeds_compare_over_images_and_the_seeds_both_arms_ran():
    records = [_transfer("transferred", _predictions(right, seed), seed) for seed, right in ((0, 60), (1, 62), (2, 61))]
    records += [_transfer("scratch", _predictions(right, seed), seed) for seed, right in ((0, 50), (1, 51), (5, 49))]

    (comparison,) = findings.comparisons(_results(records))

    assert comparison.n_seeds == 2, "seed 2 and seed 5 ran in one arm only"
    assert comparison.effect == pytest.approx(np.mean([0.60 - 0.50, 0.62 - 0.51]))
    assert "two-way" in comparison.method


@pytest.mark.parametrize("seeds", [[0], [0, 1]], ids=["one-seed", "two-seeds"])
def test_identical_arms_show_no_difference(seeds):
    """What a deterministic run of the same seed twice gives: the same predictions."""
    records = [_transfer(arm, _predictions(70, seed), seed) for arm in ("transferred", "scratch") for seed in seeds]

    (comparison,) = findings.comparisons(_results(records))

    assert comparison.verdict == statistics.NO_DIFFERENCE
    assert comparison.effect == 0
    row = comparison.row()
    assert row["question"] == "Experiment 2: transferred vs scratch"
    assert row["verdict"].startswith("no difference detectable; would detect ±")


def _experiment_3_case(test: str, backbone: str, weights: str, outcome: str, reason: str = "") -> Outcome:
    """An outcome of experiment 3's head test, as the plugin records it: its experiment and parameters."""
    parameters = {"seed": "0", "backbone_name": backbone, "weights_kind": weights}
    return Outcome(f"{test}[seed0-{backbone}-{weights}]", outcome, reason, 3, parameters)


def test_an_arm_that_did_not_run_is_not_compared_with_its_reason():
    test = "experiments/test_3_pretrained_backbone.py::test_pretrained_features_classify_flowers"
    record = _record(3, "A head", ("backbone", "weights"), {"backbone": "resnet50", "weights": "none"},
                     _predictions(40))
    outcomes = [_experiment_3_case(test, "resnet50", "imagenet", "skipped", "no ImageNet weights for resnet50 offline"),
                _experiment_3_case(test, "resnet50", "none", "passed")]

    (comparison,) = findings.comparisons(_results([record], outcomes=outcomes))

    assert comparison.question == "Experiment 3, resnet50"
    assert comparison.verdict == statistics.NOT_COMPARED
    assert comparison.row()["verdict"] == (
        "not compared: imagenet skipped (seed 0, resnet50, imagenet: no ImageNet weights for resnet50 offline)"
    )


def test_a_question_whose_arms_were_both_skipped_is_still_asked_with_the_reason():
    test = "experiments/test_3_pretrained_backbone.py::test_pretrained_features_classify_flowers"
    answered = _record(3, "A head", ("backbone", "weights"), {"backbone": "mobilenet", "weights": "none"},
                       _predictions(40))
    outcomes = [_experiment_3_case(test, "resnet50", "imagenet", "skipped", "no ImageNet weights for resnet50 offline"),
                _experiment_3_case(test, "resnet50", "none", "skipped", "random-weights control of an ImageNet case"),
                _experiment_3_case(test, "mobilenet", "none", "passed")]

    first, resnet = findings.comparisons(_results([answered], outcomes=outcomes))

    assert (first.question, resnet.question) == ("Experiment 3, mobilenet", "Experiment 3, resnet50")
    assert resnet.verdict == statistics.NOT_COMPARED
    assert "imagenet skipped" in resnet.reason and "no ImageNet weights for resnet50 offline" in resnet.reason


def test_renaming_a_test_or_its_module_leaves_the_findings_as_they_were():
    answered = _record(3, "A head", ("backbone", "weights"), {"backbone": "mobilenet", "weights": "none"},
                       _predictions(40))

    def findings_of(test: str) -> list[dict]:
        outcomes = [
            _experiment_3_case(test, "resnet50", "imagenet", "skipped", "no ImageNet weights for resnet50 offline"),
            _experiment_3_case(test, "resnet50", "none", "skipped", "random-weights control of an ImageNet case"),
            _experiment_3_case(test, "mobilenet", "none", "passed"),
        ]
        return [comparison.row() for comparison in findings.comparisons(_results([answered], outcomes=outcomes))]

    before = findings_of("experiments/test_3_pretrained_backbone.py::test_pretrained_features_classify_flowers")
    after = findings_of("experiments/test_9_imagenet_or_not.py::test_a_head_on_features")

    assert before == after and any("resnet50" in row["question"] for row in before)


def test_the_cnn_is_compared_with_the_majority_class():
    record = _record(1, "The lab CNN", ("filters",), {"filters": "32-64-128"}, _predictions(45))

    (comparison,) = findings.comparisons(_results([record]))

    assert comparison.question == "Experiment 1, filters 32-64-128"
    assert comparison.b_name == "the majority class (0.200)"
    assert comparison.verdict == "the CNN better than the majority class (0.200)"


def test_on_imbalanced_images_a_cnn_that_always_predicts_the_majority_class_is_not_better_than_chance():
    # 180 of 734 in the full tf_flowers' validation split are one class: one over five would be 0.2.
    labels = [0] * 60 + [1, 2, 3, 4] * 10
    record = dataclasses.replace(
        _record(1, "The lab CNN", ("filters",), {"filters": "32-64-128"}, [0] * 100),
        row={"filters": "32-64-128", "validation accuracy": 0.6},
    )
    results = _results([record])
    results.validation_sets = [ValidationSet(FLOWERS, 5, labels)]

    (comparison,) = findings.comparisons(results)

    assert comparison.b_name == "the majority class (0.600)" and comparison.effect == pytest.approx(0.0)
    assert comparison.verdict == statistics.NO_DIFFERENCE


def test_each_strategy_is_compared_with_head_only_and_with_full_once():
    records = [
        _record(5, "Strategies", ("backbone", "strategy", "weights"),
                {"backbone": "mobilenet_v2", "strategy": strategy, "weights": "imagenet"}, _predictions(right))
        for strategy, right in (("gradual-blocks", 70), ("head-only", 60), ("full", 72))
    ]

    pairs = [(c.question, c.a_name, c.b_name) for c in findings.comparisons(_results(records))]

    assert pairs == [("Experiment 5, mobilenet_v2", "gradual-blocks", "head-only"),
                     ("Experiment 5, mobilenet_v2", "full", "head-only"),
                     ("Experiment 5, mobilenet_v2", "gradual-blocks", "full")]


def _strategy(strategy, right, backbone="mobilenet_v2") -> Record:
    return _record(5, "Strategies", ("backbone", "strategy", "weights"),
                   {"backbone": backbone, "strategy": strategy, "weights": "imagenet"}, _predictions(right))


@pytest.mark.parametrize(
    "right, verdict", [(56, statistics.NO_DIFFERENCE), (80, "gradual-blocks better than head-only")],
    ids=["raw-p-0.03", "strong"],
)
def test_strategy_verdicts_follow_p_values_holm_adjusted_over_the_backbones_comparisons(right, verdict):
    """Six strategies make nine comparisons; gradual-blocks is the only one with a raw p < 0.05 against head-only."""
    others = [_strategy(name, 50) for name in ("head-only", "gradual-layers", "gradual-discriminative",
                                               "full-discriminative")]
    answers = findings.comparisons(_results([_strategy("gradual-blocks", right), _strategy("full", 53), *others]))

    assert len(answers) == 9 and {answer.family_size for answer in answers} == {9}
    target = next(answer for answer in answers if (answer.a_name, answer.b_name) == ("gradual-blocks", "head-only"))
    alone = statistics.compare_predictions(
        "Experiment 5, mobilenet_v2", "gradual-blocks", [np.array(_predictions(right))], "head-only",
        [np.array(_predictions(50))], np.array(LABELS),
    )
    assert alone.verdict == "gradual-blocks better than head-only"
    assert [answer.p_value < 0.05 for answer in answers].count(True) == (1 if right == 56 else 2)
    assert target.p_value == alone.p_value and target.p_adjusted == pytest.approx(min(1.0, 9 * alone.p_value))
    assert target.verdict == verdict
    if right == 56:
        assert alone.p_value == pytest.approx(0.03125)
        assert all(answer.verdict == statistics.NO_DIFFERENCE for answer in answers)
        assert target.row()["p"] == "0.281 (Holm, 9; raw 0.031)"
    else:
        by_full = next(answer for answer in answers if (answer.a_name, answer.b_name) == ("gradual-blocks", "full"))
        assert by_full.verdict == "gradual-blocks better than full"
        assert target.row()["p"].startswith("<0.001 (Holm, 9; raw ")


def test_not_compared_strategies_stay_out_of_the_family_and_backbones_are_separate_families():
    records = [_strategy(name, right) for name, right in (("head-only", 50), ("gradual-blocks", 56),
                                                          ("gradual-layers", 50))]
    records += [_strategy(name, right, "resnet50") for name, right in (("head-only", 50), ("gradual-blocks", 56))]

    answers = findings.comparisons(_results(records))

    sizes = {(answer.question, answer.a_name, answer.b_name): answer.family_size for answer in answers}
    assert sizes == {
        ("Experiment 5, mobilenet_v2", "gradual-blocks", "head-only"): 2,
        ("Experiment 5, mobilenet_v2", "gradual-layers", "head-only"): 2,
        ("Experiment 5, mobilenet_v2", "gradual-blocks", "full"): None,
        ("Experiment 5, mobilenet_v2", "gradual-layers", "full"): None,
        ("Experiment 5, resnet50", "gradual-blocks", "head-only"): None,
        ("Experiment 5, resnet50", "gradual-layers", "head-only"): None,
        ("Experiment 5, resnet50", "gradual-blocks", "full"): None,
    }, "arms that did not run are not compared and not counted; resnet50's one comparison stands alone"
    alone = next(answer for answer in answers if answer.question == "Experiment 5, resnet50"
                 and answer.b_name == "head-only")
    assert alone.verdict == "gradual-blocks better than head-only" and alone.p_adjusted is None
    assert "Holm" not in alone.row()["p"]
    results = _results(records)
    results.comparisons = answers
    assert Results.from_json(json.loads(json.dumps(results.to_json()))).comparisons == answers


def test_holm_adjusts_each_p_value_by_its_rank_and_keeps_their_order():
    family = [dataclasses.replace(statistics.not_compared("Q", name, "B", ""), verdict=f"{name} better than B",
                                  p_value=p_value, effect=0.1, low=0.0, high=0.2)
              for name, p_value in (("a", 0.01), ("b", 0.04), ("c", 0.03), ("d", 0.5))]

    adjusted = statistics.adjusted_for_family(family)

    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, each at least the one before: 0.04, 0.09, 0.09, 0.5.
    assert [comparison.p_adjusted for comparison in adjusted] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert [comparison.verdict for comparison in adjusted] == ["a better than B"] + [statistics.NO_DIFFERENCE] * 3


def test_speedups_come_from_the_timed_rounds_and_a_missing_mode_is_not_compared():
    benchmarks = [
        BenchmarkResult(f"test_epoch_time_{mode}[mobilenet]", "mobilenet", mode, 96, 128, median=rounds[1],
                        rounds=3, round_seconds=rounds)
        for mode, rounds in (("unfrozen", [2.0, 2.1, 1.9]), ("frozen", [0.5, 0.52, 0.49]))
    ]

    frozen, cached = findings.comparisons(_results([], benchmarks=benchmarks))

    assert frozen.verdict == "frozen faster than unfrozen" and frozen.n_rounds == (3, 3)
    assert frozen.effect == pytest.approx(np.exp(np.mean(np.log([2.0, 2.1, 1.9])) - np.mean(np.log([0.5, 0.52, 0.49]))))
    assert cached.verdict == statistics.NOT_COMPARED and "frozen-cached did not run" in cached.reason


def test_epoch_times_that_were_not_measured_say_why():
    outcomes = [Outcome("experiments/test_4_freeze.py::test_epoch_time_frozen[mobilenet]", "passed", "", 4,
                        {"backbone_name": "mobilenet", "mode": "frozen"})]
    note = "pytest-benchmark disables itself under pytest-xdist (-n); run without -n for epoch times"

    (comparison,) = findings.comparisons(_results([], outcomes=outcomes, run={"benchmarks_note": note}))

    assert (comparison.question, comparison.verdict, comparison.reason) == ("Experiment 4", "not compared", note)


def test_report_shows_findings_first_and_means_with_intervals_per_seed():
    records = [_transfer(arm, _predictions(right + seed, seed), seed)
               for arm, right in (("transferred", 60), ("scratch", 50)) for seed in (0, 1)]
    results = _results(records, run={"seeds": [0, 1]})
    results.comparisons = findings.comparisons(results)

    loaded = Results.from_json(json.loads(json.dumps(results.to_json())))
    markdown = render.render(loaded, "figures").markdown

    assert loaded.comparisons == results.comparisons
    assert markdown.index("## Findings") < markdown.index("## Experiment 2")
    assert render.findings_table(results.comparisons) in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| transferred"))
    estimate = statistics.estimate_accuracy(findings.correctness_of(records[:2], results.validation_sets))
    assert estimate.text() in row and "0.600, 0.610" in row and "0, 1" in row


def test_one_seed_accuracies_carry_their_wilson_interval():
    (row,) = render.table_rows([_transfer("scratch", _predictions(43))])
    wilson = statistics.estimate_accuracy(statistics.Correctness.from_count(0.43, 100))
    assert row["validation accuracy"] == wilson.text()


def test_compare_says_whether_two_runs_differ_beyond_their_intervals():
    first = _results([_transfer("transferred", _predictions(90)), _transfer("scratch", _predictions(40))])
    second = _results([_transfer("transferred", _predictions(40)), _transfer("scratch", _predictions(41))])

    text = compare.compare(first, second)

    section, paired = text.split("## Accuracies against their 95% intervals", 1)[1].split("\n## ", 1)
    rows = {line.split("|")[3].strip(): line.split("|")[7].strip() for line in section.splitlines()
            if line.startswith("| Experiment")}
    assert rows == {"transferred": "yes: A higher", "scratch": "no: the intervals overlap"}
    # Paired on the same images, as `--baseline A` would: B's transferred row is worse than A's.
    verdicts = {line.split("|")[1].strip().rsplit(": ", 1)[-1]: line.split("|")[7].strip()
                for line in paired.splitlines() if line.startswith("| Experiment")}
    assert verdicts["transferred"] == "worse than the baseline"
    assert verdicts["scratch"].startswith("no difference detectable")


def _sessions(start_pytest, tmp_path, *seed_options):
    """Runs experiment 1's narrow CNN in one pytest process per `--seeds` value (and options after
    it: `"2 --split-per-seed"`), side by side.

    Returns, per process: its stdout, its markdown report and its results.json.
    """
    processes = [
        start_pytest(
            tmp_path / f"seeds{seeds.replace(' ', '')}",
            "experiments/test_1_base_model.py", "-k", "narrow", "--deterministic", "--data-source", "mock",
            "--weights", "none", "--subset", "32", "--epochs", "2", "-p", "no:cacheprovider", "--seeds", *seeds.split(),
        )
        for seeds in seed_options
    ]
    sessions = []
    for process in processes:
        finished = process.finished()
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        (folder,) = [entry for entry in process.report_dir.iterdir() if entry.is_dir()]
        results = json.loads((folder / "results.json").read_text())
        sessions.append((finished.stdout, (process.report_dir / "latest-smoke.md").read_text(), results))
    return sessions


def test_a_run_with_two_seeds_reports_each_seed_their_mean_and_interval_and_repeats_exactly(
    tmp_path, start_pytest
):
    (stdout, markdown, results), (_, _, again), (_, split_markdown, split) = _sessions(
        start_pytest, tmp_path, "2", "1", "2 --split-per-seed"
    )

    tests = sorted(outcome["test"].split("::")[1] for outcome in results["outcomes"])
    assert tests == ["test_base_model[seed0-narrow]", "test_base_model[seed1-narrow]"]
    per_seed = {record["seed"]: record for record in results["records"]}
    assert sorted(per_seed) == [0, 1] and all(len(record["predictions"]) == 100 for record in per_seed.values())
    loaded = Results.from_json(results)
    records = sorted(loaded.records, key=lambda record: record.seed)
    estimate = statistics.estimate_accuracy(findings.correctness_of(records, loaded.validation_sets))
    row = next(line for line in markdown.splitlines() if line.startswith("| 16-32-64"))
    assert estimate.text() in row
    assert ", ".join(f"{value:.3f}" for value in estimate.per_seed) in row
    (comparison,) = loaded.comparisons
    assert comparison.row()["question"].startswith("Experiment 1, filters 16-32-64: ")
    assert comparison.row()["evidence"] == "2 seeds x 100 images"
    assert render.findings_table(loaded.comparisons) in markdown
    assert render.findings_table(loaded.comparisons, "simple").splitlines()[-1] in stdout

    (record,) = again["records"]
    assert (record["row"]["validation accuracy"], record["predictions"]) == (
        per_seed[0]["row"]["validation accuracy"], per_seed[0]["predictions"]
    ), "the same seed under --deterministic gave other figures"
    labels = np.array(again["validation_sets"][0]["labels"])
    comparison = statistics.compare_predictions(
        "Experiment 1, seed 0 twice", "first run", [np.array(per_seed[0]["predictions"])],
        "second run", [np.array(record["predictions"])], labels,
    )
    assert comparison.verdict == statistics.NO_DIFFERENCE

    # A split per seed: each seed is scored on its own validation images, and the interval is
    # the t-interval over seeds that covers both sources.
    names = sorted(record["validation_set"] for record in split["records"])
    assert len(set(names)) == 2 and names[0].endswith("split of seed 0") and names[1].endswith("split of seed 1")
    (by_split,) = Results.from_json(split).comparisons
    assert by_split.split_per_seed and by_split.method == "t-test over seeds, each with its own split"
    assert by_split.row()["evidence"].endswith("images (split per seed)")
    assert "--split-per-seed" in split_markdown and "a t-interval over seeds" in split_markdown
