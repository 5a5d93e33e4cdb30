"""lab/reuse.py: a compiled model trained again from fresh weights, its graph traced once."""

import json
import textwrap

import keras
import numpy as np
import pytest

from lab import models
from lab.reuse import ReusableModel

# Under op determinism: a model built and compiled for seed 1, against one compiled for seed 0,
# trained, then restarted with seed 1's initial weights. The control restarts only the weights.
REUSE_AGAINST_FRESH = """
    import json
    import numpy as np
    from lab import models, reproducibility, storage
    from lab.data import batched_pairs
    from lab.reuse import ReusableModel

    reproducibility.enable_determinism()
    images = np.random.default_rng(7).random((48, 32, 32, 3), dtype=np.float32)
    labels = np.arange(48) % 5

    def build(seed):
        reproducibility.seed_everything(seed)
        model = models.lab_cnn(5, 32, (4, 4, 4))
        model.get_layer("conv1").trainable = False
        return model

    def train(model):
        model.fit(batched_pairs(images, labels, 16, seed=3), epochs=2, verbose=0)
        return storage.weights_digest(model)

    fresh = build(1)
    models.compile_for_classification(fresh, 5e-4)
    fresh_digest = train(fresh)

    model = build(0)
    models.compile_for_classification(model)
    reusable = ReusableModel.of(model)
    train(model)
    traced = model.train_function
    reusable.restart(build(1).get_weights(), learning_rate=5e-4)
    reused_digest = train(model)
    traced_once = model.train_function is traced

    model.set_weights(build(1).get_weights())
    model.optimizer.learning_rate = 5e-4
    weights_only_digest = train(model)
    print(json.dumps({"fresh": fresh_digest, "reused": reused_digest, "weights only": weights_only_digest,
                      "traced once": traced_once}))
"""


def test_reused_model_trains_byte_identically_to_a_fresh_one(run_python):
    completed, _ = run_python("-c", textwrap.dedent(REUSE_AGAINST_FRESH))
    assert completed.returncode == 0, completed.stderr
    digests = json.loads(completed.stdout.strip().splitlines()[-1])

    assert digests["traced once"]
    assert digests["reused"] == digests["fresh"]
    # The control: the optimizer's moments and step count carried over change the training.
    assert digests["weights only"] != digests["fresh"]


def small_model() -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(hidden))


def test_changed_trainable_layers_need_a_compile():
    model = small_model()
    models.compile_for_classification(model)
    reusable = ReusableModel.of(model)
    weights = model.get_weights()
    model.get_layer("hidden").trainable = False

    with pytest.raises(ValueError, match="compile it again"):
        reusable.restart(weights)


def test_only_an_untrained_compiled_model_can_be_made_reusable():
    model = small_model()
    with pytest.raises(ValueError, match="compile"):
        ReusableModel.of(model)

    models.compile_for_classification(model)
    model.fit(np.zeros((4, 4)), np.zeros(4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="already trained"):
        ReusableModel.of(model)
