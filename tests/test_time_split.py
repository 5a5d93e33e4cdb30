"""Where a session's time goes: a fit's tracing against training, what a measured test
collects, and the per-experiment sums that add up to the wall time. Plain numbers, no training."""

import json

import pytest

from lab.measurements import TimeSplit
from lab.report import render, writing
from lab.report.results import Results, RunHeader
from lab.runtime import timesplit
from lab.runtime.timesplit import SecondsOfTest


def test_tracing_is_the_first_epoch_above_the_median_later_epoch():
    assert timesplit.fit_seconds([5.0, 1.0, 1.4, 1.2]) == pytest.approx((3.8, 4.8))
    # A first epoch no slower than the later ones traced nothing measurable.
    assert timesplit.fit_seconds([0.9, 1.0, 1.1]) == pytest.approx((0.0, 3.0))
    # One epoch cannot tell tracing from training.
    assert timesplit.fit_seconds([2.5]) == (0.0, 2.5)


def test_a_measured_test_collects_its_fits_and_evaluations():
    with timesplit.measuring(2) as measured:
        timesplit.add_fit([3.0, 1.0])
        timesplit.add_fit([2.0, 0.5, 0.5])
        with timesplit.evaluating():
            pass
    timesplit.add_fit([100.0, 1.0])
    assert measured.experiment == 2
    assert measured.tracing_seconds == pytest.approx(2.0 + 1.5)
    assert measured.training_seconds == pytest.approx(2.0 + 1.5)
    assert 0.0 <= measured.evaluation_seconds < 1.0
    assert measured.data_seconds == measured.other_seconds == 0.0


def _measured(experiment: int, tracing: float, training: float, evaluation: float) -> TimeSplit:
    return TimeSplit(experiment, tracing_seconds=tracing, training_seconds=training, evaluation_seconds=evaluation)


TESTS = [
    SecondsOfTest(_measured(1, 2.0, 5.0, 0.5), duration_seconds=10.0, data_seconds=1.5),
    SecondsOfTest(_measured(1, 1.0, 2.0, 0.5), duration_seconds=4.0),
    SecondsOfTest(_measured(3, 0.0, 3.0, 1.0), duration_seconds=6.0, data_seconds=2.0),
    SecondsOfTest(None, duration_seconds=3.0),
]


def test_the_split_sums_each_experiment_and_adds_up_to_the_wall_time():
    splits = timesplit.session_split(TESTS, wall_seconds=40.0)

    assert [split.experiment for split in splits] == [1, 3, None]
    first, third, rest = splits
    assert first == TimeSplit(1, data_seconds=1.5, tracing_seconds=3.0, training_seconds=7.0,
                              evaluation_seconds=1.0, other_seconds=3.0)
    assert first.total_seconds == pytest.approx(1.5 + 10.0 + 4.0)
    assert third.other_seconds == pytest.approx(2.0)
    # The unit test's 3 s and the session's own work are the rest of the wall time.
    assert rest.other_seconds == pytest.approx(40.0 - 15.5 - 8.0)
    assert sum(split.total_seconds for split in splits) == pytest.approx(40.0)
    assert timesplit.total(splits).total_seconds == pytest.approx(40.0)


def test_parallel_workers_give_no_rest_of_the_session():
    splits = timesplit.session_split(TESTS, wall_seconds=10.0, parallel=True)
    assert [split.experiment for split in splits] == [1, 3]
    assert "summed over xdist workers" in writing.time_split_line(splits, None)


def test_the_split_reaches_the_report_the_summary_and_results_json():
    header = RunHeader(profile="smoke", seed=0, data_source="sample", data_source_description="sample",
                       weights_description="--weights none", wall_seconds=40.0)
    results = Results(run=header, time_split=timesplit.session_split(TESTS, wall_seconds=40.0))

    markdown = render.render(results, figures_link="figures").markdown
    section = markdown.split("## Where the time went", 1)[1]
    assert "| Experiment 1 " in section and "| rest of the session " in section
    assert "| 1.5 " in section and "| 40.0 " in section

    line = writing.time_split_line(results.time_split, report_seconds=0.25)
    assert line.startswith("time: data loading 3.5 s, tracing 3.0 s, training 10.0 s, evaluation 2.0 s")
    assert "(of 40 s;" in line and line.endswith("writing the report 0.2 s")

    reread = Results.from_json(json.loads(json.dumps(results.to_json())))
    assert reread.time_split == results.time_split
