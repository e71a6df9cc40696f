"""`NoiseSpec`: the one description of the obfuscation noise, shared by training, evaluation, obfuscate, the
privacy audit, checkpoints and run files.

It validates its parameters (errors name parameters such as `noise.std`; the CLI adds the flag), builds
the operator (`build()`), owns the rule that seeds independently obfuscated copies (`copy_seed(c)`), and
round-trips through config files (a `noise` group: `--noise-kind`, `--noise-std`, ... on every command
that takes noise), checkpoint metadata and run files (`to_dict()` / `from_dict()`). This module does not
import torch, so command parsers can use it without slowing `--help`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any, ClassVar

from meddenoise.config import option
from meddenoise.errors import ConfigError


class Kinds(tuple):
    """The built-in noise kinds, listed as the `--noise-kind` choices without importing torch; a kind is
    in it when `noise.operators.OPERATORS` has it, so a kind a user registers there is accepted wherever
    the built-ins are (flags, config files, `NoiseSpec`, `build_noise`)."""

    def __contains__(self, kind: object) -> bool:
        if tuple.__contains__(self, kind) or not isinstance(kind, str):
            return tuple.__contains__(self, kind)
        from meddenoise.noise.operators import OPERATORS

        return kind in OPERATORS


KINDS = Kinds(("gaussian", "poisson", "poisson_gaussian"))
# The kinds whose noise is photon counting: they need a dose.
DOSE_KINDS = ("poisson", "poisson_gaussian")
MODES = ("fixed", "fresh")
# The paper's three levels (std 0.1, 0.2, 0.3 of the full intensity range).
PAPER_STDS = (0.1, 0.2, 0.3)
# A prime stride between the seeds of the copies, so copy c of one image never reuses another copy's noise.
COPY_SEED_STRIDE = 7919


def check_int(value: Any, parameter: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{parameter} must be an integer; got {value!r}", parameter)
    return operator.index(value)


def check_real(value: Any, parameter: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{parameter} must be a finite number; got {value!r}", parameter)
    return float(value)


def check_mean(mean: Any) -> float:
    return check_real(mean, "noise.mean")


def check_std(std: Any) -> float:
    value = check_real(std, "noise.std")
    if value < 0:
        raise ConfigError(f"noise.std (standard deviation) must be >= 0; got {value}", "noise.std")
    return value


def check_dose(dose: Any) -> float:
    if dose is None:
        raise ConfigError(
            "Poisson noise needs noise.dose: the expected photon count per pixel at full intensity, "
            "e.g. 1000",
            "noise.dose",
        )
    value = check_real(dose, "noise.dose")
    if value <= 0:
        raise ConfigError(f"noise.dose must be > 0 photons per pixel; got {value}", "noise.dose")
    return value


def check_kind(kind: Any) -> str:
    """A registered noise kind, or the registry's error naming `noise.kind` and the available kinds."""
    if kind not in KINDS:
        from meddenoise.noise.operators import OPERATORS

        OPERATORS.get(kind if isinstance(kind, str) else repr(kind))
    return kind


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ConfigError(f"noise.mode must be one of {', '.join(MODES)}; got {mode!r}", "noise.mode")
    return mode


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """What noise obfuscates the clean images: the operator's parameters, fixed or fresh, and the seed."""

    # A bare value given for the whole group (`noise = "poisson"` in TOML, an old config's `noise` key).
    SHORTHAND: ClassVar[str] = "kind"

    kind: str = option(
        "gaussian", "noise model: gaussian (the paper), poisson or poisson_gaussian", choices=KINDS
    )
    mean: float = option(0.1, "mean of the Gaussian noise, in units of full intensity (the paper: 0.1)")
    std: float = option(0.2, "standard deviation of the Gaussian noise (the paper: 0.1, 0.2 or 0.3)")
    clamp: bool = option(True, "clamp noisy values to [0, 1] (as the paper)")
    dose: float | None = option(
        None, "photons per pixel at full intensity, for the poisson kinds (lower dose = more noise)"
    )
    mode: str = option(
        "fixed",
        "fixed: one obfuscated copy per image, as released (the paper); fresh: new noise every epoch "
        "(training only)",
        choices=MODES,
    )
    seed: int = option(0, "seed of the noise (obfuscate: a fresh random secret unless given)")

    def check(self) -> None:
        check_kind(self.kind)
        check_mode(self.mode)
        check_mean(self.mean)
        check_std(self.std)
        check_int(self.seed, "noise.seed")
        if not isinstance(self.clamp, bool):
            raise ConfigError(f"noise.clamp must be true or false; got {self.clamp!r}", "noise.clamp")
        if self.kind in DOSE_KINDS or self.dose is not None:
            check_dose(self.dose)

    # -- the operator and its seeds ------------------------------------------------------------------------
    def build(self) -> Any:
        """The noise operator (`meddenoise.noise.NoiseOperator`) these parameters describe."""
        from meddenoise.noise.operators import build_noise

        return build_noise(self.kind, mean=self.mean, std=self.std, clamp=self.clamp, dose=self.dose)

    def copy_seed(self, copy: int) -> int:
        """The seed of independently obfuscated copy `copy` (0, 1, ...) of every image.

        Training targets with two copies (noise2noise), `meddenoise obfuscate --copies 2` and the privacy
        audit's two-copy attack all use this rule, so copy c of an export is copy c a training run makes.
        """
        return self.seed + COPY_SEED_STRIDE * check_int(copy, "copy")

    def with_std(self, std: float) -> NoiseSpec:
        spec = dataclasses.replace(self, std=float(std))
        spec.check()
        return spec

    # -- files ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NoiseSpec:
        """From `to_dict()` output, checkpoint metadata or an evaluation record (unknown keys are ignored:
        records may carry extras such as the operator's `noise_level` or `generator`)."""
        from meddenoise.config import config_from_mapping

        known = {f.name for f in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        kept = {key: value for key, value in kept.items() if value is not None or key == "dose"}
        return config_from_mapping(cls, kept, source="noise settings", prefix="noise.")


# -- sweeping the noise level (data info, privacy-audit, baselines) ----------------------------------------
def levels_option() -> Any:
    return option(
        [], "noise standard deviations, one after the other (default: --noise-std if given, else 0.1 0.2 0.3)"
    )


def check_levels(levels: list[float], parameter: str = "levels") -> None:
    if any(not 0 < std <= 1 for std in levels):
        raise ConfigError(
            f"{parameter}: noise standard deviations must be in (0, 1]; got {levels}", parameter
        )


def with_levels(config: Any, given: set[str]) -> Any:
    """`config` with its `levels` filled in when none were given: the noise std if it was given (`given`
    holds `noise.std`), else the paper's three levels."""
    if config.levels:
        return config
    return dataclasses.replace(
        config, levels=[config.noise.std] if "noise.std" in given else list(PAPER_STDS)
    )
