"""Experiment 5: gradual unfreezing, against head-only and full fine-tuning on one budget.

Train a new head on a frozen pretrained base, then thaw the base from the top down, a block
(or N layers) per stage, recompiling at a lower learning rate each time, so that gradients
from a random head never reach the lower layers. The same epochs spent on the head alone, or
on everything from the start, answer whether it is worth it.
"""

import pytest

from lab import freezing, models
from lab.results import StageCurve, Table
from lab.training import fit_on, tensorboard_callbacks

pytestmark = pytest.mark.experiment(5, backbones="unfreeze")

STAGES = Table("Stage by stage", keys=("backbone", "strategy", "stage"))
ON_ONE_BUDGET = Table("Strategies on one budget", keys=("backbone", "strategy", "weights"))


@pytest.mark.parametrize("strategy", freezing.STRATEGIES)
def test_unfreeze_strategy(strategy, backbone_case, profile, run_config, keras_verbose, tensorboard_dir, record):
    case = backbone_case()
    model = case.classifier()
    base = freezing.base_of(model)
    stages = freezing.strategy_stages(strategy, case.backbone, base, profile.unfreeze_stages, profile.stage_epochs)
    gradual = strategy.startswith("gradual-")
    weighted = freezing.weighted_base_layers(model)

    compiled_for, previous_count, accuracies, total_seconds = None, -1, [], 0.0
    for number, stage in enumerate(stages):
        freezing.set_base_trainable(model, set(stage.trainable_layers))
        if compiled_for != (stage.trainable_layers, stage.learning_rate):
            models.compile_for_classification(model, stage.learning_rate)
            compiled_for = (stage.trainable_layers, stage.learning_rate)

        trainable = freezing.trainable_base_layers(model)
        assert trainable == weighted[len(weighted) - len(trainable):], "trainable layers are not the topmost"
        assert set(trainable) == set(stage.trainable_layers) & set(weighted)
        count = len(model.trainable_weights)
        if gradual:
            assert count > previous_count, f"stage {number} did not add trainable tensors"
        previous_count = count

        frozen_layers = [layer for layer in base.layers if not layer.trainable_weights]
        frozen_before = freezing.weight_bytes(frozen_layers)
        statistics_before = freezing.batch_norm_statistics(model)
        result = fit_on(
            model, case.flowers, stage.epochs, profile.batch_size, run_config.seed + number, keras_verbose,
            tensorboard_callbacks(tensorboard_dir, f"stage{number}"),
        )
        assert freezing.changed_weights(frozen_before, freezing.weight_bytes(frozen_layers)) == []
        assert freezing.batch_norm_statistics(model) == statistics_before

        accuracies.append(result.validation_accuracy[-1])
        total_seconds += sum(result.epoch_seconds)
        record(
            STAGES,
            {
                "backbone": case.name,
                "strategy": strategy,
                "stage": number,
                "thawed": stage.name,
                "learning rate": f"{stage.learning_rate:g}",
                "trainable tensors": count,
                "trainable parameters": freezing.trainable_parameter_count(model),
                "validation accuracy": result.validation_accuracy[-1],
                "seconds": sum(result.epoch_seconds),
            },
        )

    record(
        ON_ONE_BUDGET,
        {
            "backbone": case.name,
            "strategy": strategy,
            "weights": case.weights.kind,
            "train images": case.flowers.train_count,
            "epochs": sum(stage.epochs for stage in stages),
            "final validation accuracy": accuracies[-1],
            "training seconds": total_seconds,
        },
        label=f"{case.name} {strategy}",
        stage_curve=StageCurve(stages=[str(n) for n in range(len(stages))], accuracy=accuracies),
    )
