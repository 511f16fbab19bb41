"""MNIST, Fashion-MNIST and Linnaeus 5 from ../shared/data through imgclf's real loaders.

Skipped, with the reason shown, where the folder is absent."""

import numpy as np
import pytest
import torch

from conftest import shared_data
from imgclf.config import DataConfig, TrainConfig
from imgclf.data import load_data
from imgclf.evaluation import evaluate
from imgclf.models import create_model
from imgclf.training import fit


@pytest.mark.parametrize("name, classes, first_class, min_accuracy", [
    ("mnist", "MNIST", "0", 0.93),
    ("fashion-mnist", "FashionMNIST", "T-shirt/top", 0.75),
])
def test_idx_datasets_load_split_and_train(name, classes, first_class, min_accuracy):
    root = shared_data(classes).parent
    data = load_data(DataConfig(dataset=name, data_dir=str(root)), seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (48000, 12000, 10000)
    assert data.test.source == "test" and data.spec.class_names[0] == first_class
    assert data.train.images.dtype == torch.uint8 and data.spec.input_shape == (1, 28, 28)
    assert np.bincount(data.test.labels.numpy()).min() >= 890  # the official test split, all classes
    small = load_data(DataConfig(dataset=name, data_dir=str(root), train_examples=6000), seed=0)
    torch.manual_seed(0)
    s = small.spec
    model = create_model("simple-cnn", channels=1, image_size=s.image_size, num_classes=10, mean=s.mean, std=s.std)
    fit(model, small, TrainConfig(epochs=1, batch_size=64), augment="none", device=torch.device("cpu"),
        seed=0, log=lambda line: None, quiet=True)
    result = evaluate(model, small.test, list(s.class_names), device=torch.device("cpu"))
    assert result.metrics.n == 10000 and result.metrics.accuracy >= min_accuracy


def test_linnaeus_photo_folder_loads_at_the_asked_size():
    root = shared_data("linnaeus5-4class-96")
    data = load_data(DataConfig(dataset=str(root), image_size=32), seed=0)
    assert data.spec.class_names == ("berry", "bird", "dog", "flower")
    assert data.spec.input_shape == (3, 32, 32)
    assert (len(data.train) + len(data.val), len(data.test)) == (4800, 1600)
    assert not data.bad_files
    assert 0.2 < data.spec.mean[0] < 0.8 and all(s > 0.1 for s in data.spec.std)
