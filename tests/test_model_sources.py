"""Models from anywhere: the user's own class, torchvision and timm architectures with weights on disk, and
exported files (torch.export, TorchScript, ONNX), each evaluated and attacked into a run folder and report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import ROOT, shared_data
from imgclf.cli import main
from imgclf.record import read_metrics

OWN_NET = f"py:{ROOT / 'tests' / 'fixtures' / 'own_net.py'}:Net"


def _mnist(n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    data = MNIST(str(shared_data()), train=split == "train", download=False)
    return data.data[:n].unsqueeze(1).float() / 255, data.targets[:n]


@pytest.fixture(scope="module")
def own_weights(tmp_path_factory) -> Path:
    """The user's own ``Net`` trained outside imgclf on 4,000 MNIST images, saved as a PyTorch state dict."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("own_net_for_test", ROOT / "tests" / "fixtures" / "own_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Net()
    x, y = _mnist(4000)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, len(x), 100):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100]).backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("weights") / "net.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 2}, path)  # a training script's checkpoint
    return path


def test_own_class_with_weights_is_evaluated_attacked_reopened_and_predicts(own_weights, tmp_path, capsys):
    out = tmp_path / "own"
    assert main(["attack", "--model", OWN_NET, "--weights", str(own_weights), "--dataset", "mnist",
                 "--data-dir", str(shared_data()), "--attack", "fgsm,pgd", "--eps", "0,0.1", "--n-examples", "60",
                 "--out", str(out), "--quiet"]) == 0
    metrics = read_metrics(out)
    assert metrics.training is None and metrics.clean.accuracy > 0.85  # trained outside imgclf, judged here
    assert {row.attack for row in metrics.robustness} == {"fgsm", "pgd", "worst-case"}
    info = json.loads((out / "model.json").read_text())
    assert info["source"]["kind"] == "py" and info["source"]["weights"] == str(own_weights)
    assert info["normalization"] == {"mean": [0.0], "std": [1.0]}  # the user's model gets [0, 1] pixels
    html = (out / "report.html").read_text()
    assert "Robustness under attack" in html and "Training" not in html.split("<h2 ")[1]
    # the folder reopens like any run: imgclf.load_model rebuilds the class from model.json
    from imgclf import load_model

    model = load_model(out)
    x, y = _mnist(200, "test")
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.85
    image = tmp_path / "digit.png"
    Image.fromarray((x[0, 0] * 255).byte().numpy()).save(image)
    capsys.readouterr()
    assert main(["predict", str(out), str(image), "--format", "json"]) == 2  # the folder names code: an opt-in
    assert "--trust-code" in capsys.readouterr().err
    assert main(["predict", str(out), str(image), "--format", "json", "--trust-code"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["classes"] == [str(int(y[0]))]


def test_weights_that_do_not_fit_are_one_line_naming_the_keys(tmp_path, capsys):
    from torch import nn

    save_file({"features.0.weight": torch.zeros(8, 1, 3, 3), "other.bias": torch.zeros(3)},
              str(tmp_path / "w.safetensors"))
    code = main(["evaluate", "--model", OWN_NET, "--weights", str(tmp_path / "w.safetensors"), "--dataset", "digits",
                 "--image-size", "28", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "missing: features.0.bias" in err and "unexpected: other.bias" in err and "other shape" in err
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole pickled module: refused, never unpickled
    assert main(["evaluate", "--model", OWN_NET, "--weights", str(tmp_path / "pickled.pt"), "--dataset", "digits",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "py:no/such/file.py:Net"], "no Python file"),
    (["--model", f"{OWN_NET[:-4]}:Nett"], "has no callable 'Nett'"),
    (["--model", "py:os"], "give the factory as"),
    (["--model", "torchvision:resnet1"], "similar names: resnet18"),
    (["--model", OWN_NET], "has no weights to evaluate"),
    (["--model", OWN_NET, "--weights", "w.pt", "--mean", "0.5"], "go together"),
    (["--model", "nosuch.onnx"], "no exported model"),
])
def test_bad_model_sources_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", *argv, "--dataset", "digits", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_run_folder_and_a_model_do_not_mix(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    assert main(["attack", str(tmp_path), "--model", "mlp", "--dataset", "mnist"]) == 2
    assert "drop --dataset, --model" in capsys.readouterr().err
    assert main(["attack"]) == 2
    assert "give a run folder" in capsys.readouterr().err


def test_hub_weights_offline_fail_at_once_saying_how_to_pass_a_file(tmp_path, capsys, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IMGCLF_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for model in ("timm:resnet18", "torchvision:resnet18"):
        began = time.perf_counter()
        code = main(["evaluate", "--model", model, "--model-option", "pretrained=true", "--dataset", "digits",
                     "--out", str(tmp_path / model.replace(":", "-"))])
        err = capsys.readouterr().err
        assert code == 2 and time.perf_counter() - began < 2  # seconds
        assert err.count("\n") == 1 and f"--model {model} --weights FILE" in err, err


def _image_folder(root: Path, per_class: int = 6) -> Path:
    """A small CIFAR-10 image folder: the first ``per_class`` test images of each class."""
    source = shared_data("cifar10-jpg", "test")
    for folder in sorted(source.iterdir()):
        target = root / "test" / folder.name
        target.mkdir(parents=True)
        for path in sorted(folder.iterdir())[:per_class]:
            (target / path.name).write_bytes(path.read_bytes())
        (root / "train" / folder.name).mkdir(parents=True)
        (root / "train" / folder.name / "0.jpg").write_bytes(sorted(folder.iterdir())[-1].read_bytes())
    return root


def test_torchvision_architecture_with_local_weights_uses_the_library_normalization(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    weights = tmp_path / "resnet18-cifar.pth"
    torch.save(resnet18(num_classes=10).state_dict(), weights)
    out = tmp_path / "tv"
    assert main(["attack", "--model", "torchvision:resnet18", "--weights", str(weights), "--dataset",
                 str(_image_folder(tmp_path / "cifar")), "--image-size", "32", "--attack", "fgsm", "--eps", "0,2/255",
                 "--n-examples", "10", "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # torchvision's weights' own
    assert info["source"]["normalization"] == "torchvision's metadata for resnet18"
    assert info["input_shape"] == [3, 32, 32]
    assert read_metrics(out).attack.n == 10


def test_timm_architecture_takes_its_native_size_unless_told(tmp_path):
    pytest.importorskip("timm")
    import timm

    weights = tmp_path / "tiny.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=10, in_chans=1).state_dict(), str(weights))
    out = tmp_path / "timm"
    assert main(["evaluate", "--model", "timm:resnet10t", "--weights", str(weights), "--dataset", "digits",
                 "--image-size", "16", "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["input_shape"] == [1, 16, 16] and info["source"]["normalization"].startswith("timm's metadata")
    assert info["normalization"]["mean"] == [pytest.approx(np.mean([0.485, 0.456, 0.406]))]  # grey: the average


@pytest.fixture(scope="module")
def digits_exports(tmp_path_factory):
    """A digits run exported as a torch.export program, TorchScript and ONNX."""
    pytest.importorskip("onnxruntime")
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    for fmt in ("pt2", "torchscript", "onnx"):
        assert main(["export", str(run), "--format", fmt]) == 0
    return run


@pytest.mark.parametrize("file", ["model.pt2", "model.torchscript.pt"])
def test_exported_programs_are_attacked_with_gradients(digits_exports, file, tmp_path):
    out = tmp_path / "exported"
    assert main(["attack", "--model", str(digits_exports / file), "--dataset", "digits", "--attack", "fgsm,pgd",
                 "--eps", "0,0.1", "--n-examples", "40", "--out", str(out), "--quiet"]) == 0
    metrics = read_metrics(out)
    assert metrics.attack.skipped == [] and {r.attack for r in metrics.robustness} == {"fgsm", "pgd", "worst-case"}
    info = json.loads((out / "model.json").read_text())
    assert (out / info["source"]["file"]).read_bytes() == (digits_exports / file).read_bytes()  # a copy, kept
    assert info["source"]["normalize"] is False  # imgclf's export holds its normalization
    # the folder reopens from its copy, whatever happens to the original
    assert main(["attack", str(out), "--attack", "pgd", "--eps", "0.2", "--n-examples", "20", "--quiet"]) == 0


def test_an_onnx_model_gets_the_black_box_attack_only_and_the_report_says_why(digits_exports, tmp_path):
    out = tmp_path / "onnx"
    assert main(["attack", "--model", str(digits_exports / "model.onnx"), "--dataset", "digits", "--preset", "full",
                 "--eps", "0.1", "--n-examples", "20", "--queries", "100", "--out", str(out), "--quiet"]) == 0
    metrics = read_metrics(out)
    assert metrics.attacks() == ["square"]
    assert len(metrics.attack.skipped) == 4 and all("needs the model's gradients" in s for s in metrics.attack.skipped)
    assert "only black-box attacks" in (out / "report.html").read_text()


def test_shattered_gradients_fail_a_check_even_when_pgd_alone_is_asked_for(own_weights, tmp_path):
    from imgclf.models.weights import read_state_dict

    weights = tmp_path / "shattered.safetensors"  # Net's weights behind the quantizing layer: nn.Sequential's "1."
    save_file({f"1.{k}": v for k, v in read_state_dict(own_weights).items()}, str(weights))
    out = tmp_path / "shattered"
    assert main(["attack", "--model", f"{OWN_NET[:-4]}:shattered", "--weights", str(weights), "--dataset", "mnist",
                 "--data-dir", str(shared_data()), "--attack", "pgd", "--eps", "0.1,0.3", "--n-examples", "100",
                 "--out", str(out), "--quiet"]) == 0
    evaluation = read_metrics(out).latest
    worst = evaluation.worst_case()[-1].accuracy
    checks = {c["name"]: c for c in evaluation.attack.checks}
    assert checks["gradients"]["status"] == "passed"  # useless, but not zero: the old checks saw nothing
    assert checks["transfer beats the evaluation"]["status"] == "failed", checks["transfer beats the evaluation"]
    assert "with body.0 bypassed (as the identity)" in checks["transfer beats the evaluation"]["detail"]  # Quantize
    assert checks["white-box beats black-box"]["status"] == "failed"  # the square probe, though no square was asked
    assert worst > 0.5  # what PGD alone reports: the number the checks now call unproven
    assert "treat the robust accuracy above as unproven" in (out / "report.html").read_text()


def test_a_randomized_model_is_found_and_attacked_through_the_expectation(tmp_path):
    from torch import nn

    from imgclf.attacks import AttackSpec, robustness

    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 3, (40,))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()

    class Noisy(nn.Module):
        def forward(self, images):
            return images + 0.05 * torch.randn_like(images)

    noisy = nn.Sequential(Noisy(), plain).eval()
    for model, randomized in ((plain, False), (noisy, True)):
        result = robustness(model, x, y, attacks=[AttackSpec("pgd", steps=3)], eps_values=[0.1],
                            device=torch.device("cpu"), batch_size=16)
        detail = {c["name"]: c["detail"] for c in result.checks}["randomness"]
        assert ("averaged 8 passes (EOT)" in detail) is randomized, detail


def test_evaluate_robustness_on_any_module_returns_plain_tables_html_and_a_run_folder(tmp_path):
    import imgclf
    from imgclf.cli import main as cli

    run = tmp_path / "digits"
    assert cli(["train", "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    model = imgclf.load_model(run)
    data = imgclf.Run.open(run).data.test
    images, labels = data.float_images(np.arange(60)), data.labels[:60]
    report = imgclf.evaluate_robustness(model, images, labels, attacks=["fgsm", "pgd"], eps=[0, "0.1"])
    assert [(r["attack"], r["eps"]) for r in report.rows] == [
        ("fgsm", 0.0), ("pgd", 0.0), ("worst-case", 0.0), ("fgsm", 0.1), ("pgd", 0.1), ("worst-case", 0.1)]
    assert report.worst_case[0.0] == report.clean_accuracy > 0.8 and report.worst_case[0.1] < report.clean_accuracy
    assert json.loads(json.dumps(report.rows)) == report.rows  # plain data
    assert "<table" in report._repr_html_() and "transfer beats the evaluation" in report._repr_html_()
    out = report.save(tmp_path / "saved")
    assert (out / "report.html").is_file() and cli(["report", str(out)]) == 0
    assert read_metrics(out).latest.worst_case()[-1].accuracy == report.worst_case[0.1]
    with pytest.raises(imgclf.UsageError, match=r"\[0, 1\]"):
        imgclf.evaluate_robustness(model, images * 255, labels)
    with pytest.raises(imgclf.UsageError, match="no images to evaluate"):
        imgclf.evaluate_robustness(model, images[:0], labels[:0])


def test_a_run_whose_model_code_is_gone_says_so_in_one_line(own_weights, tmp_path, capsys):
    code = tmp_path / "gone_net.py"
    code.write_text((ROOT / "tests" / "fixtures" / "own_net.py").read_text())
    out = tmp_path / "run"
    assert main(["evaluate", "--model", f"py:{code}:Net", "--weights", str(own_weights), "--dataset", "digits",
                 "--image-size", "28", "--out", str(out), "--quiet"]) == 0
    code.unlink()
    import sys

    sys.modules.pop(next(name for name in sys.modules if name.startswith("imgclf_user_")
                         and getattr(sys.modules[name], "__file__", "") == str(code)), None)
    capsys.readouterr()
    assert main(["attack", str(out), "--attack", "fgsm", "--eps", "0.1", "--n-examples", "10", "--trust-code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no Python file {str(code)!r}" in err, err
