"""Which experiment a test belongs to and which case of it it is, read from its markers and parameters.

An experiment module declares itself with a marker:

    pytestmark = pytest.mark.experiment(4, backbones="freeze")

`4` is its number (titles in `lab.report.results.EXPERIMENT_TITLES`); `backbones` names the
profile's backbone list (`pretrained`, `freeze`, `unfreeze`) that parametrizes `backbone_name`.
A test that is an arm of its experiment's question without a parameter saying which (experiment
4's epoch-time cases) names it with `@pytest.mark.arm(mode="frozen")`. Every test's outcome
carries its `ExperimentCase`, and the Findings are built from those, never from node ids.
"""

from __future__ import annotations

import dataclasses

import pytest

from lab.report.results import EXPERIMENT_TITLES

# The user property under which a test's reports carry its `ExperimentCase`.
CASE_PROPERTY = "lab_case"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What an experiment module's `experiment` marker says about it."""

    number: int
    backbones: str | None


@dataclasses.dataclass(frozen=True)
class ExperimentCase:
    """A test of an experiment: its number, and its parameters and `arm` marker's, as text."""

    experiment: int
    parameters: dict[str, str]


def experiment_of(node: pytest.Item) -> Experiment:
    """Reads the `experiment` marker of a test; an error naming the module if it is malformed."""
    marker = node.get_closest_marker("experiment")
    number = marker.args[0] if marker and marker.args else None
    if number not in EXPERIMENT_TITLES:
        raise pytest.UsageError(
            f"{node.nodeid}: mark its module `pytestmark = pytest.mark.experiment(N)`, N one of "
            f"{', '.join(map(str, EXPERIMENT_TITLES))}"
        )
    return Experiment(number, marker.kwargs.get("backbones"))


def case_of(item: pytest.Item) -> ExperimentCase | None:
    """The experiment case `item` is; None for a test of no experiment."""
    if item.get_closest_marker("experiment") is None:
        return None
    callspec = getattr(item, "callspec", None)
    parameters = {name: _text(value) for name, value in (callspec.params if callspec else {}).items()}
    arm = item.get_closest_marker("arm")
    if arm is not None:
        parameters.update({name: _text(value) for name, value in arm.kwargs.items()})
    return ExperimentCase(experiment_of(item).number, parameters)


def _text(value) -> str:
    """A parameter as the report's rows write it: experiment 1's filter widths as `16-32-64`."""
    return "-".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


# The prefix of the groups `group_for_reuse` puts tests in; xdist's `loadgroup` appends the group
# to a node id (`test_x[seed0]@lab-mobilenet_v2`), which `plain_nodeid` takes off again.
GROUP_PREFIX = "lab-"


def group_for_reuse(item: pytest.Item) -> None:
    """Puts a test in the xdist group of the tests it shares a product with, so that under
    `--dist loadgroup` they run on one worker: experiment 1 and 2 of a seed (the saved model), and
    every case of experiments 3-5 of a backbone (compiled models, stage caches, the rate search)."""
    marker = item.get_closest_marker("experiment")
    if marker is None or not marker.args:
        return
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    if marker.args[0] in (1, 2) and "seed" in params:
        group = f"{GROUP_PREFIX}cnn-seed{params['seed']}"
    elif "backbone_name" in params:
        group = f"{GROUP_PREFIX}{params['backbone_name']}"
    else:
        return
    item.add_marker(pytest.mark.xdist_group(group))


def suffix_groups(items: list[pytest.Item]) -> None:
    """Appends each grouped test's group to its node id (`test_x[seed0]@lab-mobilenet_v2`), which is
    how xdist's `loadgroup` tells its scheduler the groups.

    Written for pytest 9.2 and pytest-xdist 3.8: xdist appends the group by writing
    `item._nodeid`, which pytest 9.2 no longer reads (a node keeps its id in `item._id`), so
    without this `loadgroup` silently schedules as `load` does.
    """
    from _pytest.nodeid import coerce_node_id

    for item in items:
        marker = item.get_closest_marker("xdist_group")
        if marker is None or "@" in item.nodeid.rpartition("]")[2]:
            continue
        item._id = coerce_node_id(f"{item.nodeid}@{marker.args[0]}")


def plain_nodeid(nodeid: str) -> str:
    """A node id without the `@group` that xdist's `loadgroup` appended to it."""
    test, separator, group = nodeid.rpartition("@")
    return test if separator and group.startswith(GROUP_PREFIX) and "[" not in group else nodeid


def tag(items: list[pytest.Item]) -> None:
    """Puts each experiment test's case in its user properties, so that its reports carry it to
    the session (from xdist workers too)."""
    for item in items:
        case = case_of(item)
        if case is not None:
            # Plain types: under xdist, user properties travel to the controller in test reports.
            item.user_properties.append((CASE_PROPERTY, dataclasses.asdict(case)))


def tagged_case(user_properties: list[tuple[str, object]]) -> ExperimentCase | None:
    """The case `tag` put in a test's (or its report's) user properties; None for a test of no experiment."""
    return next((ExperimentCase(**value) for kind, value in user_properties if kind == CASE_PROPERTY), None)
