"""Training targets that need no clean image at the receiving site.

The obfuscation is y = clamp(x + mean + std * n, 0, 1) with n ~ N(0, 1) and mean = 0.1 in the paper. The
self-supervised methods below all rest on one fact: if the target t is an observation whose noise is
independent of the input's, then E[t | input] = E[E[t | x] | input], so a model trained with MSE learns the
conditional mean of E[t | x] = g(x), not of x. Without clamping g(x) = x + mean (removing the known mean from
the target is enough); with clamping g is the *expected clamped observation*

    g(x) = E[clamp(x + mean + std * n, 0, 1)] = h(x + mean) - h(x + mean - 1),
    h(d) = d * Phi(d / std) + std * phi(d / std)         (E[max(Z, 0)] for Z ~ N(d, std^2))

which bends bright pixels down (towards 1) and, when std is large, dark ones up. Subtracting the mean alone
leaves the bias g(x) - mean - x there (quantified in docs/privacy.md). The `expected-clamp` correction
instead compares g(model output) with the noisy target: g is known, smooth and strictly increasing, so the
model output itself is driven to g^{-1}(E[g(x) | input]), close to the clean image, with no clean pixel.

With an L1 loss (the paper's, and `meddenoise train`'s default) the model learns the conditional MEDIAN.
Clamping is monotone, so the median of a clamped Gaussian observation is exactly clamp(x + mean, 0, 1): inside
the range the right link is simply x + mean (`mean`), and only pixels with x > 1 - mean (the brightest tenth
at mean 0.1) are pulled to 1 - mean. `auto` (the default) picks `expected-clamp` for a squared loss and `mean`
for L1, by probing the loss function once. `none` (no correction) is kept for comparison.

Targets (registered with the engine's `register_target`):
- `noise2noise` (2 copies): input one obfuscated copy, target the other, swapped at random per image.
- `neighbor2neighbor` (1 copy): two half-resolution images from random neighbouring pixels of each 2 x 2
  cell, one predicts the other, plus the regulariser that corrects for the sub-images not showing the same
  pixels.
- `r2r` (1 copy, Recorrupted-to-Recorrupted): input y + alpha * std * z, target y - std * z / alpha with
  z ~ N(0, 1); for Gaussian noise the two have independent noise. Uses the known std.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meddenoise.engine.targets import TargetBatch, TrainingTarget, register_target
from meddenoise.errors import ConfigError

CORRECTIONS = ("auto", "expected-clamp", "mean", "none")
# The "rank" of the held-out (validation) stream of random draws: no real rank reaches it.
HELD_OUT_STREAM = 2**31 - 1
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Ordered pairs of 4-neighbours inside a 2 x 2 cell, positions numbered (0,0)=0, (0,1)=1, (1,0)=2, (1,1)=3
# (the channel order of pixel_unshuffle).
_NEIGHBOUR_FIRST = (0, 1, 0, 2, 1, 3, 2, 3)
_NEIGHBOUR_SECOND = (1, 0, 2, 0, 3, 1, 3, 2)


def expected_observation(
    clean: torch.Tensor, mean: float, std: float, clamp: bool = True, correction: str = "expected-clamp"
) -> torch.Tensor:
    """E[obfuscated observation | clean] under `correction`: the link from a model output to a noisy target.

    `expected-clamp`: the exact g(x) above; `mean`: x + mean (ignores clamping); `none`: x (ignores both).
    """
    if correction == "none":
        return clean
    shifted = clean + mean
    if correction == "mean" or not clamp:
        return shifted
    if correction != "expected-clamp":
        raise ConfigError(f"unknown noise correction {correction!r}; use one of {', '.join(CORRECTIONS[1:])}")
    if std <= 0:
        return shifted.clamp(0.0, 1.0)
    return _positive_part_mean(shifted, std) - _positive_part_mean(shifted - 1.0, std)


def _positive_part_mean(centre: torch.Tensor, std: float) -> torch.Tensor:
    """E[max(Z, 0)] for Z ~ N(centre, std^2), elementwise."""
    t = centre / std
    cdf = 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return centre * cdf + std * pdf


def residual_bias(
    clean: torch.Tensor, mean: float, std: float, correction: str, statistic: str = "mean"
) -> torch.Tensor:
    """Per-pixel error of a perfect self-supervised model (noise-free posterior) whose link is `correction`.

    With a squared loss (`statistic="mean"`) the model converges to link^{-1}(g(x)); with L1 (`"median"`) to
    link^{-1}(clamp(x + mean, 0, 1)). Returns that minus x. Used by the docs and tests to quantify the bias.
    """
    if statistic == "mean":
        observed = expected_observation(clean, mean, std, clamp=True, correction="expected-clamp")
    elif statistic == "median":
        observed = (clean + mean).clamp(0.0, 1.0)
    else:
        raise ValueError(f"statistic must be 'mean' or 'median', not {statistic!r}")
    if correction == "expected-clamp":
        return _invert_expected_clamp(observed, mean, std) - clean
    if correction == "mean":
        return observed - mean - clean
    return observed - clean


def _invert_expected_clamp(observed: torch.Tensor, mean: float, std: float, steps: int = 60) -> torch.Tensor:
    """x with g(x) = observed, by bisection (g is strictly increasing); for documentation, not training."""
    low = torch.full_like(observed, -1.0 - mean - 8 * std)
    high = torch.full_like(observed, 2.0 + 8 * std)
    for _ in range(steps):
        middle = 0.5 * (low + high)
        below = expected_observation(middle, mean, std, True, "expected-clamp") < observed
        low = torch.where(below, middle, low)
        high = torch.where(below, high, middle)
    return 0.5 * (low + high)


def loss_statistic(loss_fn: LossFn) -> str:
    """'median' for an absolute-error loss, 'mean' for a squared one, found by probing it on two numbers.

    Differences (0, 2): L1 gives 1, L2 gives 2. Anything else is treated as squared-error-like ('mean').
    """
    with torch.no_grad():
        probe = float(loss_fn(torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.0, 2.0]]]])))
    return "median" if abs(probe - 1.0) < 1e-6 else "mean"


def model_heads(output: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A model returns one tensor, or a list of heads (U-Net++ deep supervision); every head is trained."""
    return [output] if isinstance(output, torch.Tensor) else list(output)


def final_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[-1]


def _even_crop(images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    return images[..., : height - height % 2, : width - width % 2]


def neighbour_choice(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ordered neighbour pair per 2 x 2 cell: (B, 1, H/2, W/2) int64 in [0, 8)."""
    batch, _, height, width = images.shape
    shape = (batch, 1, height // 2, width // 2)
    return torch.randint(0, len(_NEIGHBOUR_FIRST), shape, generator=generator, device=generator.device).to(
        images.device
    )


def neighbour_subsample(images: torch.Tensor, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbor2Neighbor's sub-sampler: (B, 1, H, W) -> two (B, 1, H/2, W/2) images of neighbouring pixels."""
    cells = F.pixel_unshuffle(
        _even_crop(images), 2
    )  # (B, 1, H, W) -> (B, 4, H/2, W/2): one channel per position
    first = torch.tensor(_NEIGHBOUR_FIRST, device=images.device)[choice]
    second = torch.tensor(_NEIGHBOUR_SECOND, device=images.device)[choice]
    return torch.gather(cells, 1, first), torch.gather(cells, 1, second)


def noise2noise_loss(
    model: torch.nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    swap: torch.Tensor,
    link: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: LossFn,
) -> torch.Tensor:
    """One copy in, the other as target; `swap` (B,) bool picks per image which copy is the input."""
    swap = swap.view(-1, 1, 1, 1).to(first.device)
    inputs = torch.where(swap, second, first)
    targets = torch.where(swap, first, second)
    heads = model_heads(model(inputs))
    return sum(loss_fn(link(head), targets) for head in heads) / len(heads)


def neighbor2neighbor_loss(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    choice: torch.Tensor,
    link: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: LossFn,
    gamma: float,
) -> torch.Tensor:
    """Neighbor2Neighbor: f(g1(y)) predicts g2(y), plus gamma * the consistency regulariser.

    The regulariser subtracts what the two sub-images differ by in the denoised full image,
    g1(f(y)) - g2(f(y)) (computed without gradient, as in the method), so the model is not pulled towards the
    neighbour's clean value. Everything is compared in the observation domain (after `link`).
    """
    with torch.no_grad():
        full = final_output(model(noisy))  # (B, 1, H, W)
        reference_first, reference_second = neighbour_subsample(full, choice)  # 2 x (B, 1, H/2, W/2)
        reference_gap = link(reference_first) - link(reference_second)
    sub_first, sub_second = neighbour_subsample(noisy, choice)
    heads = model_heads(model(sub_first))
    total = 0.0
    for head in heads:
        predicted = link(head)
        regulariser = torch.mean((predicted - sub_second - reference_gap) ** 2)
        total = total + loss_fn(predicted, sub_second) + gamma * regulariser
    return total / len(heads)


def recorrupted_loss(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    z: torch.Tensor,
    std: float,
    alpha: float,
    link: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: LossFn,
) -> torch.Tensor:
    """R2R: input y + alpha * std * z, target y - std * z / alpha (independent noise when n is Gaussian)."""
    inputs = noisy + (alpha * std) * z
    targets = noisy - (std / alpha) * z
    heads = model_heads(model(inputs))
    return sum(loss_fn(link(head), targets) for head in heads) / len(heads)


def _noise_parameters(noise_op: object) -> tuple[float, float, bool]:
    if getattr(noise_op, "kind", "gaussian") != "gaussian":
        raise ConfigError(
            f"clean-free targets are derived for additive Gaussian obfuscation; noise.kind is"
            f" {noise_op.kind!r}: use noise.kind gaussian or target clean",
            "noise.kind",
        )
    try:
        return float(noise_op.mean), float(noise_op.std), bool(getattr(noise_op, "clamp", True))
    except AttributeError:
        raise ConfigError(
            "clean-free targets need a noise operator with known `mean` and `std` (Gaussian obfuscation)"
        ) from None


class _CleanFreeTarget(TrainingTarget):
    """Shared set-up: the known noise parameters, the link, and a seeded generator per device."""

    needs_clean = False

    def __init__(self, noise_op: object, *, seed: int = 0, correction: str = "auto", **options) -> None:
        super().__init__(noise_op, **options)
        if correction not in CORRECTIONS:
            raise ConfigError(f"noise correction must be one of {', '.join(CORRECTIONS)}; got {correction!r}")
        self.noise_mean, self.noise_std, self.noise_clamp = _noise_parameters(noise_op)
        self.correction = correction
        self.resolved_correction: str | None = None if correction == "auto" else correction
        self.seed = int(seed)
        self.calls = 0  # training steps drawn so far (the generator is reseeded from it each step)
        self._generators: dict[str, torch.Generator] = {}

    def link_for(self, loss_fn: LossFn) -> Callable[[torch.Tensor], torch.Tensor]:
        """The link from model output to the expected noisy target, for this loss (resolved once)."""
        if self.resolved_correction is None:
            self.resolved_correction = "expected-clamp" if loss_statistic(loss_fn) == "mean" else "mean"
        correction = self.resolved_correction

        def link(estimate: torch.Tensor) -> torch.Tensor:
            estimate = estimate.float()  # the erf link in fp32 even under autocast
            return expected_observation(
                estimate, self.noise_mean, self.noise_std, self.noise_clamp, correction
            )

        return link

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator of one training step's swaps / masks / re-corruptions, on `device`.

        Each call (one per step) reseeds it from (seed, rank, step count): under DDP every rank draws its own
        numbers for its own images (one shared stream would repeat the same draws on every rank), and the
        state to checkpoint is just the seed and the count, the same on all ranks.
        """
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device)
        generator = self._generators[key]
        entropy = np.random.SeedSequence([self.seed, self.rank, self.calls]).generate_state(1, np.uint64)[0]
        generator.manual_seed(int(entropy))
        self.calls += 1
        return generator

    @contextlib.contextmanager
    def held_out_draws(self) -> Iterator[None]:
        saved = (self.rank, self.calls)
        self.rank, self.calls = HELD_OUT_STREAM, 0  # every validation pass draws the same numbers
        try:
            yield
        finally:
            self.rank, self.calls = saved

    def state_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict[str, object]) -> None:
        unknown = set(state) - {"seed", "calls"}
        if any(not name.startswith("generator:") for name in unknown):
            raise ValueError(f"target {self.name!r} cannot restore state {sorted(unknown)}")
        # Checkpoints from before per-step seeding hold generator states: the stream restarts from the seed.
        self.seed = int(state.get("seed", self.seed))
        self.calls = int(state.get("calls", 0))

    def _check_copies(self, batch: TargetBatch) -> None:
        if len(batch.noisy) < self.copies:
            raise ValueError(
                f"target {self.name!r} needs {self.copies} obfuscated copies, got {len(batch.noisy)}"
            )


@register_target("noise2noise")
class Noise2NoiseTarget(_CleanFreeTarget):
    """Two independently obfuscated copies of each image; one is the input, the other the target."""

    copies = 2

    def loss(self, model: torch.nn.Module, batch: TargetBatch, loss_fn: LossFn) -> torch.Tensor:
        self._check_copies(batch)
        first, second = batch.noisy[0], batch.noisy[1]
        generator = self.generator(first.device)
        swap = torch.rand(first.shape[0], generator=generator, device=generator.device) < 0.5
        return noise2noise_loss(model, first, second, swap, self.link_for(loss_fn), loss_fn)


@register_target("neighbor2neighbor")
class Neighbor2NeighborTarget(_CleanFreeTarget):
    """One obfuscated copy; pairs come from neighbouring pixels (needs H, W >= 4, even parts are used)."""

    copies = 1

    def __init__(self, noise_op: object, *, gamma: float = 2.0, **options) -> None:
        super().__init__(noise_op, **options)
        if gamma < 0:
            raise ConfigError(f"neighbor2neighbor gamma must be >= 0; got {gamma}")
        self.gamma = float(gamma)

    def loss(self, model: torch.nn.Module, batch: TargetBatch, loss_fn: LossFn) -> torch.Tensor:
        self._check_copies(batch)
        noisy = _even_crop(batch.noisy[0])
        choice = neighbour_choice(noisy, self.generator(noisy.device))
        return neighbor2neighbor_loss(model, noisy, choice, self.link_for(loss_fn), loss_fn, self.gamma)


@register_target("r2r")
class RecorruptedToRecorruptedTarget(_CleanFreeTarget):
    """One obfuscated copy, re-corrupted twice with the known noise std (alpha sets the split)."""

    copies = 1

    # alpha 1 beat 0.5 at every paper noise level on the quick data (+0.19, +0.15, +2.97 dB test PSNR at
    # std 0.1, 0.2, 0.3; benchmarks/results/privacy_modes.md): with clamped noise a smaller alpha makes the
    # target's noise (std / alpha) larger than the independence argument tolerates.
    def __init__(self, noise_op: object, *, alpha: float = 1.0, samples: int = 8, **options) -> None:
        super().__init__(noise_op, **options)
        if alpha <= 0:
            raise ConfigError(f"r2r alpha must be > 0; got {alpha}", "target_options")
        if int(samples) != samples or samples < 0:
            raise ConfigError(f"r2r samples must be an integer >= 0; got {samples}", "target_options")
        self.alpha = float(alpha)
        self.samples = int(samples)

    def inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """R2R's estimator: the mean of the model over `samples` re-corruptions y + alpha * std * z_k (the
        inputs it was trained on); `samples=0` applies the model to y itself."""
        if self.samples == 0:
            return model
        return RecorruptionAverage(model, self.noise_std * self.alpha, self.samples, self.seed)

    def loss(self, model: torch.nn.Module, batch: TargetBatch, loss_fn: LossFn) -> torch.Tensor:
        self._check_copies(batch)
        noisy = batch.noisy[0]
        generator = self.generator(noisy.device)
        z = torch.randn(noisy.shape, generator=generator, device=generator.device, dtype=noisy.dtype)
        return recorrupted_loss(model, noisy, z, self.noise_std, self.alpha, self.link_for(loss_fn), loss_fn)


class RecorruptionAverage(torch.nn.Module):
    """Denoise by averaging the model over `samples` re-corrupted copies of the input (R2R inference).

    The re-corruptions z_k are drawn from a generator seeded with (seed, k) at every call, so a result does
    not depend on what was denoised before. Batch composition does not matter either: the draw is per call
    shape, so a tiled or batched run sees the same noise for the same input only when the shapes match."""

    def __init__(self, model: torch.nn.Module, scale: float, samples: int, seed: int = 0) -> None:
        super().__init__()
        self.model, self.scale, self.samples, self.seed = model, float(scale), int(samples), int(seed)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=noisy.device)
        total = None
        for k in range(self.samples):
            generator.manual_seed(self.seed * 1_000_003 + k)
            z = torch.randn(noisy.shape, generator=generator, device=noisy.device, dtype=noisy.dtype)
            output = final_output(self.model(noisy + self.scale * z)).float()
            total = output if total is None else total + output
        return total / self.samples
