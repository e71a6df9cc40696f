"""Noise operators: statistics, reproducibility (fixed / fresh), batch and process independence, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from meddenoise.errors import ConfigError
from meddenoise.noise import build_noise, counter_rng
from meddenoise.noise.operators import EXACT_POISSON_MAX_MEAN, poisson_counts
from time_limits import ANSWER


def constant_images(value: float, count: int = 4, size: int = 128) -> torch.Tensor:
    return torch.full((count, 1, size, size), value, dtype=torch.float32)


def smooth_batch(count: int = 3, size: int = 24) -> torch.Tensor:
    grid = torch.linspace(0, 1, size)
    image = 0.5 + 0.4 * torch.outer(torch.sin(3 * grid), torch.cos(2 * grid))
    return torch.stack([image * (0.6 + 0.1 * i) for i in range(count)]).unsqueeze(1)  # (count, 1, size, size)


KEYS = torch.tensor([11, 2**62 + 5, 987654321012], dtype=torch.int64)


# --- the generator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounds", "words", "expected"),
    [  # Random123's known-answer vectors: counter0 counter1 key0 key1 -> out0 out1
        (20, (0, 0, 0, 0), (0x6B200159, 0x99BA4EFE)),
        (20, (0xFFFFFFFF,) * 4, (0x1CB996FC, 0xBB002BE7)),
        (20, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
        (13, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xBA3E4725, 0xF27D669E)),
    ],
)
def test_threefry_matches_known_answers(rounds, words, expected):
    tensors = [torch.tensor([w], dtype=torch.int64) for w in words]
    out0, out1 = counter_rng.threefry2x32(*tensors, rounds=rounds)
    assert (out0.item(), out1.item()) == expected


def test_series_functions_match_the_math_library():
    words = torch.cat(
        [torch.tensor([0, 1, 2**30 - 1, 2**30, 2**31, 2**32 - 1]), torch.randint(0, 2**32, (20000,))]
    )
    u = (words.double() + 0.5) / 2**32
    assert torch.allclose(counter_rng.minus_two_log_uniform(words), -2 * torch.log(u), rtol=1e-13, atol=1e-14)
    cos_t, sin_t = counter_rng.cos_sin_turn(words)
    assert torch.allclose(cos_t, torch.cos(2 * math.pi * u), atol=1e-14)
    assert torch.allclose(sin_t, torch.sin(2 * math.pi * u), atol=1e-14)
    y = torch.linspace(0, EXACT_POISSON_MAX_MEAN, 500, dtype=torch.float64)
    assert torch.allclose(counter_rng.exp_negative(y), torch.exp(-y), rtol=1e-13, atol=0)


def test_standard_normals_are_normal():
    key0, key1 = counter_rng.image_stream_keys(torch.tensor([3, 4]), counter_rng.derive_key("normality"))
    z = counter_rng.standard_normal(key0, key1, 100_001, stream=0).flatten().numpy()
    assert z.shape == (200_002,)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(stats.skew(z)) < 0.02
    assert abs(stats.kurtosis(z)) < 0.05  # excess kurtosis; a sum of 12 uniforms would give -0.1
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(np.mean(np.abs(z) > 3) - 0.0027) < 0.0007  # the tails are there, not just the bulk


def test_uniforms_are_uniform_in_open_interval():
    key0, key1 = counter_rng.image_stream_keys(torch.tensor([9]), counter_rng.derive_key("uniform"))
    u = counter_rng.uniform_open(key0, key1, 100_000, stream=1).flatten().numpy()
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3


# --- Gaussian obfuscation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mean", "std"), [(0.1, 0.1), (0.1, 0.2), (0.1, 0.3), (0.0, 0.05), (-0.2, 0.5)])
def test_gaussian_noise_mean_and_std_before_clamping(mean, std):
    clean = constant_images(0.5)
    op = build_noise("gaussian", mean=mean, std=std)
    noise = (op.add_noise_unclamped(clean, torch.arange(4), seed=1) - clean).double()
    samples = noise.numel()
    assert abs(noise.mean().item() - mean) < 5 * std / math.sqrt(samples)
    assert abs(noise.std().item() / std - 1) < 5 / math.sqrt(2 * samples)


def test_clamp_keeps_unit_range_and_equals_clamped_unclamped():
    clean = smooth_batch()
    op = build_noise("gaussian", mean=0.1, std=0.3)
    noisy = op(clean, KEYS, seed=0)
    unclamped = op.add_noise_unclamped(clean, KEYS, seed=0)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert unclamped.max() > 1 and unclamped.min() < 0  # so the clamp did something
    assert torch.equal(noisy, unclamped.clamp(0, 1))
    no_clamp = build_noise("gaussian", mean=0.1, std=0.3, clamp=False)
    assert torch.equal(no_clamp(clean, KEYS, seed=0), unclamped)


def test_output_keeps_shape_dtype_and_device():
    op = build_noise("gaussian")
    clean = torch.rand(2, 1, 7, 5)  # odd pixel count: Box-Muller pairs are cut to size
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        noisy = op(clean.to(dtype), [5, 6], seed=0)
        assert noisy.shape == clean.shape and noisy.dtype == dtype and noisy.device == clean.device
    full = op(clean.double(), [5, 6], seed=0)
    assert torch.allclose(full.float(), op(clean, [5, 6], seed=0), atol=1e-6)


# --- reproducibility ----------------------------------------------------------------------------------------


def test_fixed_noise_ignores_batch_composition_order_and_epoch():
    op = build_noise("gaussian", mean=0.1, std=0.2)
    clean = smooth_batch()
    together = op(clean, KEYS, seed=7)
    reordered = op(clean[[2, 0]], KEYS[[2, 0]], seed=7)
    alone = op(clean[1:2], KEYS[1:2], seed=7)
    assert torch.equal(reordered, together[[2, 0]])
    assert torch.equal(alone[0], together[1])
    assert torch.equal(op(clean, KEYS, seed=7, epoch=5), together)
    assert torch.equal(op(clean, KEYS.numpy(), seed=7), together)


def test_fresh_noise_changes_per_epoch_and_repeats_within_an_epoch():
    op = build_noise("gaussian", mean=0.1, std=0.2, clamp=False)
    clean = smooth_batch()
    epoch0 = op(clean, KEYS, seed=7, epoch=0, mode="fresh")
    assert torch.equal(epoch0, op(clean, KEYS, seed=7, epoch=0, mode="fresh"))
    epoch1 = op(clean, KEYS, seed=7, epoch=1, mode="fresh")
    fixed = op(clean, KEYS, seed=7)
    for other in (epoch1, fixed):
        correlation = np.corrcoef((epoch0 - clean).flatten(), (other - clean).flatten())[0, 1]
        assert abs(correlation) < 0.05
    with pytest.raises(ConfigError, match="epoch"):
        op(clean, KEYS, seed=7, mode="fresh")
    with pytest.raises(ConfigError, match="mode"):
        op(clean, KEYS, seed=7, mode="sometimes")


def _noise_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    return float(np.corrcoef(first.flatten().double(), second.flatten().double())[0, 1])


def test_noise_is_uncorrelated_across_images_seeds_and_levels():
    clean = constant_images(0.5, count=1)
    base = build_noise("gaussian", mean=0.0, std=0.2, clamp=False)
    noise = base(clean, [1], seed=0) - clean
    bound = 5 / math.sqrt(clean.numel())
    assert abs(_noise_correlation(noise, base(clean, [2], seed=0) - clean)) < bound
    assert abs(_noise_correlation(noise, base(clean, [1], seed=1) - clean)) < bound
    # Two levels of one image must not share a pattern: else a weighted difference recovers the image.
    other_level = build_noise("gaussian", mean=0.0, std=0.3, clamp=False)
    assert abs(_noise_correlation(noise, other_level(clean, [1], seed=0) - clean)) < bound
    # Neighbouring pixels are independent too (no stripes from the counter layout).
    image = noise.reshape(128, 128)
    assert abs(_noise_correlation(image[:, 1:], image[:, :-1])) < bound
    assert abs(_noise_correlation(image[1:], image[:-1])) < bound


_DIGEST_SOURCE = """
import hashlib, torch
from meddenoise.noise import build_noise

def noise_digest():
    grid = torch.linspace(0, 1, 24)
    clean = (0.5 + 0.4 * torch.outer(torch.sin(3 * grid), torch.cos(2 * grid))).expand(3, 1, 24, 24)
    keys = torch.tensor([11, 2**62 + 5, 987654321012])
    digest = hashlib.sha256()
    kinds = (("gaussian", {}), ("poisson", {"dose": 50.0}), ("poisson_gaussian", {"dose": 500.0}))
    for kind, options in kinds:
        digest.update(build_noise(kind, **options)(clean.contiguous(), keys, seed=7).numpy().tobytes())
    return digest.hexdigest()
"""


def test_fixed_noise_identical_in_another_process():
    namespace: dict = {}
    exec(_DIGEST_SOURCE, namespace)
    here = namespace["noise_digest"]()
    script = _DIGEST_SOURCE + "\nprint(noise_digest())\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=ANSWER
    )
    assert result.stdout.strip() == here


def test_generator_output_is_pinned():
    # Published datasets and training runs depend on these exact bits: if this fails on purpose, change
    # GENERATOR in meddenoise.noise.operators (it is recorded with every export) and update the pin.
    z = build_noise("gaussian", mean=0.0, std=1.0, clamp=False).add_noise_unclamped(
        torch.zeros(1, 1, 1, 4, dtype=torch.float64), [42], seed=0
    )
    assert z.flatten().tolist() == PINNED_NORMALS  # exact: the generator is bit-reproducible


PINNED_NORMALS = [1.0145033346988732, 1.5235560356423925, 1.566134150764846, 0.1904926748157086]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_identical_noise():
    clean = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = torch.tensor([1, 2, 3, 2**62])
    for kind, options in (
        ("gaussian", {}),
        ("poisson", {"dose": 30.0}),
        ("poisson_gaussian", {"dose": 900.0}),
    ):
        op = build_noise(kind, **options)
        on_cpu = op(clean, keys, seed=3)
        on_gpu = op(clean.cuda(), keys.cuda(), seed=3)
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), on_cpu), kind


# --- Poisson ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dose", [40.0, 2000.0])
@pytest.mark.parametrize("intensity", [0.01, 0.2, 0.9])
def test_poisson_mean_and_variance_scale_with_dose(dose, intensity):
    clean = constant_images(intensity, count=2)
    op = build_noise("poisson", dose=dose)
    noisy = op.add_noise_unclamped(clean, [1, 2], seed=0).double()
    samples = noisy.numel()
    expected_variance = intensity / dose
    assert abs(noisy.mean().item() - intensity) < 5 * math.sqrt(expected_variance / samples)
    # 1% slack on top of sampling error for the normal approximation's extra ~0.14 count^2.
    assert abs(noisy.var().item() / expected_variance - 1) < 5 * math.sqrt(2 / samples) + 0.01
    counts = noisy * dose
    assert torch.allclose(counts, counts.round(), atol=1e-6)  # whole photon counts


@pytest.mark.parametrize("rate", [0.3, 3.0, 20.0])
def test_exact_poisson_branch_matches_the_pmf(rate):
    key0, key1 = counter_rng.image_stream_keys(torch.tensor([5]), counter_rng.derive_key("pmf", rate))
    counts = poisson_counts(torch.full((1, 50_000), rate, dtype=torch.float64), key0, key1).flatten().numpy()
    largest = int(stats.poisson.ppf(1 - 1e-4, rate))
    observed = np.bincount(np.minimum(counts.astype(int), largest), minlength=largest + 1)
    expected = stats.poisson.pmf(np.arange(largest + 1), rate)
    expected[-1] += stats.poisson.sf(largest, rate)
    assert stats.chisquare(observed, expected * counts.size).pvalue > 1e-3


def test_poisson_gaussian_adds_both_variances():
    clean = constant_images(0.4, count=2)
    op = build_noise("poisson_gaussian", dose=500.0, mean=0.02, std=0.03, clamp=False)
    noise = (op(clean, [3, 4], seed=2) - clean).double()
    samples = noise.numel()
    expected_variance = 0.4 / 500.0 + 0.03**2
    assert abs(noise.mean().item() - 0.02) < 5 * math.sqrt(expected_variance / samples)
    assert abs(noise.var().item() / expected_variance - 1) < 5 * math.sqrt(2 / samples) + 0.01


# --- parameters, labels, errors -----------------------------------------------------------------------------


def test_labels_and_descriptions():
    assert build_noise().noise_level == "gaussian_m0.1_s0.2"
    assert build_noise(std=0.1).noise_level == "gaussian_m0.1_s0.1"
    assert build_noise("poisson", dose=1000.0).noise_level == "poisson_d1000"
    both = build_noise("poisson_gaussian", dose=250, mean=0, std=0.01)
    assert both.noise_level == "poisson_gaussian_d250_m0_s0.01"
    description = both.describe()
    assert description["kind"] == "poisson_gaussian" and description["dose"] == 250.0
    assert description["std"] == 0.01 and description["clamp"] is True and "generator" in description
    assert "dose" not in build_noise().describe()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"std": -0.1}, "noise.std"),
        ({"std": float("nan")}, "noise.std"),
        ({"mean": float("inf")}, "noise.mean"),
        ({"mean": "0.1"}, "noise.mean"),
        ({"kind": "speckle"}, "noise.kind"),
        ({"kind": "poisson"}, "noise.dose"),
        ({"kind": "poisson", "dose": 0.0}, "noise.dose"),
        ({"kind": "poisson_gaussian", "dose": -5.0}, "noise.dose"),
        ({"clamp": "yes"}, "noise.clamp"),
        ({"sigma": 0.1}, "sigma"),
    ],
)
def test_bad_parameters_raise_config_errors_naming_the_parameter(options, message):
    with pytest.raises(ConfigError, match=message) as raised:
        build_noise(**options)
    assert "--" not in str(raised.value)  # library errors speak of parameters; the CLI adds flags
    if message.startswith("noise."):
        assert raised.value.parameter == message


def test_bad_inputs_raise_clear_errors():
    op = build_noise()
    with pytest.raises(TypeError):
        op(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [1, 2], seed=0)
    with pytest.raises(ValueError, match="2 images"):
        op(torch.zeros(2, 1, 4, 4), [1, 2, 3], seed=0)
    with pytest.raises(TypeError):
        op(torch.zeros(2, 1, 4, 4), [1.0, 2.0], seed=0)
    with pytest.raises(ConfigError, match="seed"):
        op(torch.zeros(2, 1, 4, 4), [1, 2], seed=1.5)
