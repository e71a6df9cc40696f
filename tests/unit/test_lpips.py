"""LPIPS: the formula (independent re-computation, reference package when present) and weight discovery."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from meddenoise.metrics import perceptual
from meddenoise.metrics.perceptual import LPIPS, MetricUnavailable, lpips_status

LIN_KEYS = [f"lin{k}.model.1.weight" for k in range(5)]
CHANNELS = (64, 192, 384, 256, 256)


def _random_lin_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.rand(1, c, 1, 1, generator=generator) * 0.1 for key, c in zip(LIN_KEYS, CHANNELS)}


def _random_model(seed: int = 0) -> tuple[LPIPS, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = LPIPS()  # default (random) conv initialisation for the backbone
    lin_state = _random_lin_state(seed)
    model.load_lin_state(lin_state)
    return model, lin_state


def _images(batch: int = 3, size: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, 1, size, size + 8, generator=generator)
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    return noisy, clean


def _straightforward_lpips(images_a, images_b, backbone_state, lin_state) -> torch.Tensor:
    """LPIPS written out layer by layer from the published definition, sharing no code with the module."""

    def trunk(x):
        w = backbone_state
        outputs = []
        x = F.relu(F.conv2d(x, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        outputs.append(x)
        x = F.max_pool2d(x, 3, 2)
        x = F.relu(F.conv2d(x, w["features.3.weight"], w["features.3.bias"], padding=2))
        outputs.append(x)
        x = F.max_pool2d(x, 3, 2)
        for index in (6, 8, 10):
            x = F.relu(F.conv2d(x, w[f"features.{index}.weight"], w[f"features.{index}.bias"], padding=1))
            outputs.append(x)
        return outputs

    def prepare(images):
        rgb = images.repeat(1, 3, 1, 1) * 2 - 1
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        return (rgb - shift) / scale

    total = torch.zeros(images_a.shape[0])
    for layer, (fa, fb) in enumerate(zip(trunk(prepare(images_a)), trunk(prepare(images_b)))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        weights = lin_state[LIN_KEYS[layer]].view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * weights).sum(1).mean((1, 2))
    return total


def test_lpips_matches_a_straightforward_recomputation():
    model, lin_state = _random_model()
    noisy, clean = _images()
    backbone_state = {f"features.{k}": v for k, v in model.backbone.features.state_dict().items()}
    with torch.no_grad():
        ours = model(noisy, clean)
        reference = _straightforward_lpips(noisy, clean, backbone_state, lin_state)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_lpips_is_zero_on_identical_symmetric_and_positive():
    model, _ = _random_model(seed=3)
    noisy, clean = _images()
    with torch.no_grad():
        assert torch.equal(model(clean, clean), torch.zeros(3))
        forward, backward = model(noisy, clean), model(clean, noisy)
    torch.testing.assert_close(forward, backward, rtol=1e-6, atol=0.0)
    assert bool((forward > 0).all())


def test_grayscale_equals_repeated_rgb_and_small_images_are_refused():
    model, _ = _random_model()
    noisy, clean = _images(batch=2)
    with torch.no_grad():
        gray = model(noisy, clean)
        rgb = model(noisy.repeat(1, 3, 1, 1), clean.repeat(1, 3, 1, 1))
    torch.testing.assert_close(gray, rgb)
    tiny = torch.rand(1, 1, 30, 64)
    with pytest.raises(perceptual.MeddenoiseError, match="at least 31"):
        model(tiny, tiny)


def _write_weight_files(folder, seed: int = 0):
    torch.manual_seed(seed)
    source = LPIPS()
    backbone_state = {f"features.{k}": v.clone() for k, v in source.backbone.features.state_dict().items()}
    backbone_state["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    backbone_file = folder / perceptual.BACKBONE_FILENAME
    lin_file = folder / "alex.pth"
    torch.save(backbone_state, backbone_file)
    torch.save(_random_lin_state(seed), lin_file)
    return source, backbone_file, lin_file


def test_from_pretrained_loads_torchvision_layout_from_argument_env_and_hub(tmp_path, monkeypatch):
    source, backbone_file, lin_file = _write_weight_files(tmp_path)
    noisy, clean = _images(batch=2)
    source.load_lin_state(_random_lin_state(0))
    with torch.no_grad():
        expected = source(noisy, clean)
        by_argument = LPIPS.from_pretrained(backbone_file, lin_file)(noisy, clean)
    torch.testing.assert_close(by_argument, expected, rtol=0, atol=0)

    monkeypatch.setenv(perceptual.BACKBONE_ENV, str(backbone_file))
    monkeypatch.setenv(perceptual.LIN_ENV, str(lin_file))
    assert lpips_status()[0]
    monkeypatch.delenv(perceptual.BACKBONE_ENV)
    hub = tmp_path / "torch_home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    (hub / "hub" / "checkpoints" / perceptual.BACKBONE_FILENAME).write_bytes(backbone_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(hub))
    ok, description = lpips_status()
    assert ok and str(hub) in description
    with torch.no_grad():
        torch.testing.assert_close(LPIPS.from_pretrained()(noisy, clean), expected, rtol=0, atol=0)


def test_missing_weights_make_lpips_unavailable_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.delenv(perceptual.BACKBONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    ok, reason = lpips_status()
    assert not ok and perceptual.BACKBONE_FILENAME in reason and perceptual.BACKBONE_ENV in reason
    with pytest.raises(MetricUnavailable, match="backbone"):
        LPIPS.from_pretrained()
    module, reason = perceptual.load_lpips_or_reason()
    assert module is None and "unavailable" in reason
    with pytest.raises(MetricUnavailable, match="not found"):
        LPIPS.from_pretrained(backbone_path=tmp_path / "nope.pth")


def test_foreign_or_negative_weight_files_are_refused(tmp_path):
    _, backbone_file, lin_file = _write_weight_files(tmp_path)
    negative = _random_lin_state()
    negative["lin2.model.1.weight"][0, 0] = -1.0
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(MetricUnavailable, match="negative"):
        LPIPS.from_pretrained(backbone_file, tmp_path / "negative.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(MetricUnavailable, match="missing"):
        LPIPS.from_pretrained(tmp_path / "foreign.pth", lin_file)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="cannot read"):
        LPIPS.from_pretrained(tmp_path / "garbage.pth", lin_file)


@pytest.mark.skipif(
    perceptual.packaged_lin_path() is None, reason="lpips package (lin weights) not installed"
)
def test_packaged_lin_weights_load_and_are_non_negative():
    path = perceptual.packaged_lin_path()
    assert path.is_file(), f"lpips is installed but {path} is missing"
    model = LPIPS()
    model.load_lin_state(torch.load(path, map_location="cpu", weights_only=True), str(path))
    assert all(float(lin.weight.min()) >= 0 and float(lin.weight.max()) > 0 for lin in model.lins)


def _reference_package_or_reason() -> str | None:
    for name in ("torchvision", "lpips"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (the reference lpips package needs it)"
    return None


@pytest.mark.skipif(_reference_package_or_reason() is not None, reason=str(_reference_package_or_reason()))
def test_matches_the_reference_lpips_package_with_random_backbone():
    import lpips

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    backbone_state = {}
    for slice_index in range(1, 6):
        slice_module = getattr(reference.net, f"slice{slice_index}")
        for key, value in slice_module.state_dict().items():
            backbone_state[f"features.{key}"] = value
    ours = LPIPS()
    ours.backbone.load_torchvision_state(backbone_state)
    ours.load_lin_state(torch.load(perceptual.packaged_lin_path(), map_location="cpu", weights_only=True))
    noisy, clean = _images()
    with torch.no_grad():
        expected = reference(noisy, clean, normalize=True).view(-1)
        torch.testing.assert_close(ours(noisy, clean), expected, rtol=1e-5, atol=1e-7)
