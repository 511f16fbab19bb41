"""CNN features into classifiers: `imgclf features`, `imgclf fit-features` and
`imgclf mlp-numpy`, end to end on digits, checked against direct computation
and scikit-learn."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from conftest import shared_data
from imgclf.checkpoint import load_model
from imgclf.cli import main
from imgclf.features.extract import load_features
from imgclf.numpy_nn.numpy_mlp import MLP


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    run = root / "run"
    assert main(["train", "--model", "simple-cnn", "--epochs", "3", "--out", str(run), "--quiet"]) == 0
    out = root / "features.npz"
    assert main(["features", str(run), "--out", str(out)]) == 0
    return run, out


def test_features_are_the_penultimate_activations_of_every_split(trained):
    run, path = trained
    data = load_features(path)
    splits = np.load(run / "splits.npz")
    for name in ("train", "val", "test"):
        assert len(getattr(data, f"{name}_y")) == len(splits[f"{name}_indices"])
    assert data.width == 32 * 2 * 2  # simple-cnn on 8x8 digits: 32 filters of 2x2 after two poolings
    assert data.class_names == [str(k) for k in range(10)]
    assert data.test_images.dtype == np.uint8 and data.test_images.shape == (len(data.test_y), 1, 8, 8)
    model = load_model(run)
    images = torch.from_numpy(data.test_images[:20]).float() / 255
    with torch.no_grad():
        expected = model.body[:-1](model.normalize(images)).numpy()  # everything before the linear head
    np.testing.assert_allclose(data.test_x[:20], expected, rtol=1e-5, atol=1e-5)
    assert data.source["layer"] == "penultimate" and data.source["model"] == "simple-cnn"


def test_a_named_layer_and_the_errors(trained, tmp_path, capsys):
    run, path = trained
    assert main(["features", str(run), "--layer", "body.0", "--out", str(tmp_path / "conv")]) == 0
    assert load_features(tmp_path / "conv.npz").width == 32 * 8 * 8
    assert main(["features", str(run), "--layer", "body.99", "--out", str(tmp_path / "x.npz")]) == 2
    assert "unknown layer 'body.99'; valid choices: penultimate, normalize, body, body.0" in capsys.readouterr().err
    before = path.read_bytes()
    assert main(["features", str(run), "--out", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["features", str(run), "--list-layers"]) == 0
    assert "body.7" in capsys.readouterr().out


@pytest.mark.parametrize("classifier, floor", [("numpy-mlp", 0.9), ("torch-mlp", 0.9), ("logistic", 0.9),
                                               ("svm", 0.9), ("knn", 0.85)])
def test_every_classifier_trains_on_features_into_a_run_report(trained, tmp_path, classifier, floor):
    _, path = trained
    out = tmp_path / classifier
    epochs = {"numpy-mlp": 5, "torch-mlp": 15}.get(classifier)
    options = ["--option", f"epochs={epochs}"] if epochs else []
    assert main(["fit-features", str(path), "--classifier", classifier, *options, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clean"]["accuracy"] >= floor
    assert {"confusion_matrix", "predictions"} <= {p.stem for p in (out / "figures").glob("*.png")}
    html = (out / "report.html").read_text()
    assert "trained on 128 features: layer penultimate of simple-cnn" in html
    if classifier.endswith("mlp"):
        assert (out / "history.csv").read_text().count("\n") == epochs + 1
        assert (out / "classifier.safetensors").is_file()
    if classifier == "logistic":  # the same result as scikit-learn used directly
        data = load_features(path)
        scaler = StandardScaler().fit(data.train_x)
        direct = LogisticRegression(max_iter=1000, random_state=0).fit(scaler.transform(data.train_x), data.train_y)
        expected = (direct.predict(scaler.transform(data.test_x)) == data.test_y).mean()
        assert metrics["clean"]["accuracy"] == pytest.approx(expected)


def test_mlp_numpy_on_pixels_saves_weights_that_reproduce_its_test_accuracy(tmp_path, capsys):
    out = tmp_path / "numpy"
    assert main(["mlp-numpy", "--epochs", "20", "--hidden", "64", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clean"]["accuracy"] > 0.9 and metrics["model"] == "numpy-mlp"
    assert {"training_curves", "confusion_matrix", "predictions", "mistakes"} <= \
        {p.stem for p in (out / "figures").glob("*.png")}
    weights = load_file(out / "classifier.safetensors")
    mlp = MLP(64, 10, hidden=(64,))
    mlp.load_state({k: v for k, v in weights.items() if k.startswith("dense")})
    from imgclf.config import DataConfig
    from imgclf.data import load_data
    from imgclf.features.extract import features_from_pixels

    data = features_from_pixels(load_data(DataConfig(), seed=0))
    x = (data.test_x - weights["scaler.mean"]) / weights["scaler.scale"]
    assert (mlp.predict_logits(x).argmax(1) == data.test_y).mean() == pytest.approx(metrics["clean"]["accuracy"])
    assert main(["mlp-numpy", "--out", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["attack", str(out)]) == 2
    assert "classifier trained on features" in capsys.readouterr().err


def test_classifier_errors_are_one_line(trained, tmp_path, capsys):
    _, path = trained
    assert main(["fit-features", str(path), "--classifier", "forest"]) == 2
    assert "valid choices: knn, logistic, numpy-mlp, svm, torch-mlp" in capsys.readouterr().err
    assert main(["fit-features", str(path), "--classifier", "knn", "--option", "k=3"]) == 2
    assert "unknown option 'k' for classifier 'knn'; valid options: n_neighbors, weights" in capsys.readouterr().err
    assert main(["fit-features", str(tmp_path / "missing.npz")]) == 2
    assert main(["mlp-numpy", "--activation", "relu6", "--out", str(tmp_path / "x")]) == 2
    assert "unknown activation 'relu6'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["fit-features", str(path), "--option", "dropout=2", "--out", str(tmp_path / "y")]) == 2
    assert "dropout must be in [0, 1)" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_mlp_numpy_on_fashion_mnist_pixels(tmp_path):
    """The real data: one hidden layer of 128 learns Fashion-MNIST (a short run; docs/results.md has the full one)."""
    root = shared_data("FashionMNIST").parent
    out = tmp_path / "fm"
    assert main(["mlp-numpy", "--dataset", "fashion-mnist", "--data-dir", str(root), "--train-examples", "12000",
                 "--epochs", "5", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["clean"]["accuracy"] > 0.82
