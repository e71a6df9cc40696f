"""One registry helper for models, targets, sources, noise kinds, baselines and pipelines."""

from __future__ import annotations

import pytest

from meddenoise.errors import ConfigError
from meddenoise.registry import Registry


def test_registry_adds_finds_and_names_what_is_missing():
    things: Registry[int] = Registry("thing", parameter="thing")
    things.add("one", 1)

    @things.register("two")
    def two():  # noqa: ANN202
        return 2

    assert things.names() == ["one", "two"] and things.get("two")() == 2 and "one" in things
    with pytest.raises(ConfigError, match="unknown thing 'three'; available: one, two") as raised:
        things.get("three")
    assert raised.value.parameter == "thing"
    with pytest.raises(ValueError, match="registered twice"):
        things.add("one", 11)


def test_plugins_register_on_first_use_and_a_missing_one_is_optional():
    things: Registry[int] = Registry("thing", plugins=["meddenoise.no_such_plugin_module"])
    assert things.names() == []


def test_every_kind_of_implementation_uses_it_and_the_cli_choices_match():
    from meddenoise.baselines.classical import BASELINES, FILTERS
    from meddenoise.data.prepare_config import SOURCE_CHOICES
    from meddenoise.data.sources import SOURCES
    from meddenoise.engine.pipelines import PIPELINES
    from meddenoise.engine.targets import TARGETS
    from meddenoise.models.registry import MODELS
    from meddenoise.noise.operators import OPERATORS
    from meddenoise.noise.spec import KINDS
    from meddenoise.reproduce import CLASSICAL_BASELINES

    for registry in (FILTERS, SOURCES, PIPELINES, TARGETS, MODELS, OPERATORS):
        assert isinstance(registry, Registry)
    assert sorted(SOURCES.names()) == sorted(SOURCE_CHOICES)  # the prepare command's --source choices
    assert tuple(OPERATORS.names()) == KINDS  # the --noise-kind choices
    assert tuple(FILTERS.names()) == BASELINES == CLASSICAL_BASELINES
    assert {"clean", "noise2noise", "r2r"} <= set(TARGETS.names())  # the privacy plugins included
    assert PIPELINES.names() == ["fast", "reference"] and {"unet", "unetpp", "dncnn"} <= set(MODELS.names())


def test_losses_schedules_and_federated_strategies_are_registries_matching_the_cli_choices():
    from meddenoise.engine.config import LOSS_CHOICES, SCHEDULE_CHOICES
    from meddenoise.engine.losses import LOSSES, build_loss, per_image_loss
    from meddenoise.engine.schedule import SCHEDULES, learning_rate
    from meddenoise.federated.config import STRATEGY_CHOICES
    from meddenoise.federated.strategies import STRATEGIES, build_strategy

    for registry in (LOSSES, SCHEDULES, STRATEGIES):
        assert isinstance(registry, Registry)
    assert tuple(LOSSES.names()) == LOSS_CHOICES
    assert tuple(SCHEDULES.names()) == SCHEDULE_CHOICES
    assert tuple(STRATEGIES.names()) == STRATEGY_CHOICES
    cases = [
        (lambda: build_loss("huber"), "unknown loss 'huber'; available: l1, l2", "loss"),
        (lambda: per_image_loss("huber", None, None), "unknown loss 'huber'", "loss"),
        (
            lambda: learning_rate(0, base_lr=1.0, kind="step", total_steps=10),
            "unknown learning-rate schedule 'step'; available: none, cosine, onecycle",
            "lr_schedule",
        ),
        (
            lambda: build_strategy(
                "fedsgd", fraction=1.0, train_sites=2, proximal_mu=0.0, server_lr=0.1, server_tau=1e-3
            ),
            "unknown federated strategy 'fedsgd'; available: fedavg, fedprox, fedadam, fedyogi",
            "strategy",
        ),
    ]
    for call, message, parameter in cases:
        with pytest.raises(ConfigError, match=message) as raised:
            call()
        assert raised.value.parameter == parameter
