"""Experiment 5: gradual unfreezing, against head-only and full fine-tuning on one budget.

Train a new head on a frozen pretrained base, then thaw the base from the top down, a block
(or N layers) per stage, recompiling at a lower learning rate each time, so that gradients
from a random head never reach the lower layers. The same epochs spent on the head alone, or
on everything from the start, answer whether it is worth it. ULMFiT's discriminative rates
(each block down from the head learns --lr-factor times slower), gradually or from the start,
are the strategies people use beyond the lab's. Every compile follows --lr-schedule, and
the rate each parameter group actually used is recorded per epoch.

The stage loop is `lab.finetune.fine_tuning.FineTuning` (the `fine_tune` fixture): iterating it thaws
each stage's layers, and `train` compiles and fits the stage, as fast as the run allows.
"""

import pytest

from lab.finetune import freezing
from lab.finetune.fine_tuning import describe_rates
from lab.networks.training import predicted_classes, tensorboard_callbacks
from lab.report.results import Table
from lab.runtime.hparams import FitSettings

pytestmark = pytest.mark.experiment(5, backbones="unfreeze")

RATE_SEARCH = Table("Learning-rate search of the head", keys=("backbone", "weights"))
STAGES = Table("Stage by stage", keys=("backbone", "strategy", "stage"))
ON_ONE_BUDGET = Table("Strategies on one budget", keys=("backbone", "strategy", "weights"))


def test_head_learning_rate_search(seed, backbone_case, head_rate_search, run_config, record):
    if not run_config.options.lr_find:
        pytest.skip("the head's rate is the profile's 1e-3: --lr-find searches it")
    case = backbone_case()

    searched = head_rate_search(case, seed)

    assert searched.state_after == searched.state_before, "the search left the model's weights or optimizer changed"
    search = searched.search
    assert search.rates == sorted(search.rates) and len(search.smoothed) == len(search.rates)
    assert search.found == (search.suggestion is not None) and (search.found or search.reason)
    record(RATE_SEARCH, {
        "backbone": case.name, "weights": case.weights.kind, "rule": search.rule, "steps": len(search.rates),
        "suggested rate": search.suggestion, "head rate used": searched.head_rate,
        "stopped on divergence at": search.diverged_at, "note": search.reason,
    }, label=case.name, rate_search=search)


@pytest.mark.parametrize("strategy", freezing.STRATEGIES)
def test_unfreeze_strategy(strategy, seed, backbone_case, fine_tune, profile, run_config, keras_verbose,
                           tensorboard_dir, record):
    case = backbone_case()
    tuning = fine_tune(case, strategy, seed)
    model = tuning.classifier
    weighted = freezing.weighted_base_layers(model)
    previous_count = -1

    for stage in tuning:
        trainable = freezing.trainable_base_layers(model)
        assert trainable == weighted[len(weighted) - len(trainable):], "trainable layers are not the topmost"
        assert set(trainable) == set(stage.stage.trainable_layers) & set(weighted)
        count = len(model.trainable_weights)
        if strategy.startswith("gradual-"):
            assert count > previous_count, f"stage {stage.number} did not add trainable tensors"
        previous_count = count
        frozen_layers = [layer for layer in freezing.base_of(model).layers if not layer.trainable_weights]
        frozen_before, statistics_before = freezing.weight_bytes(frozen_layers), freezing.batch_norm_statistics(model)
        settings = FitSettings(experiment=5, seed=seed, backbone=case.name, weights=case.weights.kind,
                               image_size=case.image_size, train_images=case.data.train_count, strategy=strategy,
                               stage=stage.number, schedule=run_config.options.lr_schedule,
                               lr_factor=run_config.options.lr_factor, rates=describe_rates(stage.rates))

        result = stage.train(keras_verbose, tensorboard_callbacks(tensorboard_dir, f"stage{stage.number}",
                                                                  settings=settings))

        assert freezing.changed_weights(frozen_before, freezing.weight_bytes(frozen_layers)) == []
        assert freezing.batch_norm_statistics(model) == statistics_before
        assert result.classifier_difference <= 1e-5, "the classifier does not predict what the trained model did"
        # Exactly the groups with trainable weights stepped, each at its own configured rate.
        assert set(result.rates_used) == set(result.rates)
        if run_config.options.lr_schedule == "constant":
            assert result.rates_used == {name: pytest.approx([rate] * len(result.fit.loss), rel=1e-6)
                                         for name, rate in result.rates.items()}
        record(STAGES, {"backbone": case.name, "strategy": strategy, "stage": stage.number, **result.summary()},
               validation=case.data)

    record(
        ON_ONE_BUDGET, {"backbone": case.name, "strategy": strategy, "weights": case.weights.kind, **tuning.summary()},
        label=f"{case.name} {strategy}", stage_curve=tuning.stage_curve(), rate_curves=tuning.rate_curves.rates,
        validation=case.data, predictions=predicted_classes(model, case.data.batches("validation", profile.batch_size)),
    )
