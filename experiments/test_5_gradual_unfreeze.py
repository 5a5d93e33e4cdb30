"""Experiment 5: gradual unfreezing, against head-only and full fine-tuning on one budget.

Train a new head on a frozen pretrained base, then thaw the base from the top down, a block
(or N layers) per stage, recompiling at a lower learning rate each time, so that gradients
from a random head never reach the lower layers. The same epochs spent on the head alone, or
on everything from the start, answer whether it is worth it. ULMFiT's discriminative rates
(each block down from the head learns --lr-factor times slower), gradually or from the start,
are the strategies people use beyond the lab's. Every compile follows --lr-schedule, and
the rate each parameter group actually used is recorded per epoch.

With --cached auto each compile trains only the layers above the lowest thawed one, on the
activations of the frozen layers below it, computed once (lab/stage_cache.py), where that is
the same training; the top shares the classifier's layers, so every assertion holds on the
classifier itself. Those layers have never trained, so a pass is shared by every stage that
cuts the same starting weights at the same place, and a strategy's first pass gives the
activations of its later, lower cuts as well. A configuration trained again (another
seed) reuses its compiled models (lab/reuse.py), so that its graphs are traced once.
"""

import numpy as np
import pytest

from lab import fine_tuning, freezing, optimizers, prediction, stage_cache, timesplit
from lab.hparams import FitSettings
from lab.results import StageCurve, Table
from lab.training import fit, predicted_classes, tensorboard_callbacks

pytestmark = pytest.mark.experiment(5, backbones="unfreeze")

STAGES = Table("Stage by stage", keys=("backbone", "strategy", "stage"))
ON_ONE_BUDGET = Table("Strategies on one budget", keys=("backbone", "strategy", "weights"))


@pytest.mark.parametrize("strategy", freezing.STRATEGIES)
def test_unfreeze_strategy(
    strategy, seed, backbone_case, profile, run_config, keras_verbose, tensorboard_dir, record, compiled_models,
    prefix_activations,
):
    case = backbone_case()
    # Everything else that decides the compiled models is the session's, the same for every test.
    run = case.run(compiled_models, strategy, seed)
    model = run.classifier
    base = freezing.base_of(model)
    stages = freezing.strategy_stages(strategy, case.backbone, base, profile.unfreeze_stages, profile.stage_epochs)
    gradual = strategy.startswith("gradual-")
    weighted = freezing.weighted_base_layers(model)
    compile_spans = freezing.compile_spans(stages)
    steps_per_epoch = fine_tuning.steps_per_epoch(case.data.train_count, profile.batch_size)
    rate_curves = fine_tuning.RateCurves()
    # A stage's layers below the cut have not trained yet, nor have a later stage's, lower down:
    # the first prefix pass that runs gives the later stages' activations too.
    later_cuts = stage_cache.stage_cuts(model, [set(stage.trainable_layers) for stage in stages])

    previous_count, accuracies, total_seconds, cached_stages = -1, [], 0.0, 0
    for number, stage in enumerate(stages):
        freezing.set_base_trainable(model, set(stage.trainable_layers))
        prefix_seconds, compiled = 0.0, "kept"
        if compile_spans[number]:
            cache = (
                stage_cache.cache_stage(
                    model, case.data, profile.batch_size, run_config.cache_budget, run.split(number),
                    prefix_activations, later_cuts[number + 1:],
                )
                if run_config.cached == "auto"
                else stage_cache.CachedStage("--cached off", None)
            )
            prefix_seconds = cache.prefix_seconds
            # The optimizer is built from the classifier's parameter groups: the top's weights
            # are the classifier's, with the same paths.
            trained, reused = run.span_model(
                number,
                cache,
                lambda stage=stage, number=number: fine_tuning.stage_optimizer(
                    model, case.backbone, stage, run_config.lr_schedule, run_config.lr_factor,
                    steps=compile_spans[number] * steps_per_epoch,
                ),
            )
            compiled = "reused" if reused else "new"
            validation_batches = (
                cache.validation_batches(profile.batch_size)
                if cache.cached
                else case.data.batches("validation", profile.batch_size)
            )
        # A stage that goes on with the last compile goes on with its cache, shuffled anew.
        train_batches = (
            cache.train_batches(profile.batch_size, seed + number)
            if cache.cached
            else case.data.batches("train", profile.batch_size, seed=seed + number)
        )
        rates = fine_tuning.stage_rates(model, case.backbone, stage, run_config.lr_factor)

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
        rate_recorder = optimizers.GroupLearningRates()
        settings = FitSettings(
            experiment=5, seed=seed, backbone=case.name, weights=case.weights.kind,
            image_size=case.image_size, train_images=case.data.train_count, strategy=strategy, stage=number,
            schedule=run_config.lr_schedule, rates=fine_tuning.describe_rates(rates), lr_factor=run_config.lr_factor,
        )
        result = fit(
            trained, train_batches, stage.epochs, validation_batches, keras_verbose,
            [*tensorboard_callbacks(tensorboard_dir, f"stage{number}", settings=settings), rate_recorder],
            early_stopping_patience=run_config.early_stopping,
        )
        assert freezing.changed_weights(frozen_before, freezing.weight_bytes(frozen_layers)) == []
        assert freezing.batch_norm_statistics(model) == statistics_before
        if cache.cached:
            # The classifier holds what its top learned: it predicts what the top predicted.
            with timesplit.evaluating():
                on_images = prediction.predict(model, case.data.batches("validation", profile.batch_size))
                on_activations = prediction.predict(trained, validation_batches)
            np.testing.assert_allclose(on_images, on_activations, atol=1e-5)

        # Exactly the groups with trainable weights stepped, each at its own configured rate.
        assert set(rate_recorder.per_epoch) == set(rates)
        if run_config.lr_schedule == "constant":
            assert rate_recorder.per_epoch == {name: pytest.approx([rate] * len(result.loss), rel=1e-6)
                                               for name, rate in rates.items()}
        rate_curves.add_fit(rate_recorder.per_epoch, len(result.loss))

        accuracies.append(result.final_validation_accuracy)
        tracing_seconds, training_seconds = timesplit.fit_seconds(result.epoch_seconds)
        total_seconds += prefix_seconds + sum(result.epoch_seconds)
        cached_stages += cache.cached
        record(
            STAGES,
            {
                "backbone": case.name,
                "strategy": strategy,
                "stage": number,
                "thawed": stage.name,
                "rates": fine_tuning.describe_rates(rates),
                "trainable tensors": count,
                "trainable parameters": freezing.trainable_parameter_count(model),
                "validation accuracy": result.final_validation_accuracy,
                "path": cache.path,
                "compiled": compiled,
                "prefix s": prefix_seconds,
                "tracing s": tracing_seconds,
                "training s": training_seconds,
                "seconds": prefix_seconds + sum(result.epoch_seconds),
                **result.early_stopping_summary(),
            },
            validation=case.data,
        )

    record(
        ON_ONE_BUDGET,
        {
            "backbone": case.name,
            "strategy": strategy,
            "weights": case.weights.kind,
            "train images": case.data.train_count,
            "epochs": sum(stage.epochs for stage in stages),
            "rates (last stage)": fine_tuning.describe_rates(rates),
            "final validation accuracy": accuracies[-1],
            "cached stages": f"{cached_stages} of {len(stages)}",
            "training seconds": total_seconds,
        },
        label=f"{case.name} {strategy}",
        stage_curve=StageCurve(stages=[str(n) for n in range(len(stages))], accuracy=accuracies),
        rate_curves=rate_curves.rates,
        validation=case.data,
        predictions=predicted_classes(model, case.data.batches("validation", profile.batch_size)),
    )
