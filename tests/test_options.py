"""Every option is declared once (lab/options.py), and what the declaration says reaches pytest's
group, the run's settings and the report's header.

An option added to pytest's group outside `Options`, or one whose non-default value the header
does not list (as `--run-eagerly` once fell through), fails here.
"""

import argparse
import dataclasses

import pytest

from lab import config
from lab.networks import adam, models, training_step
from lab.options import Options, addoption_arguments, declarations, flag_of
from lab.report import render
from lab.runtime import environment
from pytest_lab.session import LabSession

# Offline and quick: mock data, no ImageNet weights.
BASE = {"data_source": "mock", "weights": "none"}


@pytest.fixture(autouse=True)
def no_path_variables(monkeypatch):
    """build_config reads LAB_DATA_DIR and its kin for paths not given: the user's own must not reach these tests."""
    for variable in config.PATH_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)


def non_default(field: dataclasses.Field, tmp_path) -> object:
    """A value of option `field` other than its default that `build_config` accepts offline.

    Switches and choices need nothing here; an option of free text or numbers needs a line in
    `typed`, and a new one without it fails with a message that says so.
    """
    if field.default is False:
        return True
    if field.metadata["choices"]:
        return BASE.get(field.name) or next(value for value in field.metadata["choices"] if value != field.default)
    typed = {
        "data_dir": str(tmp_path),
        "weights_dir": str(tmp_path),
        "report_dir": str(tmp_path / "reports"),
        "tensorboard_dir": str(tmp_path / "logs"),
        "seed": 5,
        "seeds": "2",
        "subset": 8,
        "backbone_names": "mobilenet",
        "dataset": "cifar10",
        "epochs": 2,
        "image_size": 64,
        "lr_factor": 1.5,
        "early_stopping": 1,
        "cache_budget": "1G",
        "image_cache_limit": "20G",
        "worker_timeout": 60.0,
        "mlflow": "sqlite:///mlflow.db",
        "resume": str(tmp_path / "reports" / "run"),
        "baseline": str(tmp_path / "reports" / "baseline"),
    }
    assert field.name in typed, f"give {field.metadata['flag']} a non-default value in this test's `typed`"
    return typed[field.name]


def test_pytest_group_holds_exactly_the_declared_options(pytestconfig):
    group = pytestconfig._parser.getgroup("lab")
    declared = {field.name: field.metadata["flag"] for field in declarations()}
    assert {option.dest: option.names()[0] for option in group.options} == declared


def test_the_run_config_holds_the_options_pytest_parsed(pytestconfig, run_config):
    assert run_config.options == Options.read(pytestconfig.getoption)


@pytest.mark.parametrize("field", declarations(), ids=lambda field: field.metadata["flag"])
def test_every_option_not_at_its_default_is_in_the_header(pytestconfig, tmp_path, monkeypatch, field):
    if field.name == "distribute":
        monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}')
    value = non_default(field, tmp_path)
    # --fail-if-worse is refused without a --baseline to compare with.
    needed = {"baseline": str(tmp_path)} if field.name == "fail_if_worse" else {}
    run = config.build_config(**{**BASE, **needed, field.name: value})

    listed = LabSession(pytestconfig, run, None).options()

    assert field.metadata["flag"] in listed, f"{field.metadata['flag']} {value} is missing from {listed}"


def test_defaults_list_nothing():
    options = Options()
    assert options.given(config.build_config(options)) == {}


def test_the_header_shows_the_run_s_resolved_values(pytestconfig, tmp_path):
    run = config.build_config(**BASE, seed=4, seeds="3", cache_budget="512M", backbone_names=" mobilenet, mobilenet_v2",
                              lr_factor=3.0, run_eagerly=True, xla="off", adam="keras", data_dir=str(tmp_path))
    listed = LabSession(pytestconfig, run, None).options()
    assert listed["--seeds"] == "4,5,6"
    assert listed["--cache-budget"] == "512M"
    assert listed["--backbones"] == "mobilenet,mobilenet_v2"
    assert listed["--lr-factor"] == "3"
    assert listed["--data-dir"] == str(tmp_path)
    assert (listed["--run-eagerly"], listed["--xla"], listed["--adam"]) == ("", "off", "keras")
    # The same bytes as the default, written otherwise: not listed.
    assert "--cache-budget" not in LabSession(pytestconfig, config.build_config(**BASE, cache_budget="2048M"),
                                              None).options()


def test_command_line_reaches_the_options_through_the_declarations():
    parser = argparse.ArgumentParser()
    for flag, arguments in addoption_arguments():
        parser.add_argument(flag, **arguments)
    parsed = parser.parse_args(["--run-eagerly", "--xla=on", "--adam", "keras", "--data-dir=/data", "--seed", "3"])
    options = Options(**vars(parsed))
    assert (options.run_eagerly, options.xla, options.adam, options.data_dir, options.seed) == (
        True, "on", "keras", "/data", 3
    )
    assert options.lr_factor == Options().lr_factor and options.no_report is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--xla", "sometimes"])


@pytest.mark.parametrize("name, value", [("xla", "sometimes"), ("adam", "sgd")])
def test_build_config_refuses_a_choice_pytest_would_have_refused(name, value):
    with pytest.raises(config.LabInputError) as raised:
        config.build_config(**BASE, **{name: value})
    assert f"unknown {flag_of(name)} {value!r}: use one of" in str(raised.value)


def test_run_eagerly_is_warned_about_as_deterministic_is():
    device = {"gpu_count": 0}
    warnings = environment.run_warnings(mixed_precision=False, deterministic=False, device=device, run_eagerly=True)
    assert warnings == [
        "--run-eagerly: training steps ran as plain Python, without a traced graph, so timings are not comparable"
    ]
    assert "timings are not comparable" in warnings[0]


def test_the_header_says_which_adam_ran_and_whether_xla_compiled(pytestconfig):
    run = config.build_config(**BASE, run_eagerly=True, adam="keras")
    header = LabSession(pytestconfig, run, None).collect_results(0).run
    assert "**Warning**: --run-eagerly" in "\n".join(render.banners(header))
    assert "--run-eagerly" in header.options_description
    rows = {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in
                                                               render.header_table(header).splitlines())}
    assert rows["training step"] == "Adam of Keras (keras.optimizers.Adam); XLA off (--run-eagerly traces no graph)"
    assert environment.training_step("fused", "auto", {"gpu_count": 0}).startswith("Adam fused (lab/networks/adam.py")
    assert environment.training_step("fused", "auto", {"gpu_count": 1}, "mirrored").startswith(
        "Adam fused, which takes Keras's own update under --distribute mirrored; XLA auto (Keras's default): on"
    )
    on_a_cpu = environment.training_step("keras", "auto", {"gpu_count": 0})
    assert on_a_cpu.endswith("XLA auto (Keras's default): off, no GPU")


def test_adam_and_xla_choices_reach_compile():
    keras = pytest.importorskip("keras")
    model = models.lab_cnn(3, image_size=8, filters=(2, 2, 2))
    run_step = training_step.current()
    try:
        training_step.use(training_step.TrainingStep(adam="keras", xla="off"))
        models.compile_for_classification(model)
        assert type(model.optimizer) is keras.optimizers.Adam and model.jit_compile is False
        training_step.use(training_step.TrainingStep(adam="fused", xla="auto"))
        models.compile_for_classification(model)
        # Keras's "auto" on this machine: XLA exactly where there is an accelerator.
        import tensorflow as tf

        accelerator = any(device.device_type != "CPU" for device in tf.config.list_physical_devices())
        assert isinstance(model.optimizer, adam.FusedAdam) and model.jit_compile is accelerator
    finally:
        training_step.use(run_step)


@pytest.mark.parametrize(
    ("text", "size"), [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("4096", 4096)]
)
def test_sizes_read_as_binary_units(text, size):
    assert config.parse_size(text, "--cache-budget") == size


@pytest.mark.parametrize("text", ["0", "-1G", "two gigabytes", "", "nan", "inf", "G"])
@pytest.mark.parametrize("flag", ["--cache-budget", "--image-cache-limit"])
def test_a_bad_size_names_its_option(text, flag):
    with pytest.raises(config.LabInputError, match=flag):
        config.build_config(**BASE, **{flag.removeprefix("--").replace("-", "_"): text})
