import pytest
import torch

from imgclf.checkpoint import load_model, model_info, save_model
from imgclf.data.containers import DatasetSpec
from imgclf.errors import UsageError
from imgclf.models import MODELS, Normalize, create_model


def _spec(channels, size, k=5):
    return DatasetSpec("synthetic", tuple(f"c{i}" for i in range(k)), channels, (size, size),
                       (0.5,) * channels, (0.25,) * channels)


def _build(name, spec):
    return create_model(name, channels=spec.channels, image_size=spec.image_size, num_classes=spec.num_classes,
                        mean=spec.mean, std=spec.std)


TIMM_NAMES = ["timm:resnet18", "timm:mobilenetv3_small_050"]
ALL_MODELS = sorted(MODELS) + TIMM_NAMES


def _needs_timm(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed")


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_model_gives_logits_and_trains_every_parameter(name, channels, size):
    _needs_timm(name)
    torch.manual_seed(0)
    spec = _spec(channels, size)
    model = _build(name, spec)
    images = torch.rand(4, channels, size, size)
    if hasattr(model.body, "initialize_from_data"):
        model.body.initialize_from_data(model.normalize(images))
    logits = model(images)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    with torch.no_grad():  # zero-initialized layers (timm's last BN of each block) would block gradients
        for p in model.parameters():
            if p.requires_grad and not torch.any(p != 0):
                p.add_(1e-3 * torch.randn_like(p))
    (model(images) * torch.randn_like(logits)).sum().backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_then_load_gives_identical_outputs(tmp_path, name):
    _needs_timm(name)
    torch.manual_seed(0)
    spec = _spec(3, 16)
    model = _build(name, spec).eval()
    env = {"torch": torch.__version__}
    save_model(model, tmp_path / "model.safetensors", model_info(model, name, {}, spec, env))
    loaded = load_model(tmp_path)
    images = torch.rand(3, 3, 16, 16)
    assert not loaded.training
    assert torch.equal(model(images), loaded(images))
    assert torch.equal(loaded.normalize.mean.flatten(), torch.full((3,), 0.5))


def test_normalize_is_the_first_layer_and_uses_the_data_statistics():
    layer = Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    assert torch.allclose(layer(x).flatten(), torch.tensor([0.0, 1.0]))


def test_bad_model_names_and_options_list_the_valid_ones():
    spec = _spec(1, 28)
    with pytest.raises(UsageError, match=r"unknown model 'vgg'; valid choices: cnn, .*simple-cnn, timm:<name>"):
        _build("vgg", spec)
    with pytest.raises(UsageError, match="unknown option 'width' for model 'mlp'; valid options: hidden, depth"):
        create_model("mlp", channels=1, image_size=(28, 28), num_classes=3, mean=[0], std=[1],
                     options={"width": 3})
    with pytest.raises(UsageError, match="must be of type int"):
        create_model("mlp", channels=1, image_size=(28, 28), num_classes=3, mean=[0], std=[1],
                     options={"hidden": "big"})
    with pytest.raises(UsageError, match="at least 8x8"):
        _build("cnn", _spec(1, 6))


def test_mlp_options_change_the_architecture():
    model = create_model("mlp", channels=1, image_size=(28, 28), num_classes=10, mean=[0], std=[1],
                         options={"hidden": 64, "depth": 2})
    assert sum(p.numel() for p in model.parameters()) == (784 + 1) * 64 + 65 * 64 + 65 * 10


def test_loading_a_missing_or_foreign_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no trained model"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "model.json").write_text('{"format": "something-else"}')
    with pytest.raises(UsageError, match="not an imgclf model file"):
        load_model(tmp_path)


def test_model_parameter_counts_match_their_docstrings():
    counts = {
        ("keras-cnn", 3, 32): 1_250_858, ("simple-cnn", 1, 28): 25_354 - 96, ("mlp", 1, 28): 101_770,
    }
    for (name, channels, size), expected in counts.items():
        model = create_model(name, channels=channels, image_size=(size, size), num_classes=10,
                             mean=[0.0] * channels, std=[1.0] * channels)
        assert sum(p.numel() for p in model.body.parameters()) == expected, name


def test_unknown_timm_names_suggest_real_ones():
    pytest.importorskip("timm")
    with pytest.raises(UsageError, match="unknown timm model 'resnet_18'; similar names:"):
        create_model("timm:resnet_18", channels=3, image_size=(32, 32), num_classes=10, mean=[0] * 3, std=[1] * 3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_through_imgclf_run(name, tiny_folder, tmp_path):
    import json

    from imgclf.cli import main

    out = tmp_path / "run"
    assert main(["run", "--dataset", str(tiny_folder), "--image-size", "16", "--model", name, "--epochs", "1",
                 "--batch-size", "8", "--attack-examples", "4", "--eps", "0,0.1", "--pgd-steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == name and 0 <= metrics["clean"]["accuracy"] <= 1
    assert load_model(out)(torch.rand(2, 3, 16, 16)).shape == (2, 3)
