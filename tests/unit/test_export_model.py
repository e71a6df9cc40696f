"""`meddenoise export-model`: a run as a shareable folder (weights, config.json, model card) that
`load_trained_model` and `denoise --run` read like the run itself."""

from __future__ import annotations

import json

import pytest
import torch

from meddenoise.cli import main
from meddenoise.engine.checkpoint import CheckpointMetadata, load_trained_model
from meddenoise.export import describe, model_card

TINY = ["--model", "unet", "--base-channels", "4", "--depth", "2", "--epochs", "1", "--batch-size", "4",
        "--quiet", "--device", "cpu", "--noise-std", "0.2"]  # fmt: skip


@pytest.fixture
def trained(tmp_path, make_prepared):
    data = make_prepared(n=24, size=32, patients=12)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 0
    return run


def test_export_writes_weights_config_and_a_card_that_load_like_the_run(trained, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["export-model", "--run", str(trained), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "unet" and config["noise"]["std"] == 0.2 and config["privacy"]["mode"] == "none"
    assert config["data"]["counts"] and config["test_metrics"]["images"] > 0
    card = (out / "README.md").read_text()
    for section in ("## Data and noise", "## Evaluation", "## Privacy", "## Intended use and limits"):
        assert section in card
    assert "No formal privacy guarantee" in card and "Not a medical device" in card
    psnr = config["test_metrics"]["psnr"]
    assert f"PSNR {psnr['mean']:.2f}" in card
    exported, _ = load_trained_model(out)
    original, _ = load_trained_model(trained)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(images), original(images))
    # `denoise --run` reads the export folder like a run folder
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray((images[0, 0].numpy() * 255).astype("uint8")).save(tmp_path / "in" / "x.png")
    assert (
        main(["denoise", "--run", str(out), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    assert (tmp_path / "o" / "x.png").is_file()
    # an export folder is never overwritten
    assert main(["export-model", "--run", str(trained), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_the_card_states_the_dp_guarantee_and_the_clean_free_mode():
    metadata = {"model": "unet", "model_spec": {"name": "unet", "depth": 3}, "target": "noise2noise",
                "noise": {"kind": "gaussian", "mean": 0.1, "std": 0.2}, "config": {}}  # fmt: skip
    summary = {"dp_epsilon": "7.99", "dp_delta": "1e-05", "dp_unit": "patient"}
    description = describe(CheckpointMetadata.from_dict(metadata), summary, [], {})
    card = model_card(description)
    assert description["privacy"] == {
        "mode": "dp-sgd", "formal_guarantee": True, "epsilon": 7.99, "delta": 1e-05, "unit": "patient",
        "clean_images_at_training_site": False,
    }  # fmt: skip
    assert "(epsilon 7.99, delta 1e-05) per patient" in card and "without clean images" in card
    assert "Not recorded: the run has no test_metrics.csv" in card  # never a made-up figure
    assert "not recorded (the training data folder was not found" in card


def test_onnx_export_matches_pytorch_under_onnxruntime(trained, tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "deploy"
    assert main(["export-model", "--run", str(trained), "--out", str(out), "--onnx", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["onnx"]["input"] == [1, 1, 32, 32] and config["onnx"]["max_abs_difference"] < 1e-3
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    (output,) = session.run(None, {"noisy": images.numpy()})
    model, _ = load_trained_model(out)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(output), model(images), atol=1e-4)
    assert "`model.onnx`: input `noisy` of shape 1x1x32x32" in (out / "README.md").read_text()
