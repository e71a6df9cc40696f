"""Models: registry, shapes at any size, parameter counts, heads, padding, fast paths, `meddenoise models`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from meddenoise.cli import main
from meddenoise.errors import ConfigError
from meddenoise.models import (
    Denoiser,
    build_model,
    count_parameters,
    get_model_entry,
    list_models,
    mean_loss_over_heads,
    model_summary,
    pad_to_multiple,
    register_model,
)
from meddenoise.models import registry as registry_module
from meddenoise.models.summary import count_active_parameters, count_flops

SMALL = 4  # base channels for fast tests
ODD_AND_EVEN_SIZES = [(31, 45), (64, 64), (8, 8), (17, 40)]


def small_model(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, base_channels=SMALL, **options)


def test_registry_lists_the_paper_models():
    assert {"unet", "unetpp", "dncnn"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("height,width", ODD_AND_EVEN_SIZES)
def test_output_has_input_shape_at_any_size(name, height, width):
    model = small_model(name)
    noisy = torch.rand(2, 1, height, width)
    model.train()
    output = model(noisy)
    assert isinstance(output, torch.Tensor) and output.shape == noisy.shape
    model.eval()
    with torch.no_grad():
        output = model(noisy)
    assert output.shape == noisy.shape and output.dtype == torch.float32
    assert torch.isfinite(output).all()


def _double_conv_parameters(in_channels: int, out_channels: int) -> int:
    # Two 3x3 convs with bias, each followed by a BatchNorm (weight + bias).
    return (9 * in_channels * out_channels + out_channels + 2 * out_channels) + (
        9 * out_channels * out_channels + out_channels + 2 * out_channels
    )


def expected_unet_parameters(base: int, depth: int) -> int:
    channels = [base * 2**level for level in range(depth)]
    total = _double_conv_parameters(1, channels[0])
    total += sum(_double_conv_parameters(channels[i - 1], channels[i]) for i in range(1, depth))
    for level in range(depth - 1):
        total += 4 * channels[level + 1] * channels[level] + channels[level]  # 2x2 transposed conv
        total += _double_conv_parameters(2 * channels[level], channels[level])
    return total + channels[0] + 1  # 1x1 output conv


def expected_unetpp_parameters(base: int, depth: int) -> int:
    channels = [base * 2**level for level in range(depth)]
    total = _double_conv_parameters(1, channels[0])
    total += sum(_double_conv_parameters(channels[i - 1], channels[i]) for i in range(1, depth))
    for column in range(1, depth):
        for level in range(depth - column):
            total += _double_conv_parameters(column * channels[level] + channels[level + 1], channels[level])
    return total + (depth - 1) * (channels[0] + 1)  # one 1x1 head per X^{0,j}


def expected_dncnn_parameters(width: int, layers: int) -> int:
    first = 9 * width + width
    middle = (layers - 2) * (9 * width * width + 2 * width)  # no conv bias before the norm
    return first + middle + 9 * width + 1


def meta_parameters(name: str, **options) -> int:
    with torch.device("meta"):
        return count_parameters(build_model(name, base_channels=64, **options))


def test_parameter_counts_at_base_64_match_the_architecture_and_the_published_figures():
    unet = meta_parameters("unet")
    unetpp = meta_parameters("unetpp")
    dncnn = meta_parameters("dncnn")
    # Exactly what the described architectures give...
    assert unet == expected_unet_parameters(64, 5) == 31_042_369
    assert unetpp == expected_unetpp_parameters(64, 5) == 36_628_676
    assert dncnn == expected_dncnn_parameters(64, 17) == 556_097
    # ... and within 1% of the published figures (U-Net 31.04 M; U-Net++ 36-37 M; DnCNN 0.56 M).
    assert abs(unet - 31.04e6) / 31.04e6 < 0.01
    assert 36e6 <= unetpp <= 37e6
    assert abs(dncnn - 0.556e6) / 0.556e6 < 0.01


def test_parameter_counts_follow_depth_and_width():
    with torch.device("meta"):
        assert count_parameters(build_model("unet", 8, depth=3)) == expected_unet_parameters(8, 3)
        assert count_parameters(build_model("unetpp", 8, depth=4)) == expected_unetpp_parameters(8, 4)
        assert count_parameters(build_model("dncnn", 16, num_layers=5)) == expected_dncnn_parameters(16, 5)


def train_one_step(model: nn.Module) -> None:
    model.train()
    noisy, clean = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    loss = mean_loss_over_heads(model(noisy), clean, nn.functional.l1_loss)
    loss.backward()


@pytest.mark.parametrize("name", list_models())
def test_gradients_reach_exactly_the_parameters_the_model_says_it_trains(name):
    model = small_model(name)
    train_one_step(model)
    missing = [key for key, p in model.named_parameters() if p.grad is None]
    if getattr(model, "trains_all_parameters", True):
        assert missing == []
    else:
        assert missing, "trains_all_parameters=False but every parameter got a gradient"


def test_unetpp_deep_supervision_trains_every_parameter():
    model = small_model("unetpp", deep_supervision=True)
    assert model.trains_all_parameters
    train_one_step(model)
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all(), key
    assert all(p.grad.abs().sum() > 0 for p in model.heads.parameters())


def test_unetpp_without_deep_supervision_trains_only_the_chosen_head():
    model = small_model("unetpp")
    train_one_step(model)
    assert model.heads[3].weight.grad is not None
    assert all(model.heads[k].weight.grad is None for k in range(3))


def test_unetpp_returns_all_heads_in_train_mode_with_deep_supervision_and_a_tensor_otherwise():
    model = small_model("unetpp", deep_supervision=True)
    noisy = torch.rand(2, 1, 33, 20)
    outputs = model.train()(noisy)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert all(output.shape == noisy.shape for output in outputs)
    assert isinstance(model.eval()(noisy), torch.Tensor)
    assert isinstance(small_model("unetpp").train()(noisy), torch.Tensor)


def test_every_unetpp_head_is_usable_and_a_pruned_model_reproduces_it():
    full = small_model("unetpp").eval()
    noisy = torch.rand(2, 1, 29, 37)
    with torch.no_grad():
        heads = full.forward_heads(noisy)
        assert len(heads) == 4
        assert torch.equal(heads[-1], full(noisy))
        for k in range(1, 5):
            pruned = build_model("unetpp", base_channels=SMALL, head=k).eval()
            pruned.load_state_dict(full.state_dict())  # same keys: all heads are always built
            torch.testing.assert_close(pruned(noisy), heads[k - 1], rtol=0, atol=1e-6)
    # The heads really differ (they are different sub-networks).
    assert not torch.allclose(heads[0], heads[3])


def test_pruned_unetpp_heads_skip_computation():
    image = torch.rand(1, 1, 32, 32)
    flops, active = [], []
    for k in range(1, 5):
        model = small_model("unetpp", head=k).eval()
        flops.append(count_flops(model, image))
        active.append(count_active_parameters(model, image))
    assert flops == sorted(flops) and len(set(flops)) == 4
    assert active == sorted(active) and len(set(active)) == 4
    # Head 1 touches X00, X10, X01 and its 1x1 head only.
    nodes = small_model("unetpp").nodes
    head_one = sum(count_parameters(nodes[key]) for key in ("x0_0", "x1_0", "x0_1")) + SMALL + 1
    assert active[0] == head_one


class IdentityDenoiser(Denoiser):
    """The network part is the identity: only padding, cropping, residual and clamping act."""

    def __init__(self, size_multiple: int = 16, residual: bool = False, clamp_output: bool = False) -> None:
        super().__init__(size_multiple=size_multiple, residual=residual, clamp_output=clamp_output)
        self.seen_shapes: list[tuple[int, ...]] = []

    def predict(self, padded: torch.Tensor) -> torch.Tensor:
        self.seen_shapes.append(tuple(padded.shape))
        return padded


@pytest.mark.parametrize("height,width", [(31, 45), (17, 16), (3, 5), (1, 1), (64, 48)])
def test_padding_and_cropping_keep_an_identity_exact(height, width):
    model = IdentityDenoiser()
    noisy = torch.rand(2, 1, height, width)
    assert torch.equal(model(noisy), noisy)
    padded_shape = model.seen_shapes[-1]
    assert padded_shape[-2] % 16 == 0 and padded_shape[-1] % 16 == 0
    assert padded_shape[-2] - height < 16 and padded_shape[-1] - width < 16


def test_padding_reflects_and_falls_back_to_replicate_for_tiny_inputs():
    image = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 5, 5)
    padded = pad_to_multiple(image, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]  # reflect
    tiny = torch.arange(3.0).reshape(1, 1, 1, 3)
    assert pad_to_multiple(tiny, 8)[0, 0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]  # replicate
    already_aligned = image[..., :4, :4]
    assert pad_to_multiple(already_aligned, 4) is already_aligned  # no copy when nothing to pad


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("height,width", [(31, 45), (9, 13)])
def test_a_registered_model_that_predicts_zero_noise_is_the_identity(name, height, width):
    model = small_model(name, residual=True).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    noisy = torch.rand(1, 1, height, width)
    with torch.no_grad():
        assert torch.equal(model(noisy), noisy)


def test_residual_subtracts_the_prediction_and_clamping_acts_in_eval_mode_only():
    class ConstantNoise(IdentityDenoiser):
        def predict(self, padded):
            return torch.full_like(padded, 0.5)

    noisy = torch.full((1, 1, 5, 7), 0.2)
    model = ConstantNoise(residual=True, clamp_output=True)
    train_output = model.train()(noisy)
    assert torch.allclose(train_output, torch.full_like(noisy, -0.3))  # not clamped: gradients keep flowing
    assert torch.equal(model.eval()(noisy), torch.zeros_like(noisy))


@pytest.mark.parametrize("name", list_models())
def test_channels_last_gives_the_same_outputs_in_eval_mode(name):
    model = small_model(name).eval()
    noisy = torch.rand(2, 1, 31, 45)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(noisy)
        output = fast(noisy.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_bf16_autocast_runs_and_stays_close_to_fp32(name):
    model = small_model(name).eval()
    noisy = torch.rand(2, 1, 31, 45)
    with torch.no_grad():
        reference = model(noisy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(noisy)
    assert output.shape == reference.shape
    tolerance = 0.02 * reference.abs().max().item() + 1e-3  # bf16 keeps ~3 significant digits
    assert (output.float() - reference).abs().max().item() <= tolerance


def test_group_norm_option_replaces_batch_norm():
    model = small_model("unet", norm="group")
    kinds = {type(module) for module in model.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    assert model(torch.rand(1, 1, 20, 20)).shape == (1, 1, 20, 20)  # batch of one trains under GroupNorm


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("resnet", {}, "unknown model 'resnet'"),
        ("unet", {"heads": 2}, "no option(s) heads"),
        ("unetpp", {"head": 5}, "head must be between 1 and 4"),
        ("unet", {"norm": "layer"}, "norm must be one of batch, group"),
        ("dncnn", {"num_layers": 2}, "at least 3 layers"),
    ],
)
def test_bad_names_and_options_raise_config_errors(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_model(name, base_channels=SMALL, **options)


def test_register_model_adds_a_model_everywhere_and_refuses_duplicates():
    @register_model("test_identity")
    def test_identity(base_channels: int = 1, residual: bool = False) -> nn.Module:
        """Identity (test only)."""
        return IdentityDenoiser(size_multiple=1, residual=residual)

    try:
        assert "test_identity" in list_models()
        assert get_model_entry("test_identity").description == "Identity (test only)."
        assert isinstance(build_model("test_identity", residual=True), IdentityDenoiser)
        with pytest.raises(ValueError, match="registered twice"):
            register_model("test_identity")(test_identity)
    finally:
        registry_module.MODELS.remove("test_identity")


def test_dncnn_flops_are_two_per_multiply_accumulate():
    summary = model_summary("dncnn", size=32, base_channels=8, num_layers=5)
    with torch.device("meta"):
        model = build_model("dncnn", base_channels=8, num_layers=5)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert summary["flops"] == 2 * 32 * 32 * weights
    assert summary["parameters"] == expected_dncnn_parameters(8, 5)
    assert summary["options"]["num_layers"] == 5 and summary["options"]["norm"] == "batch"


def test_flops_counted_on_meta_equal_flops_counted_on_real_tensors():
    torch.manual_seed(0)
    model = build_model("unetpp", base_channels=SMALL, depth=3).eval()
    with torch.device("meta"):
        meta_model = build_model("unetpp", base_channels=SMALL, depth=3).eval()
    cpu_flops = count_flops(model, torch.rand(1, 1, 40, 40))
    assert cpu_flops == count_flops(meta_model, torch.zeros(1, 1, 40, 40, device="meta")) > 0


def test_models_command_prints_every_registered_model_and_writes_json(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "--base-channels", str(SMALL), "--size", "32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in list_models():
        assert f"\n{name} " in printed
    assert "head=1" in printed and "GFLOPs" in printed
    table = json.loads(out.read_text())
    assert table["config"]["base_channels"] == SMALL
    rows = {(row["model"], row["variant"]): row for row in table["models"]}
    for name in list_models():
        with torch.device("meta"):
            assert rows[(name, "")]["parameters"] == count_parameters(build_model(name, SMALL))


def test_models_command_rejects_bad_options(capsys):
    assert main(["models", "--size", "4"]) == 2
    assert "option 'size' must be at least 8" in capsys.readouterr().err
