"""What the model looks at: Grad-CAM against a direct computation from its definition, saliency against autograd,
the layer chosen for each kind of model, and `imgclf explain` on a run and on files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgclf.cli import main
from imgclf.explanations import explain, grad_cam_layer
from imgclf.models import create_model


def _model(name, channels=3, size=32):
    torch.manual_seed(0)
    return create_model(name, channels=channels, image_size=(size, size), num_classes=10, mean=[0.5] * channels,
                        std=[0.25] * channels).eval()


def test_grad_cam_has_the_inputs_size_changes_with_the_target_and_matches_its_definition():
    model = _model("simple-cnn")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4, 7])
    found = explain(model, images, targets)
    assert found.method == "grad-cam" and found.maps.shape == (3, 32, 32) and found.maps.dtype == torch.float32
    assert found.maps.min() >= 0 and found.maps.max() <= 1
    assert not torch.allclose(found.maps, explain(model, images, torch.tensor([1, 2, 3])).maps)
    assert any(getattr(m, "inplace", False) for m in model.modules()), "the model's in-place layers restored"
    # the definition: activations of the layer, weighted by the spatial mean of the target logit's gradient
    layer = dict(model.named_modules())[found.layer]
    for module in model.modules():  # (an in-place ReLU would overwrite the layer's output)
        if getattr(module, "inplace", False):
            module.inplace = False
    kept = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: kept.update(a=out))
    logits = model(images)
    hook.remove()
    gradients, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), kept["a"])
    cam = (gradients.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True).relu()
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    assert torch.allclose(found.maps, cam, atol=1e-5)


def test_saliency_is_the_largest_absolute_input_gradient_over_the_channels():
    model = _model("mlp")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    found = explain(model, images, torch.tensor([3, 5]))
    assert found.method == "saliency" and found.layer is None
    x = images.clone().requires_grad_(True)
    gradients, = torch.autograd.grad(model(x).gather(1, torch.tensor([[3], [5]])).sum(), x)
    expected = gradients.abs().amax(1)
    assert torch.allclose(found.maps, expected / expected.flatten(1).amax(1)[:, None, None], atol=1e-6)


@pytest.mark.parametrize(("name", "layer"), [("mlp", None), ("vit", None), ("simple-cnn", "body.5"),
                                              ("resnet18", "body.layer4"), ("torchvision:resnet18", "body.layer2")])
def test_the_layer_chosen_for_each_kind_of_model(name, layer):
    # the last block's output (simple-cnn: its second pooling); a ViT's one convolution cuts patches;
    # torchvision's ResNet-18 at 32 px ends at 1x1, and layer2 is its last stage of at least 4x4
    assert grad_cam_layer(_model(name), torch.rand(1, 3, 32, 32)) == layer


def test_bad_requests_name_the_choices():
    from imgclf.errors import UsageError

    with pytest.raises(UsageError, match="no layer 'body.99'; its convolutions are: body.0, body.3 "):
        explain(_model("simple-cnn"), torch.rand(1, 3, 32, 32), layer="body.99")
    with pytest.raises(UsageError, match="Grad-CAM needs a convolutional feature map"):
        explain(_model("mlp"), torch.rand(1, 3, 32, 32), method="grad-cam")
    with pytest.raises(UsageError, match="unknown explanation method 'lime'"):
        explain(_model("mlp"), torch.rand(1, 3, 32, 32), method="lime")


def test_imgclf_explain_on_a_run_and_on_files(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    assert main(["run", "--model", "simple-cnn", "--epochs", "1", "--attack", "fgsm", "--eps", "0,0.1,0.3",
                 "--n-examples", "40", "--out", str(run), "--quiet"]) == 0
    arrays = np.load(run / "explanations.npz")
    assert str(arrays["method"]) == "grad-cam" and float(arrays["eps"]) in (pytest.approx(0.1, abs=1e-6),
                                                                            pytest.approx(0.3, abs=1e-6))
    assert len(set(arrays["labels"].tolist())) == len(arrays["labels"]), "one image per class"
    assert arrays["clean_maps"].shape == arrays["adversarial_maps"].shape == (len(arrays["labels"]), 8, 8)
    assert (arrays["clean_pred"] == arrays["labels"]).all(), "fixed images the model gets right"
    assert "What the model looks at" in (run / "report.html").read_text()
    assert main(["explain", str(run), "--eps", "0.3", "--quiet"]) == 0
    assert float(np.load(run / "explanations.npz")["eps"]) == pytest.approx(0.3, abs=1e-6)
    capsys.readouterr()
    assert main(["explain", str(run), "--eps", "0.2"]) == 2
    assert "attacked at eps 0, 0.1, 0.3; choose one of them" in capsys.readouterr().err
    files = tmp_path / "mine"
    files.mkdir()
    for k in range(2):
        Image.fromarray(np.full((20, 20), 60 * k, dtype=np.uint8)).save(files / f"d{k}.png")
    (files / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "mine.png"
    assert main(["explain", str(run), str(files), "--out", str(out)]) == 1  # one file left out
    assert out.is_file() and "broken.png" in capsys.readouterr().err
    assert main(["explain", str(run), str(files), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["explain", str(run), str(files / "broken.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no image could be read" in capsys.readouterr().err
