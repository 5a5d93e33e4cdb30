"""The lab's questions, answered from a session's results: one paired comparison per question.

1. Does the CNN learn? Each filter width against the best constant classifier on its validation
   images: always the majority class, whose accuracy is that class's share (on imbalanced data
   more than one over the number of classes).
2. Do transferred convolutions beat scratch? `transferred` against `scratch`.
3. Do ImageNet features beat random ones? Per backbone, `imagenet` against `none` weights.
4. How much faster is a frozen base? Per backbone, `frozen` and `frozen-cached` epochs against
   `unfrozen` ones, from pytest-benchmark's timed rounds.
5. Is gradual unfreezing worth it? Per backbone, each strategy against `head-only` and `full`.

The arms of a question are the records of its experiment that carry per-image predictions,
matched by their table's key columns and by seed; the statistics are `lab.report.statistics`'. A
question whose arms did not both run is answered "not compared", with the reason.

The comparisons of one findings question (one line prefix: experiment 5's backbone, with
its weights; experiment 4's backbone) are one family, read together: their p-values are
Holm-adjusted over the family's compared comparisons, and the adjusted p-value decides each
verdict, so the chance of any false "better than" in the family stays below 5% (Holm rather
than Benjamini-Hochberg because each verdict is read as a claim on its own, and Holm bounds
the chance of even one false claim whatever the dependence between comparisons that share an
arm). Experiments 1, 2 and 3 ask one comparison per question (per filter width, per backbone:
each a different network), so their p-values stand unadjusted.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from lab.errors import LabInputError
from lab.measurements import ValidationSet
from lab.report import statistics
from lab.report.results import BenchmarkResult, Outcome, Record, Results
from lab.report.statistics import Comparison, Correctness

# Experiment 5's baselines: every other strategy is compared with both.
HEAD_ONLY, FULL = "head-only", "full"
# Experiment 4's baseline and the modes compared with it.
UNFROZEN, FASTER_MODES = "unfrozen", ("frozen", "frozen-cached")
FEATURE_NAMES = {"imagenet": "ImageNet features", "none": "random features"}
# The parameters that make a test an arm of its question: a training case's seed, and experiment
# 4's epoch-time mode (its `arm` marker).
SEED_PARAMETER, MODE_PARAMETER = "seed", "mode"


def comparisons(results: Results) -> list[Comparison]:
    """Every question of the lab this session's results can answer, in experiment order."""
    by_experiment = {
        1: _against_chance(results),
        2: _pairs(results, 2, "initialisation", [("transferred", "scratch")]),
        3: _pairs(results, 3, "weights", [("imagenet", "none")], FEATURE_NAMES),
        4: _speedups(results),
        5: _strategies(results),
    }
    answers = []
    for number, answered in by_experiment.items():
        unanswered = None if answered else _unanswered(results, number)
        answers += [
            dataclasses.replace(answer, experiment=number) for answer in answered + ([unanswered] if unanswered else [])
        ]
    return _adjusted_per_question(answers)


def _adjusted_per_question(answers: list[Comparison]) -> list[Comparison]:
    """The answers, each question's comparisons Holm-adjusted as one family, in the order given."""
    families: dict[str, list[int]] = defaultdict(list)
    for index, comparison in enumerate(answers):
        families[comparison.question].append(index)
    adjusted = list(answers)
    for indices in families.values():
        family = statistics.adjusted_for_family([answers[index] for index in indices])
        for index, comparison in zip(indices, family, strict=True):
            adjusted[index] = comparison
    return adjusted


def _arms(results: Results, experiment: int, arm_column: str | None) -> dict[tuple, dict[str, dict[int, Record]]]:
    """The experiment's predicting records: context (the other key columns' values) -> arm -> seed -> record."""
    grouped: dict[tuple, dict[str, dict[int, Record]]] = defaultdict(lambda: defaultdict(dict))
    for record in results.records:
        if record.experiment != experiment or record.predictions is None:
            continue
        if arm_column is not None and arm_column not in record.keys:
            continue
        context = tuple((column, str(record.row.get(column))) for column in record.keys if column != arm_column)
        arm = str(record.row.get(arm_column)) if arm_column else ""
        grouped[context][arm][record.seed or 0] = record
    return grouped


def _question(experiment: int, context: tuple) -> str:
    shown = [value if column == "backbone" else f"{column} {value}" for column, value in context
             if not (column == "weights" and value == "imagenet")]
    return ", ".join([f"Experiment {experiment}", *shown])


def _against_chance(results: Results) -> list[Comparison]:
    answers = []
    for context, arms in _arms(results, 1, None).items():
        question = _question(1, context)
        records = [arms[""][seed] for seed in sorted(arms[""])]
        validation_set = _validation_set(results, records[0])
        correct = correctness_of(records, results.validation_sets)
        if validation_set is None or correct is None:
            reason = "its validation labels were not saved"
            answers.append(statistics.not_compared(question, "the CNN", "chance", reason))
            continue
        answers.append(_guarded(
            "chance", statistics.compare_with_constant, question, "the CNN", correct, majority_share(validation_set),
            "the majority class",
        ))
    return answers


def majority_share(validation_set: ValidationSet) -> float:
    """The accuracy of always predicting the validation images' most common class: chance, for a
    classifier that learned nothing but the class balance."""
    labels = validation_set.labels
    return max(labels.count(label) for label in set(labels)) / len(labels)


def correctness_of(records: list[Record], validation_sets: list[ValidationSet]) -> Correctness | None:
    """Which validation images each record (one per seed, in seed order) got right.

    Returns:
        None where a record kept no predictions or its validation labels were not saved.
    """
    by_name = {validation_set.name: validation_set for validation_set in validation_sets}
    predictions, labels = [], []
    for record in records:
        validation_set = by_name.get(record.validation_set)
        if record.predictions is None or validation_set is None:
            return None
        predictions.append(record.predictions)
        labels.append(validation_set.labels)
    shared_images = len({record.validation_set for record in records}) == 1
    return Correctness.from_predictions(predictions, labels, shared_images)


def _pairs(
    results: Results,
    experiment: int,
    arm_column: str,
    pairs: list[tuple[str, str]],
    names: dict[str, str] | None = None,
) -> list[Comparison]:
    """Arm A against arm B in every context where either of them ran."""
    names = names or {}
    answers = []
    for context, arms in _arms(results, experiment, arm_column).items():
        question = _question(experiment, context)
        for a, b in pairs:
            if a not in arms and b not in arms:
                continue
            a_name, b_name = names.get(a, a), names.get(b, b)
            missing = [arm for arm in (a, b) if arm not in arms]
            if missing:
                reason = _why_missing(results, experiment, missing[0], [value for _, value in context])
                answers.append(statistics.not_compared(question, a_name, b_name, reason))
                continue
            answers.append(_paired(results, question, a_name, arms[a], b_name, arms[b]))
    for question, a, b, reason in _arms_that_never_ran(results, experiment, pairs, {a.question for a in answers}):
        answers.append(statistics.not_compared(question, names.get(a, a), names.get(b, b), reason))
    return answers


def _arms_that_never_ran(
    results: Results, experiment: int, pairs: list[tuple[str, str]], asked: set[str]
) -> list[tuple[str, str, str, str]]:
    """(question, A, B, why) for contexts where neither arm recorded a result (both skipped,
    say: a random-weights control is skipped with its ImageNet case), named from the test ids."""
    unasked = {}
    for outcome in results.outcomes:
        if outcome.outcome == "passed" or not _answers_question(outcome, experiment):
            continue
        parameters = [value for name, value in outcome.parameters.items() if name != SEED_PARAMETER]
        for a, b in pairs:
            if a not in parameters and b not in parameters:
                continue
            context = [value for value in parameters if value not in (a, b)]
            question = ", ".join([f"Experiment {experiment}", *context])
            if question not in asked and question not in unasked:
                unasked[question] = (question, a, b, _why_missing(results, experiment, a, context))
    return list(unasked.values())


def _strategies(results: Results) -> list[Comparison]:
    pairs = []
    for arms in _arms(results, 5, "strategy").values():
        for baseline, skipped in ((HEAD_ONLY, ()), (FULL, (HEAD_ONLY,))):
            pairs += [(strategy, baseline) for strategy in arms if strategy != baseline and strategy not in skipped]
    return _pairs(results, 5, "strategy", list(dict.fromkeys(pairs)))


def _paired(
    results: Results, question: str, a_name: str, a: dict[int, Record], b_name: str, b: dict[int, Record]
) -> Comparison:
    """Two arms on the seeds both ran, paired image by image and seed by seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return statistics.not_compared(
            question, a_name, b_name, f"they ran different seeds ({_seed_list(a)} and {_seed_list(b)})"
        )
    for seed in seeds:
        if a[seed].validation_set != b[seed].validation_set:
            return statistics.not_compared(
                question, a_name, b_name,
                f"they predicted different validation images ({a[seed].validation_set} and {b[seed].validation_set})",
            )
    a_correct = correctness_of([a[seed] for seed in seeds], results.validation_sets)
    b_correct = correctness_of([b[seed] for seed in seeds], results.validation_sets)
    if a_correct is None or b_correct is None:
        return statistics.not_compared(question, a_name, b_name, "their validation labels were not saved")
    return _guarded(b_name, statistics.compare_correctness, question, a_name, a_correct, b_name, b_correct)


def _speedups(results: Results) -> list[Comparison]:
    by_backbone: dict[str, dict[str, BenchmarkResult]] = defaultdict(dict)
    for benchmark in results.benchmarks:
        by_backbone[benchmark.backbone][benchmark.mode] = benchmark
    answers = []
    for backbone, modes in sorted(by_backbone.items()):
        question = f"Experiment 4, {backbone}"
        for mode in FASTER_MODES:
            missing = [name for name in (mode, UNFROZEN) if name not in modes]
            if missing:
                reason = _why_missing(results, 4, missing[0], [backbone])
                answers.append(statistics.not_compared(question, mode, UNFROZEN, reason))
                continue
            fast, slow = modes[mode].round_seconds, modes[UNFROZEN].round_seconds
            if not fast or not slow:
                answers.append(statistics.not_compared(
                    question, mode, UNFROZEN, "the benchmark kept no per-round times (rerun the session)"
                ))
                continue
            answers.append(_guarded(UNFROZEN, statistics.compare_times, question, mode, fast, UNFROZEN, slow))
    return answers


def _guarded(b_name: str, compare, question: str, a_name: str, *arguments) -> Comparison:
    """`compare(question, a_name, *arguments)`, a `lab.report.statistics` comparison of A with
    `b_name`, or "not compared" with the reason the statistics gave for refusing."""
    try:
        return compare(question, a_name, *arguments)
    except LabInputError as error:
        return statistics.not_compared(question, a_name, b_name, str(error))


def _validation_set(results: Results, record: Record) -> ValidationSet | None:
    return next((entry for entry in results.validation_sets if entry.name == record.validation_set), None)


def _why_missing(results: Results, experiment: int, arm: str, context: list[str]) -> str:
    """Why an arm has no result: the outcome of its tests that did not pass, else that none ran."""
    ended = [
        outcome for outcome in results.outcomes
        if outcome.outcome != "passed" and _is_case_of(outcome, experiment, [arm, *context])
    ]
    if not ended:
        return f"{arm} did not run in this session"
    outcome = ended[0]
    why = f": {outcome.reason}" if outcome.reason else ""
    return f"{arm} {outcome.outcome} ({_case_text(outcome)}{why})"


def _unanswered(results: Results, experiment: int) -> Comparison | None:
    """A line for an experiment whose question's tests ran, none of them usable for its question."""
    ended = [outcome for outcome in results.outcomes if _answers_question(outcome, experiment)]
    if not ended:
        return None
    if experiment == 4 and results.run.benchmarks_note:
        reason = results.run.benchmarks_note
    else:
        failed = [outcome for outcome in ended if outcome.outcome != "passed"]
        reason = "; ".join(f"{_case_text(o)} {o.outcome}" + (f": {o.reason}" if o.reason else "")
                           for o in failed[:3]) or "no arm recorded a result"
    return statistics.not_compared(f"Experiment {experiment}", "its arms", "each other", reason)


def _case_text(outcome: Outcome) -> str:
    """A test's case as its parameters' values (`mobilenet_v2, head-only, seed 0`), whatever the test is named."""
    return ", ".join(
        f"seed {value}" if name == SEED_PARAMETER else value for name, value in outcome.parameters.items()
    ) or f"experiment {outcome.experiment}"


def is_epoch_time_case(outcome: Outcome) -> bool:
    """Whether a test is one of experiment 4's epoch-time cases (an arm of its speed question)."""
    return outcome.experiment == 4 and MODE_PARAMETER in outcome.parameters


def _answers_question(outcome: Outcome, experiment: int) -> bool:
    """Whether a test is an arm of `experiment`'s question: a training case (it runs per seed),
    or for experiment 4 an epoch-time case."""
    if experiment == 4:
        return is_epoch_time_case(outcome)
    return outcome.experiment == experiment and SEED_PARAMETER in outcome.parameters


def _is_case_of(outcome: Outcome, experiment: int, values: list[str]) -> bool:
    """Whether a test of `experiment` has each of `values` among its parameters' values."""
    parameters = set(outcome.parameters.values())
    return outcome.experiment == experiment and bool(parameters) and all(value in parameters for value in values)


def _seed_list(arm: dict[int, Record]) -> str:
    return ", ".join(map(str, sorted(arm)))
