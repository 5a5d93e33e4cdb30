"""Every input a user can get wrong: each one raises LabInputError (or makes pytest stop with
a usage error) whose message names the way out, before anything trains, leaving nothing
half-written.

The inputs tried here: an unknown profile, backbone or weights kind; `--subset` of zero, below
zero or larger than the data; `--seed` outside 0..2**32-1; `--seeds` of zero, negative,
non-numeric or repeated values, of more than 100 seeds (2**32 of them included), or a list
given with `--seed`; `--lr-factor` below 1, above 100, infinite or NaN; `--cache-budget`
unparsable or not positive (T, terabytes, is a unit); `--backbones ""` or `,` (an error) and
repeated backbones (run once, with a warning); a data folder without a dataset folder, with a
missing, unexpected or empty class folder, an image that does not decode (the message says
what is wrong, without TensorFlow's wrapping), a file name that is not UTF-8, or a folder or
image that cannot be read (the message says to fix its permissions); hidden folders and files
(`.ipynb_checkpoints`, `._x.jpg`), which are neither classes nor images; a corrupt CIFAR-10
image, found before experiment 1 trains; a weights file of another architecture; a `.keras`
file that is truncated, has a malformed config.json, or holds code that safe mode refuses;
tensorflow-datasets offline without a prepared copy (with `--data-dir`: said to be ignored
with that source); ImageNet weights offline without a file; a report or TensorBoard folder that
cannot be written; the `LAB_DATA_DIR`, `LAB_WEIGHTS_DIR` and `LAB_REPORT_DIR` defaults, whose errors
name the variable, not the option the user never passed.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import zipfile

import pytest

from lab import config, profiles
from lab.errors import LabInputError
from lab.inputs import data, datasets, image_cache
from lab.networks import backbones, models
from lab.runtime import storage

GOOD_OPTIONS = dict(
    profile="smoke",
    data_source=None,
    data_dir=None,
    seed=None,
    subset=None,
    backbone_names=None,
    weights="imagenet",
    weights_dir=None,
)


def _options(**changes):
    return {**GOOD_OPTIONS, **changes}


@pytest.fixture(autouse=True)
def no_path_variables(monkeypatch):
    """build_config reads LAB_DATA_DIR and its kin for paths not given: the user's own must not reach these tests."""
    for variable in config.PATH_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)


def test_good_options_pass():
    # The rejections below mean something only if the same call without the bad value passes.
    run = config.build_config(**_options(backbone_names="mobilenet, resnet50", subset=3, seed=config.MAX_SEED))
    assert run.backbones == ("mobilenet", "resnet50")
    assert run.options.subset == 3
    assert run.seed == 2**32 - 1


def test_seeds_are_a_count_from_seed_or_a_list():
    assert config.build_config(**_options()).seeds == (0,)
    counted = config.build_config(**_options(seed=5, seeds="3"))
    assert (counted.seeds, counted.seed) == ((5, 6, 7), 5)
    listed = config.build_config(**_options(seeds=" 2, 0"))
    assert (listed.seeds, listed.seed) == ((2, 0), 2)
    capped = config.build_config(**_options(seeds=str(config.MAX_SEEDS)))
    assert capped.seeds == tuple(range(config.MAX_SEEDS))


def test_bounds_of_lr_factor_and_cache_budget_are_accepted():
    run = config.build_config(**_options(lr_factor=config.MAX_LR_FACTOR, cache_budget="10T"))
    assert (run.options.lr_factor, run.cache_budget) == (100, 10 * 2**40)
    assert config.build_config(**_options(lr_factor=1.0)).options.lr_factor == 1


def test_repeated_backbones_run_once_with_a_warning():
    with pytest.warns(UserWarning, match="--backbones names mobilenet more than once"):
        run = config.build_config(**_options(backbone_names="mobilenet,resnet50,mobilenet"))
    assert run.backbones == ("mobilenet", "resnet50")


def test_unknown_backbone_in_the_registry():
    with pytest.raises(LabInputError) as raised:
        backbones.get_backbone("resnet51")
    message = str(raised.value)
    assert "resnet51" in message and "--backbones" in message
    assert all(name in message for name in backbones.REGISTRY)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"backbone_names": "mobilenet,nosuchnet"}, ["nosuchnet", "--backbones", "mobilenet_v2"]),
        ({"profile": "huge"}, ["huge", "--profile", "smoke", "full"]),
        ({"subset": 0}, ["--subset", "0"]),
        ({"subset": -5}, ["--subset", "-5"]),
        ({"data_source": "web"}, ["--data-source", "mock"]),
        ({"data_source": "folder"}, ["--data-dir"]),
        ({"data_dir": "/nonexistent/lab-data"}, ["--data-dir", "/nonexistent/lab-data"]),
        ({"weights": "pretrained"}, ["--weights", "none"]),
        ({"weights_dir": "/nonexistent/lab-weights"},
         ["--weights-dir /nonexistent/lab-weights", "weights files", "or leave --weights-dir out"]),
        ({"distribute": "tpu"}, ["--distribute", "mirrored"]),
        ({"seed": -1}, ["--seed", "0..4294967295", "-1"]),
        ({"seed": 2**40}, ["--seed", "0..4294967295", str(2**40)]),
        ({"backbone_names": ""}, ["--backbones", "names no backbone", "mobilenet_v2"]),
        ({"backbone_names": " , "}, ["--backbones", "names no backbone", "mobilenet_v2"]),
        ({"seeds": "0"}, ["--seeds 0", "runs no seed", "--seeds 0,1,2"]),
        ({"seeds": "-1"}, ["--seeds '-1'", "not a count or a list"]),
        ({"seeds": "0,-2"}, ["--seeds '0,-2'", "not a count or a list"]),
        ({"seeds": "two"}, ["--seeds 'two'", "not a count or a list"]),
        ({"seeds": "0,1,1"}, ["--seeds 0,1,1", "lists 1 more than once"]),
        ({"seeds": f"1,{2**32}"}, ["--seeds", "4294967295"]),
        ({"seeds": "2", "seed": 2**32 - 1}, ["--seeds 2", "4294967295"]),
        # The count check alone let 0 + 2**32 - 1 == MAX_SEED through, to a range of 2**32 seeds.
        ({"seeds": str(2**32)}, ["--seeds 4294967296", "4,294,967,296 seeds, more than 100", "do not narrow"]),
        ({"seeds": "101"}, ["--seeds 101", "more than 100", "at most 100"]),
        ({"seeds": ",".join(map(str, range(101)))}, ["runs 101 seeds, more than 100"]),
        ({"seeds": "0,1", "seed": 5}, ["--seed 5 and the list --seeds 0,1", "drop --seed"]),
        ({"lr_factor": float("inf")}, ["--lr-factor", "from 1 to 100, got inf", "head-only"]),
        ({"lr_factor": 1e9}, ["--lr-factor", "from 1 to 100, got 1000000000.0"]),
        ({"lr_factor": float("nan")}, ["--lr-factor", "got nan"]),
        ({"lr_factor": 0.5}, ["--lr-factor", "got 0.5", "faster than the head"]),
        ({"cache_budget": "10X"}, ["--cache-budget '10X'", "K, M, G, T"]),
        ({"cache_budget": "0"}, ["--cache-budget '0'", "512M or 2G"]),
        ({"cache_budget": "-1G"}, ["--cache-budget '-1G'", "512M or 2G"]),
        ({"cache_budget": "lots"}, ["--cache-budget 'lots'", "512M or 2G"]),
        ({"cached": "on"}, ["--cached", "auto", "off"]),
        ({"tensorboard_dir": "experiments"}, ["--tensorboard experiments is a folder of tests", "--tensorboard=logs"]),
        ({"worker_timeout": 1e12}, ["--worker-timeout", "from 0 to 86400 (a day), got 1e+12"]),
        ({"fail_if_worse": True}, ["--fail-if-worse needs --baseline RUN"]),
        ({"seeds": ",".join(map(str, range(20000)))}, ["(20,000 entries) runs 20,000 seeds, more than 100"]),
    ],
    ids=[
        "unknown-backbone", "unknown-profile", "subset-zero", "subset-negative", "unknown-source",
        "folder-without-dir", "missing-data-dir", "unknown-weights", "missing-weights-dir", "unknown-strategy",
        "seed-negative", "seed-too-large", "backbones-empty", "backbones-only-commas",
        "seeds-zero", "seeds-negative", "seeds-negative-in-list", "seeds-not-numeric", "seeds-repeated",
        "seeds-too-large", "seeds-count-past-the-largest", "seeds-count-2pow32", "seeds-count-past-the-cap",
        "seeds-list-past-the-cap", "seeds-list-with-seed", "lr-factor-infinite", "lr-factor-huge", "lr-factor-nan",
        "lr-factor-below-1", "cache-budget-unknown-unit", "cache-budget-zero", "cache-budget-negative",
        "cache-budget-unparsable", "cached-unknown", "tensorboard-a-test-folder", "worker-timeout-endless",
        "fail-if-worse-alone", "seeds-list-of-20000",
    ],
)
def test_build_config_rejects(changes, fragments):
    with pytest.raises(LabInputError) as raised:
        config.build_config(**_options(**changes))
    for fragment in fragments:
        assert fragment in str(raised.value)
    # A 20,000-seed list is not echoed back whole (it was 109 KB).
    assert len(str(raised.value)) < 1000


def test_unknown_profile():
    with pytest.raises(LabInputError) as raised:
        profiles.get_profile("huge")
    message = str(raised.value)
    assert "--profile" in message
    assert all(name in message for name in profiles.PROFILES)


@pytest.mark.parametrize("count", [0, -1])
def test_load_rejects_a_subset_that_is_not_positive(count):
    with pytest.raises(LabInputError, match="--subset"):
        data.load("tf_flowers", "mock", 8, count, 2)


def test_subset_larger_than_the_data(make_image_folder):
    folder = make_image_folder()
    total = len(folder.colours)
    available = total - round(total * datasets.VALIDATION_SHARE)

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, available + 1, None, data_dir=folder.data_dir, strict_train_count=True)
    assert f"--subset {available}" in str(raised.value)
    # From a profile rather than the user, the same count is only a cap.
    capped = data.load("tf_flowers", "folder", 8, available + 1, None, data_dir=folder.data_dir)
    assert capped.train_count == available


def test_data_folder_missing_the_dataset_folder(make_image_folder):
    folder = make_image_folder("cifar10", {"cat": 1})

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    message = str(raised.value)
    assert os.path.join(folder.data_dir, "flower_photos") in message
    # Loading cannot tell whether the folder came from --data-dir or from LAB_DATA_DIR: both are named.
    assert "--data-dir (or LAB_DATA_DIR)" in message and "--data-source" in message


def test_folder_source_without_a_data_dir():
    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=None)
    assert "--data-dir" in str(raised.value) and "--data-source mock" in str(raised.value)


@pytest.mark.parametrize("leftover", [None, "README.txt"], ids=["empty", "no-image-suffix"])
def test_class_folder_without_images(leftover, make_image_folder):
    folder = make_image_folder()
    roses = folder.root / "roses"
    for path in roses.iterdir():
        path.unlink()
    if leftover:
        (roses / leftover).write_text("not an image")

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    message = str(raised.value)
    assert str(roses) in message and "--data-dir (or LAB_DATA_DIR)" in message


def test_missing_class_folder(make_image_folder):
    folder = make_image_folder()
    shutil.rmtree(folder.root / "roses")

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    message = str(raised.value)
    assert str(folder.root) in message
    assert "missing ['roses']" in message


def test_unexpected_class_folder(make_image_folder):
    folder = make_image_folder()
    (folder.root / "cats").mkdir()

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    assert "unexpected ['cats']" in str(raised.value)


def test_hidden_folders_and_files_are_neither_classes_nor_images(make_image_folder):
    folder = make_image_folder()
    for hidden in (".ipynb_checkpoints", ".hidden"):
        (folder.root / hidden).mkdir()
        shutil.copy(folder.root / "daisy" / "daisy_0.jpg", folder.root / hidden)
    (folder.root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    # macOS's AppleDouble companion of a copied photo: an image suffix, not an image.
    (folder.root / "daisy" / "._daisy_0.jpg").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")

    loaded = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)

    assert loaded.class_names == data.CLASS_NAMES["tf_flowers"]
    assert loaded.total_examples == len(folder.colours)


def _truncated_jpeg(path):
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def _text_file(path):
    path.write_text("this is a text file with an image suffix\n")


@pytest.mark.parametrize(
    "spoil, reason",
    [(_truncated_jpeg, "jpeg::Uncompress failed. Invalid JPEG data"), (_text_file, "Unknown image file format")],
    ids=["truncated-jpeg", "text-named-jpg"],
)
def test_undecodable_image_names_the_file_and_what_is_wrong(spoil, reason, make_image_folder):
    folder = make_image_folder()
    bad = folder.root / "daisy" / "daisy_1.jpg"
    spoil(bad)

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    message = str(raised.value)
    # TensorFlow's wrapping, `{{function_node __wrapped__DecodeImage_device_/job:...}}` and
    # `[Op:DecodeImage]`, says where the op ran, not what is wrong with the file.
    assert f"cannot decode image {bad} ({reason}" in message
    assert "function_node" not in message and "[Op:" not in message
    assert "delete or replace" in message


def test_weights_file_of_another_architecture(sample_weights_dir):
    # MobileNet (v1) weights given to MobileNetV2: Keras says only "Layer count mismatch".
    wrong = str(sample_weights_dir / backbones.get_backbone("mobilenet").weights_file)

    with pytest.raises(LabInputError) as raised:
        backbones.get_backbone("mobilenet_v2").build(32, wrong)
    message = str(raised.value)
    assert wrong in message
    assert "--weights-dir" in message or "--weights none" in message


def _truncated_weights_inside(payload: bytes) -> bytes:
    # A whole archive whose weights member was cut short: the zip itself still opens.
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, member in members.items():
            archive.writestr(name, member[: len(member) // 2] if name.endswith(".h5") else member)
    return buffer.getvalue()


DAMAGE = {
    "truncated": lambda payload: payload[: len(payload) // 2],
    "empty": lambda payload: b"",
    "not-a-zip": lambda payload: b"x" * 100,
    "truncated-weights-inside": _truncated_weights_inside,
}


@pytest.mark.parametrize("spoil", DAMAGE)
def test_damaged_keras_file_names_the_file(spoil, tmp_path):
    path = tmp_path / "lab_cnn.keras"
    storage.atomic_save_model(models.lab_cnn(5, 16, (2, 2, 2)), str(path))
    path.write_bytes(DAMAGE[spoil](path.read_bytes()))

    with pytest.raises(LabInputError) as raised:
        storage.load_model(str(path))
    assert str(path) in str(raised.value)
    assert "delete it" in str(raised.value)


def test_saved_keras_file_loads(tmp_path):
    # The damaged-file errors above must come from the damage, not from the saving.
    path = tmp_path / "lab_cnn.keras"
    model = models.lab_cnn(5, 16, (2, 2, 2))
    storage.atomic_save_model(model, str(path))
    assert storage.weights_digest(storage.load_model(str(path))) == storage.weights_digest(model)


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_tfds_offline_without_prepared_data_fails_fast(dataset, offline):
    with pytest.raises(LabInputError) as raised:
        data.load(dataset, "tfds", 8, 4, 2)
    message = str(raised.value)
    assert "--data-dir" in message and "--data-source mock" in message
    assert str(offline["tfds_dir"]) in message


@pytest.mark.parametrize("with_dir", [True, False], ids=["empty-weights-dir", "no-weights-dir"])
def test_imagenet_weights_offline_without_a_file(with_dir, offline, tmp_path):
    # The embedded sample holds the MobileNets' weights, not ResNet50's.
    backbone = backbones.get_backbone("resnet50")
    weights_dir = str(tmp_path) if with_dir else None

    with pytest.raises(LabInputError) as raised:
        backbones.resolve_weights(backbone, "imagenet", weights_dir)
    message = str(raised.value)
    assert "--weights-dir" in message and "--weights none" in message
    assert backbone.weights_file in message


def test_unknown_weights_kind():
    with pytest.raises(LabInputError) as raised:
        backbones.resolve_weights(backbones.get_backbone("mobilenet"), "pretrained", None)
    assert "--weights imagenet" in str(raised.value) and "--weights none" in str(raised.value)


@pytest.mark.parametrize("named", ["--report-dir", "LAB_REPORT_DIR"])
def test_unwritable_report_dir_stops_pytest_naming_what_set_it(named, run_python, monkeypatch):
    option = ["--report-dir", "/proc/forbidden"] if named == "--report-dir" else []
    if not option:
        monkeypatch.setenv(named, "/proc/forbidden")
    completed, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", *option, "--collect-only", "-q", "-p", "no:cacheprovider",
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    assert "/proc/forbidden" in output and "--report-dir" in output and "--no-report" in output
    assert option or "set LAB_REPORT_DIR to a folder you can write, or unset it" in output


def test_a_bad_option_is_a_usage_error_before_anything_is_collected(run_python):
    # Was an INTERNALERROR (MemoryError): a range of 2**32 seeds. Every other option's message is
    # checked in-process above (test_build_config_rejects); this is pytest's side of it.
    completed, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", "--seeds=4294967296",
        "--collect-only", "-q", "-p", "no:cacheprovider", "--no-report",
    )
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR, completed.stdout + completed.stderr
    assert "--seeds 4294967296" in completed.stderr and "more than 100" in completed.stderr, completed.stderr
    assert "collected" not in completed.stdout


@pytest.fixture
def unprivileged():
    """A context in which file permissions bind: root's euid is dropped to `nobody` within it.

    Root reads any file whatever its mode, and CI runs as root. The switch is real (the kernel,
    not a stub, refuses the reads), so the files used inside must be reachable by `nobody`:
    `public_copy` gives a world-readable copy of a folder, `public_folder` a new world-writable
    folder (for an image cache `nobody` can write).
    """
    made = []

    @contextlib.contextmanager
    def as_nobody():
        if os.geteuid() != 0:
            yield
            return
        os.seteuid(NOBODY)
        try:
            yield
        finally:
            os.seteuid(0)

    def public_folder(mode: int = 0o777) -> pathlib.Path:
        folder = tempfile.mkdtemp(prefix="lab-permissions-")
        made.append(folder)
        os.chmod(folder, mode)
        return pathlib.Path(folder)

    def public_copy(folder: str) -> pathlib.Path:
        return pathlib.Path(shutil.copytree(folder, public_folder(0o755) / "data"))

    yield as_nobody, public_copy, public_folder
    for parent in made:
        for folder, _, _ in os.walk(parent):
            os.chmod(folder, 0o755)
        shutil.rmtree(parent)


NOBODY = 65534


@pytest.mark.parametrize(
    "target", ["flower_photos", "flower_photos/roses", "flower_photos/daisy/daisy_1.jpg"],
    ids=["dataset-folder", "class-folder", "image"],
)
def test_unreadable_data_names_the_path_and_the_permissions(
    target, unprivileged, make_image_folder, monkeypatch
):
    as_nobody, public_copy, public_folder = unprivileged
    data_dir = public_copy(make_image_folder().data_dir)
    # Once first as root: what the load imports lazily may lie where `nobody` cannot read.
    data.load("tf_flowers", "folder", 8, None, None, data_dir=str(data_dir))
    # Each load as `nobody` gets an image cache of its own: the session's is root's, and a
    # cached entry, keyed on the files' sizes and times, would not see a file's mode change.
    monkeypatch.setenv(image_cache.CACHE_DIR_VARIABLE, str(public_folder()))
    with as_nobody():
        # The same load as `nobody`, before the damage: the folder itself is readable.
        assert data.load("tf_flowers", "folder", 8, None, None, data_dir=str(data_dir)).train_count > 0
    os.chmod(data_dir / target, 0)
    monkeypatch.setenv(image_cache.CACHE_DIR_VARIABLE, str(public_folder()))

    with as_nobody(), pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=str(data_dir))
    message = str(raised.value)
    assert str(data_dir / target) in message
    assert "permission denied" in message and "fix its permissions" in message
    assert "delete or replace" not in message


def test_image_cache_folder_that_is_not_writable_names_the_variable(unprivileged, make_image_folder, monkeypatch):
    as_nobody, public_copy, public_folder = unprivileged
    data_dir = public_copy(make_image_folder().data_dir)
    cache_dir = public_folder(0o755)
    monkeypatch.setenv(image_cache.CACHE_DIR_VARIABLE, str(cache_dir))

    with as_nobody(), pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=str(data_dir))
    message = str(raised.value)
    assert str(cache_dir / "images") in message
    assert "permission denied" in message and image_cache.CACHE_DIR_VARIABLE in message


def test_image_name_that_is_not_utf8(make_image_folder):
    folder = make_image_folder()
    good = folder.root / "daisy" / "daisy_1.jpg"
    bad = os.path.join(os.fsencode(good.parent), b"daisy_\xff.jpg")
    shutil.copy(good, bad)

    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    message = str(raised.value)
    assert repr(os.fsdecode(bad)) in message
    assert "UTF-8" in message and "rename the file" in message


def _rewritten_config(path, config_json: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, member in members.items():
            archive.writestr(name, config_json if name == "config.json" else member)


def test_malformed_config_json_in_a_keras_file(tmp_path):
    path = tmp_path / "lab_cnn.keras"
    storage.atomic_save_model(models.lab_cnn(5, 16, (2, 2, 2)), str(path))
    with zipfile.ZipFile(path) as archive:
        config_json = json.loads(archive.read("config.json"))
    # A layer argument of the wrong type: Keras raises TypeError while rebuilding the layer.
    config_json["config"]["layers"][1]["config"]["no_such_argument"] = 1
    _rewritten_config(path, json.dumps(config_json).encode())

    with pytest.raises(LabInputError) as raised:
        storage.load_model(str(path))
    message = str(raised.value)
    assert str(path) in message and "malformed config.json" in message and "delete it" in message


def test_code_refused_by_safe_mode_is_not_called_truncated(tmp_path):
    import keras

    path = tmp_path / "with_lambda.keras"
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)

    with pytest.raises(LabInputError) as raised:
        storage.load_model(str(path))
    message = str(raised.value)
    assert str(path) in message and "safe mode refused" in message
    assert "truncated" not in message


def test_tfds_offline_with_a_data_dir_says_it_is_ignored(offline, tmp_path):
    with pytest.raises(LabInputError) as raised:
        data.load("tf_flowers", "tfds", 8, 4, 2, data_dir=str(tmp_path))
    message = str(raised.value)
    assert f"--data-dir {tmp_path} is ignored with --data-source tfds" in message
    assert "--data-source folder" in message


def test_path_options_default_to_their_environment_variables(monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", "/from/environment")
    monkeypatch.setenv("LAB_REPORT_DIR", "")
    monkeypatch.delenv("LAB_WEIGHTS_DIR", raising=False)
    assert config.path_option("data_dir", None) == ("/from/environment", "LAB_DATA_DIR")
    assert config.path_option("data_dir", "/given") == ("/given", "--data-dir")
    # An empty variable is an unset one: the fallback stands.
    assert config.path_option("report_dir", None, "reports") == ("reports", "--report-dir")
    assert config.path_option("weights_dir", None) == (None, "--weights-dir")


@pytest.mark.parametrize("option, variable", [("--data-dir", "LAB_DATA_DIR"), ("--weights-dir", "LAB_WEIGHTS_DIR")])
def test_a_bad_path_from_the_environment_names_the_variable(option, variable, monkeypatch):
    monkeypatch.setenv(variable, "/nonexistent/from-environment")

    with pytest.raises(LabInputError) as raised:
        config.build_config(**_options())
    message = str(raised.value)
    assert f"{variable}=/nonexistent/from-environment is not a folder: set {variable} to " in message
    assert message.endswith("or unset it") and option not in message


def test_corrupt_cifar10_image_stops_the_run_before_any_test_trains(make_image_folder, run_python, monkeypatch):
    flowers = make_image_folder("tf_flowers")
    cifar = make_image_folder("cifar10", suffix=".png")
    shutil.move(cifar.root, pathlib.Path(flowers.data_dir) / "cifar10")
    bad = pathlib.Path(flowers.data_dir) / "cifar10" / "cat" / "cat_0.png"
    bad.write_text("not an image")
    # Through the environment, as `pytest` alone runs once LAB_DATA_DIR is set.
    monkeypatch.setenv("LAB_DATA_DIR", flowers.data_dir)

    completed, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", "experiments/test_2_transfer_to_cifar10.py",
        "--no-report", "-p", "no:cacheprovider", "-q",
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert str(bad) in output and "delete or replace" in output
    # Experiment 1 needs only the flowers, which are fine: it must not have run either (the
    # summary says "no tests ran", or only counts warnings: two images a class leave classes
    # without a validation image).
    assert re.search(r"\d+ (passed|failed|error)", output) is None, output


def test_unwritable_tensorboard_folder_stops_pytest_before_any_test(run_python, tmp_path):
    # A folder under a regular file cannot be made, even by root (CI runs as root).
    (tmp_path / "a-file").write_text("")
    logs = tmp_path / "a-file" / "logs"
    completed, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", f"--tensorboard={logs}",
        "--collect-only", "-q", "-p", "no:cacheprovider", "--no-report",
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"cannot write TensorBoard logs to {logs}" in output and "--tensorboard" in output, output
