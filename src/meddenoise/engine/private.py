"""DP-SGD with Opacus: Poisson sampling of privacy units, per-unit clipping, Gaussian noise, accounting.

What differs from ordinary training (`make_private` returns it all; the loop does not know which it runs):
- Sampling. Ordinary epochs walk a fixed permutation and see every image exactly once. DP-SGD's guarantee
  (amplification by subsampling) needs Poisson sampling instead: at every step each privacy unit joins the
  batch independently with probability q, so batch sizes vary, some units appear twice in an "epoch" and
  others not at all. q = global batch / training images, so a step holds `--batch-size x ranks` images on
  average and an epoch is round(1 / q) steps, as many as an ordinary epoch.
- The privacy unit is the patient (`--dp-unit patient`, the default): the group the splits keep apart
  (`group` in the prepared manifest, the patient id for NIH data). A sampled patient brings all of their
  training images; the per-image gradients Opacus computes are summed per patient and the clipping to
  `--dp-max-grad-norm` applies to that per-patient sum, so one patient moves the update by at most C, however
  many images they have. `--dp-unit image` treats every image as its own unit (a guarantee per image only).
- Noise: Gaussian with std noise_multiplier x C on the sum of clipped unit gradients, divided by the expected
  number of units per step (Opacus's DPOptimizer). Under DDP every rank draws the same unit sample, keeps the
  units assigned to it (unit index mod ranks), clips them locally; Opacus's DistributedDPOptimizer adds the
  noise once (on rank 0) and sums over ranks, which is the single-device update.
- Accounting: Opacus's RDP accountant, hooked to the DP optimizer's steps (its public step hook), so it
  counts the noisy steps actually taken; `--dp-epsilon` picks the noise multiplier that spends exactly that
  budget over the planned steps. The accountant is saved with the training state, so a resumed run goes on
  counting.
Validation and model selection use held-out patients only, which costs the training patients no privacy.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from meddenoise.data.loader import CleanBatch
from meddenoise.engine.config import MAX_NOISE_MULTIPLIER
from meddenoise.engine.setup import TrainingSetup
from meddenoise.engine.step import TrainStep, build_optimizer
from meddenoise.engine.targets import TargetBatch
from meddenoise.errors import ConfigError

if TYPE_CHECKING:
    from meddenoise.engine.config import TrainConfig
    from meddenoise.engine.runtime import Runtime

UNITS = ("patient", "image")
# RDP orders searched by the accountant: Opacus's defaults reach 63; few units or large q need higher ones.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))


def enabled(config: TrainConfig) -> bool:
    return config.dp_epsilon > 0 or config.dp_noise_multiplier > 0


def check_config(config: TrainConfig) -> None:
    """Option combinations DP-SGD cannot honour, named by parameter (called from TrainConfig.check)."""
    # Their ranges (>= 0, finite; 0 < delta < 1) are declared on TrainConfig's fields.
    if not enabled(config):
        return
    if config.dp_epsilon > 0 and config.dp_noise_multiplier > 0:
        raise ConfigError(
            "give either dp_epsilon (the noise is derived from it) or dp_noise_multiplier, not both",
            "dp_noise_multiplier",
        )
    if config.dp_unit not in UNITS:
        raise ConfigError(f"dp_unit must be one of {', '.join(UNITS)}; got {config.dp_unit!r}", "dp_unit")
    conflicts = (
        ("strategy", config.strategy == "dp", "DataParallel (use single or ddp)"),
        ("pipeline", config.pipeline == "reference", "the reference pipeline"),
        ("compile", config.compile, "torch.compile"),
        ("amp", config.amp == "fp16", "fp16 loss scaling (use off or bf16)"),
        ("grad_clip", config.grad_clip > 0, "grad_clip (DP-SGD clips per unit with dp_max_grad_norm)"),
    )
    for parameter, present, what in conflicts:
        if present:
            raise ConfigError(f"DP-SGD cannot be combined with {what}", parameter)


def require_opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ConfigError(
            "DP-SGD (dp_epsilon / dp_noise_multiplier) needs Opacus: pip install 'meddenoise[dp]'",
            "dp_epsilon",
        ) from None


def check_model(model: nn.Module) -> None:
    """Opacus's module validator: BatchNorm mixes images of a batch, so per-unit clipping would not bound a
    unit's influence."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        kinds = sorted({str(p).split(".")[0] for p in problems})
        raise ConfigError(
            f"the model is not compatible with DP-SGD ({len(problems)} layer(s): {'; '.join(kinds)}); "
            "train with norm=group (GroupNorm instead of BatchNorm)",
            "norm",
        )


def prepare_model(model: nn.Module) -> nn.Module:
    """Validate, then turn off in-place activations: Opacus's backward hooks cannot follow an in-place op on
    a hooked layer's output (same results, a little more memory)."""
    check_model(model)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model


def unit_indices(records: list[dict[str, str]], rows: np.ndarray, unit: str) -> np.ndarray:
    """(n,) int64: the privacy unit of each training image, numbered 0..units-1 in order of first use."""
    if unit == "image":
        return np.arange(len(rows), dtype=np.int64)
    names = [records[r].get("group") or records[r]["patient_id"] for r in rows]
    _, inverse = np.unique(np.array(names), return_inverse=True)
    return inverse.astype(np.int64)


# Augmented views: shifts up to this fraction of the image side, gain and offset within these ranges.
VIEW_SHIFT = 1 / 16
VIEW_GAIN = (0.9, 1.1)
VIEW_OFFSET = (-0.05, 0.05)


def augmented_views(clean: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, H, W) -> (n * views, 1, H, W): each image's views in a row, every view shifted (reflecting at
    the border) and its intensity scaled and offset at random. No flips: a mirrored chest X-ray puts the
    heart on the wrong side, which no real radiograph shows."""
    n, channels, height, width = clean.shape
    images = clean.repeat_interleave(views, dim=0)
    pad = max(1, round(min(height, width) * VIEW_SHIFT))
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    device = clean.device
    count = images.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (count,), generator=generator, device=device)
    rows = (torch.arange(height, device=device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(width, device=device)[None, :] + dx[:, None])[:, None, None, :]
    index = torch.arange(count, device=device)[:, None, None, None]
    shifted = padded[index, torch.arange(channels, device=device)[None, :, None, None], rows, cols]
    gain = torch.empty(count, 1, 1, 1, device=device).uniform_(*VIEW_GAIN, generator=generator)
    offset = torch.empty(count, 1, 1, 1, device=device).uniform_(*VIEW_OFFSET, generator=generator)
    return (shifted * gain + offset).clamp_(0.0, 1.0)


# Image keys of views 1.. are the image's key XOR a per-view constant: each view gets its own noise draw.
VIEW_KEY_STRIDE = 0x2545F4914F6CDD1D


class PoissonUnitBatches:
    """Training batches for DP-SGD: each step every unit joins with probability `sample_rate`.

    The draw is a pure function of (seed, epoch, step), the same on every rank (so a resumed run replays it);
    each rank takes the sampled units with `unit % world_size == rank`. A batch may be empty.
    """

    def __init__(
        self,
        images: torch.Tensor,
        image_keys: torch.Tensor,
        units: np.ndarray,
        max_value: float,
        sample_rate: float,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        views: int = 1,
    ) -> None:
        self.images, self.image_keys = images, image_keys
        self.views = views
        self.units = units
        self.unit_count = int(units.max()) + 1 if len(units) else 0
        self.max_value = float(max_value)
        self.sample_rate = sample_rate
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = images.device
        order = np.argsort(units, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(units, minlength=self.unit_count))[:-1])
        self.current_units = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.current_count = 0  # units of the current batch on this rank (known on the host: no sync)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.sample_rate)

    def sampled_units(self, epoch: int, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, step, 0xD9])
        return np.flatnonzero(rng.random(self.unit_count) < self.sample_rate)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[CleanBatch]:
        for step in range(start_step, self.steps_per_epoch()):
            chosen = self.sampled_units(epoch, step)
            mine = chosen[chosen % self.world_size == self.rank]
            positions = np.concatenate([self._members[u] for u in mine]) if len(mine) else np.zeros(0, int)
            global_size = int(sum(len(self._members[u]) for u in chosen))
            index = torch.from_numpy(positions.astype(np.int64)).to(self.device)
            # Per image: which of this step's units it belongs to (0..len(mine)-1), for per-unit clipping.
            local = np.repeat(np.arange(len(mine)), [len(self._members[u]) for u in mine])
            clean = self.images.index_select(0, index).float().div_(self.max_value)
            keys = self.image_keys.index_select(0, index)
            if self.views > 1 and len(positions):
                generator = torch.Generator(device=self.device)
                draw = np.random.default_rng([self.seed, epoch, step, 0xA6]).integers(2**62)
                generator.manual_seed(int(draw))  # a pure function of the step: a resumed run redraws it
                clean = augmented_views(clean, self.views, generator)
                view = torch.arange(self.views, device=self.device).repeat(len(keys))
                keys = keys.repeat_interleave(self.views) ^ (view * VIEW_KEY_STRIDE)
                local = np.repeat(local, self.views)
            self.current_units = torch.from_numpy(local.astype(np.int64)).to(self.device)
            self.current_count = len(mine)
            # `index` (the images, not their views) is what the epoch's coverage counts.
            yield CleanBatch(clean, keys, index, max(1, global_size))


@dataclasses.dataclass
class PrivacyPlan:
    unit: str
    units: int
    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    target_epsilon: float | None


def steps_per_epoch(sample_rate: float) -> int:
    """As many Poisson steps per epoch as an ordinary epoch has batches: 1 / q."""
    return max(1, round(1.0 / sample_rate))


def plan_privacy(config: TrainConfig, train_images: int, units: int, world_size: int) -> PrivacyPlan:
    """q from the global batch; the noise multiplier from --dp-epsilon over the planned steps (or given)."""
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate = min(1.0, config.batch_size * world_size / max(1, train_images))
    steps = config.step_budget(steps_per_epoch(sample_rate))
    if config.dp_noise_multiplier > 0:
        noise, target = config.dp_noise_multiplier, None
    else:
        try:
            # The search tries noise levels whose best RDP order is the largest: Opacus warns needlessly.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                noise = get_noise_multiplier(
                    target_epsilon=config.dp_epsilon,
                    target_delta=config.dp_delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                    alphas=ALPHAS,
                )
        except ValueError:
            # Opacus's "The privacy budget is too low.": no noise multiplier up to its MAX_SIGMA (1e6) spends
            # this little. Say which budget, and the smallest the accountant reaches for these steps.
            with warnings.catch_warnings():  # at this noise the best RDP order is the largest: expected
                warnings.simplefilter("ignore", UserWarning)
                floor = epsilon_spent(
                    PrivacyPlan(
                        config.dp_unit,
                        units,
                        sample_rate,
                        steps,
                        MAX_NOISE_MULTIPLIER,
                        1.0,
                        config.dp_delta,
                        None,
                    ),
                    steps,
                )
            raise ConfigError(
                f"dp_epsilon {config.dp_epsilon:g} cannot be reached with dp_delta {config.dp_delta:g} over "
                f"{steps} steps at sample rate {sample_rate:.3g}: even noise multiplier "
                f"{MAX_NOISE_MULTIPLIER:g} spends about {floor:.3g}; give a larger dp_epsilon or fewer steps",
                "dp_epsilon",
            ) from None
        target = config.dp_epsilon
    return PrivacyPlan(
        config.dp_unit,
        units,
        sample_rate,
        steps,
        float(noise),
        config.dp_max_grad_norm,
        config.dp_delta,
        target,
    )


def delta_warning(plan: PrivacyPlan) -> str | None:
    """A delta of 1 / units or more allows "release one unit's data in full" with that probability: the
    guarantee is then void in practice, though formally valid (docs/privacy.md)."""
    if plan.units and plan.delta >= 1.0 / plan.units:
        return (
            f"warning: dp_delta {plan.delta:g} is not well below 1 / {plan.units} {plan.unit}s "
            f"({1.0 / plan.units:.3g}): the guarantee allows one {plan.unit}'s data to leak with that "
            f"probability; use --dp-delta {min(1e-5, 0.1 / plan.units):.1g} or smaller"
        )
    return None


def epsilon_spent(plan: PrivacyPlan, steps: int) -> float:
    """The RDP accountant's epsilon at `plan.delta` after `steps` noisy steps."""
    if steps <= 0:
        return 0.0
    from opacus.accountants.analysis import rdp

    orders = rdp.compute_rdp(
        q=plan.sample_rate, noise_multiplier=plan.noise_multiplier, steps=steps, orders=ALPHAS
    )
    epsilon, _ = rdp.get_privacy_spent(orders=ALPHAS, rdp=orders, delta=plan.delta)
    return float(epsilon)


class PrivateTraining:
    """The DP-SGD side of one run: Poisson unit batches, the DP optimizer with Opacus's RDP accountant
    hooked to its steps, per-unit gradient sums before each step, and what the run records about them."""

    def __init__(self, config: TrainConfig, runtime: Runtime) -> None:
        # Opacus's hooks on the first layer fire although the input image needs no gradient: expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        require_opacus()
        from opacus.accountants import RDPAccountant

        self.config, self.runtime = config, runtime
        self.batches: PoissonUnitBatches | None = None
        self.plan: PrivacyPlan | None = None
        self.accountant = RDPAccountant()

    def make_batches(self, data: Any) -> PoissonUnitBatches:
        from meddenoise.errors import DataError

        config, runtime = self.config, self.runtime
        rows = data.indices(config.train_split)
        if config.limit_train:
            rows = rows[: config.limit_train]
        if len(rows) == 0:
            raise DataError(f"split {config.train_split!r} of {data.folder} has no images")
        units = unit_indices(data.records, rows, config.dp_unit)
        images = torch.from_numpy(np.ascontiguousarray(data.images[rows])).unsqueeze(1).to(runtime.device)
        keys = torch.from_numpy(data.image_keys[rows].copy()).to(runtime.device)
        self.plan = plan_privacy(config, len(rows), int(units.max()) + 1, runtime.world_size)
        self.batches = PoissonUnitBatches(
            images,
            keys,
            units,
            data.max_value,
            self.plan.sample_rate,
            rank=runtime.rank,
            world_size=runtime.world_size,
            seed=config.seed,
            views=config.dp_views,
        )
        return self.batches

    def make_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Opacus's DP optimizer around `optimizer`; every step it takes is counted by the accountant."""
        from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

        plan = self.plan
        assert plan is not None, "make_batches first"
        # Expected units per step on this rank: the DDP optimizer sums over ranks and divides by ranks.
        expected = plan.sample_rate * plan.units / self.runtime.world_size
        optimizer_class = DistributedDPOptimizer if self.runtime.world_size > 1 else DPOptimizer
        private_optimizer = optimizer_class(
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            expected_batch_size=expected,
            loss_reduction="mean",
        )
        private_optimizer.attach_step_hook(
            self.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate)
        )
        return private_optimizer

    def empty_batch(self, model: nn.Module) -> None:
        """A rank with no sampled unit still takes part in the noisy step (with zero clipped gradients)."""
        for p in model.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)

    def before_step(self, model: nn.Module) -> None:
        """Sum the per-image gradients of each unit: the optimizer then clips per unit (patient)."""
        units, count = self.batches.current_units, self.batches.current_count
        for p in model.parameters():
            sample = getattr(p, "grad_sample", None)
            if sample is None:
                continue
            if isinstance(sample, list):
                raise RuntimeError("DP-SGD: the target ran the model twice with gradients in one step")
            views = self.batches.views
            if count == sample.shape[0]:
                continue  # one row per unit already (one image each, one view)
            grouped = torch.zeros((count, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
            grouped.index_add_(0, units, sample)
            # A unit's gradient is the sum over its images of the mean over each image's views.
            p.grad_sample = grouped.div_(views) if views > 1 else grouped

    # -- accounting -----------------------------------------------------------------------------------------
    def epsilon(self) -> float:
        """Epsilon spent by the noisy steps taken so far (the accountant's count, resumed runs included)."""
        return float(self.accountant.get_epsilon(self.plan.delta, alphas=ALPHAS))

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict()}

    def load_state_dict(self, state: dict[str, Any], steps_taken: int) -> None:
        """The accountant of a resumed run; a training state written before the accountant was saved
        replays the steps taken (all of them with this run's noise multiplier and sample rate)."""
        if state.get("accountant") is not None:
            self.accountant.load_state_dict(state["accountant"])
            return
        for _ in range(steps_taken):
            self.accountant.step(
                noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate
            )

    def record_fields(self) -> dict[str, Any]:
        return {"dp_epsilon": self.epsilon(), "dp_delta": self.plan.delta}

    def summary_fields(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "dp_epsilon": self.epsilon(),
            "dp_target_epsilon": plan.target_epsilon,
            "dp_delta": plan.delta,
            "dp_noise_multiplier": plan.noise_multiplier,
            "dp_max_grad_norm": plan.max_grad_norm,
            "dp_sample_rate": plan.sample_rate,
            "dp_unit": plan.unit,
            "dp_units": plan.units,
        }

    def notes(self) -> list[str]:
        """What the run log says about the guarantee before training, warnings last."""
        plan = self.plan
        target = f"target epsilon {plan.target_epsilon:g}, " if plan.target_epsilon else ""
        lines = [
            f"DP-SGD: {target}delta {plan.delta:g}, noise multiplier {plan.noise_multiplier:.3f}, "
            f"clip {plan.max_grad_norm:g} per {plan.unit}, {plan.units} {plan.unit}s, "
            f"Poisson sampling q={plan.sample_rate:.4f}, {plan.steps} planned steps "
            f"(epsilon at the end: {epsilon_spent(plan, plan.steps):.2f})"
        ]
        if warning := delta_warning(plan):
            lines.append(warning)
        return lines


class PrivateStep(TrainStep):
    """DP-SGD's update: per-image gradients of the mean loss (Opacus rescales them), summed per unit, clipped
    and noised by the DP optimizer; no share weighting (the optimizer divides by the expected batch)."""

    def __init__(self, *args: Any, private: PrivateTraining, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.private = private

    def update(self, batch: TargetBatch, share: float) -> torch.Tensor:
        if batch.noisy[0].shape[0] == 0:
            self.private.empty_batch(self.model)
            loss = torch.zeros((), device=batch.noisy[0].device)
        else:
            with self.runtime.autocast():
                loss = self.target.loss(self.model, batch, self.loss_fn)
            loss.backward()
            self.private.before_step(self.model)
        self.optimizer.step()
        return loss


def make_private(model: nn.Module, data: Any, config: TrainConfig, runtime: Runtime) -> TrainingSetup:
    """DP-SGD's model, optimizer and batches in one call (cf. Opacus's `PrivacyEngine.make_private`): the
    model checked and made hook-safe, the DP optimizer with its accountant, Poisson unit batches, and the
    step budget the noise multiplier was derived from."""
    private = PrivateTraining(config, runtime)
    prepare_model(model)
    batches = private.make_batches(data)
    # DP-SGD's optimizer writes contiguous gradients that the fused kernel refuses (see build_optimizer).
    optimizer = build_optimizer(
        model, config.optimizer, config.lr, config.weight_decay, runtime.device, fused=False
    )
    return TrainingSetup(
        model=model,
        optimizer=private.make_optimizer(optimizer),
        train_batches=batches,
        total_steps=private.plan.steps,
        make_step=functools.partial(PrivateStep, private=private),
        wrap=functools.partial(runtime.wrap, private=True),
        extras=private,
    )
