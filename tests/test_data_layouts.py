"""Data the way people keep it: a labels file (CSV or TSV) beside the images, a folder with train/ and
val/ but no test/, a folder of class folders alone, a Hugging Face data set saved on disk or as Parquet
files. Built in each test from the shared Linnaeus 5 images."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from imgclf.cli import main
from imgclf.config import DataConfig, config_from_dict
from imgclf.data import load_data
from imgclf.data.folder import decode_image
from imgclf.errors import UsageError

PER_CLASS = 10


def _linnaeus_files(split: str, per_class: int = PER_CLASS) -> dict[str, list[Path]]:
    root = shared_data("linnaeus5-4class-96", split)
    return {cls.name: sorted(cls.iterdir())[:per_class] for cls in sorted(root.iterdir())}


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    """Kaggle's layout: ``images/<id>.jpg`` (flat, renamed) and ``labels.csv`` of ``id,species,split``
    with the ids written without their extension."""
    images = tmp_path / "images"
    images.mkdir()
    rows = ["id,species,split"]
    for split in ("train", "test"):
        for name, files in _linnaeus_files(split).items():
            for i, file in enumerate(files):
                stem = f"{split}-{name}-{i:03d}"
                shutil.copy(file, images / f"{stem}.jpg")
                rows.append(f"{stem},{name},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_a_labels_file_gives_the_files_it_names_with_their_labels_and_splits(kaggle):
    data = load_data(DataConfig(dataset=str(kaggle / "labels.csv"), image_root=str(kaggle / "images"),
                                label_column="species", image_size=24), seed=0)
    assert data.spec.class_names == ("berry", "bird", "dog", "flower")
    assert len(data.test) == 4 * PER_CLASS and len(data.train) + len(data.val) == 4 * PER_CLASS
    assert data.origins == {"train": "80% of the data set's train split (stratified, seeded)",
                            "val": "20% of the data set's train split (stratified, seeded)",
                            "test": "the data set's test split"}
    # The test split is the test rows in order: the images and labels of those files.
    files = [file for files in _linnaeus_files("test").values() for file in files]
    expected = np.stack([decode_image(file, channels=3, size=(24, 24)) for file in files])
    assert np.array_equal(data.test.uint8_images().numpy(), expected)
    assert data.test.labels.tolist() == [k for k in range(4) for _ in range(PER_CLASS)]


def test_a_tsv_of_two_unnamed_columns_with_a_missing_file_trains_to_a_report(kaggle, tmp_path):
    rows = (kaggle / "labels.csv").read_text().splitlines()[1:]
    lines = ["picture\tkind"] + [f"images/{stem}.jpg\t{label}" for stem, label, _ in (r.split(",") for r in rows)]
    lines.append("images/gone.jpg\tbird")  # listed, never saved
    (kaggle / "all.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--labels", str(kaggle / "all.tsv"), "--image-size", "16", "--epochs", "1",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["bad_files"] == 1 and "gone.jpg" in (out / "bad_files.txt").read_text()
    assert sum(metrics["data"][split] for split in ("train", "val", "test")) == 8 * PER_CLASS
    assert metrics["data"]["origins"]["test"] == "20% of the data set's train split (stratified, seeded)"
    assert main(["evaluate", str(out), "--quiet"]) == 0  # the run reopens from its config.yaml
    assert "test 16 images: 20% of the data set" in (out / "report.html").read_text()
    with pytest.raises(UsageError, match="cannot decode .*gone.jpg"):
        load_data(DataConfig(dataset=str(kaggle / "all.tsv"), image_size=16, bad_files="error", cache=False), seed=0)


@pytest.mark.parametrize(("edit", "flags", "message"), [
    (None, [], "no label column among id, species, split; name it with --label-column"),
    (None, ["--label-column", "breed"], "has no column 'breed'; its columns: id, species, split"),
    (None, ["--label-column", "species", "--image-root", "."],
     "80 of the 80 files listed in .* do not exist under .*; set --image-root"),
    (lambda text: text.replace(",test\n", ",holdout\n", 1), ["--label-column", "species"],
     r"row \d+: unknown split 'holdout'; valid values: train, val, valid, validation, test"),
    (lambda text: text.replace(",berry,", ",,", 1), ["--label-column", "species"],
     r"row 2 has no label \(column 'species'\)"),
    (lambda text: "id,species\n", ["--label-column", "species"], "needs a header row .* at least one row"),
])
def test_a_broken_labels_file_is_one_clear_error(kaggle, capsys, edit, flags, message):
    labels = kaggle / "labels.csv"
    if edit is not None:
        labels.write_text(edit(labels.read_text()))
    root = [] if "--image-root" in flags else ["--image-root", str(kaggle / "images")]
    assert main(["data", "check", str(labels), *root, *flags]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    with pytest.raises(UsageError, match=message):  # the same error from the Python API
        _check(labels, root, flags)


def _check(labels: Path, root: list[str], flags: list[str]) -> None:
    values = dict(zip(flags[::2], flags[1::2], strict=True)) | dict(zip(root[::2], root[1::2], strict=True))
    load_data(DataConfig(dataset=str(labels), image_root=values.get("--image-root"),
                         label_column=values.get("--label-column"), image_size=8, cache=False), seed=0)


def test_a_labels_file_that_is_not_utf8_or_missing_is_refused(tmp_path):
    (tmp_path / "latin.csv").write_bytes("path,label\ncaf\xe9.jpg,a\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        load_data(DataConfig(dataset=str(tmp_path / "latin.csv")), seed=0)
    with pytest.raises(UsageError, match="does not exist"):
        load_data(DataConfig(dataset=str(tmp_path / "none.csv")), seed=0)


def test_labels_file_flags_on_another_data_set_are_refused():
    with pytest.raises(UsageError, match="--label-column applies to a labels file"):
        config_from_dict({"data": {"dataset": "digits", "label_column": "species"}})


def test_data_check_lists_a_missing_file_of_a_labels_file(kaggle, capsys):
    labels = kaggle / "labels.csv"
    (kaggle / "images" / "train-dog-003.jpg").unlink()
    assert main(["data", "check", str(labels), "--image-root", str(kaggle / "images"),
                 "--label-column", "species"]) == 1
    out = capsys.readouterr().out
    assert "train-dog-003" in out and "cannot be read" in out and "1 file(s) cannot be decoded" in out


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A course's layout: ``train/<class>/`` and ``val/<class>/``, no ``test/``."""
    for split, source in (("train", "train"), ("val", "test")):
        for name, files in _linnaeus_files(source).items():
            (tmp_path / "course" / split / name).mkdir(parents=True)
            for file in files:
                shutil.copy(file, tmp_path / "course" / split / name / file.name)
    return tmp_path / "course"


def test_a_folder_without_test_draws_it_from_train_or_from_val(course):
    default = load_data(DataConfig(dataset=str(course), image_size=16), seed=0)
    assert len(default.val) == 4 * PER_CLASS and len(default.train) + len(default.test) == 4 * PER_CLASS
    assert default.origins["test"].endswith("of the data set's train split (stratified, seeded)")
    from_val = load_data(DataConfig(dataset=str(course), image_size=16, test_from="val"), seed=0)
    assert len(from_val.train) == 4 * PER_CLASS and len(from_val.val) + len(from_val.test) == 4 * PER_CLASS
    assert from_val.test.source == from_val.val.source == "val"
    assert not set(from_val.test.indices.tolist()) & set(from_val.val.indices.tolist())
    assert np.bincount(from_val.test.labels.numpy()).tolist() == [2, 2, 2, 2]  # stratified: 20% of 10 per class
    assert from_val.origins == {"train": "the data set's train split",
                                "val": "80% of the data set's val split (stratified, seeded)",
                                "test": "20% of the data set's val split (stratified, seeded)"}


def test_test_from_val_needs_a_val_split_and_no_test_split(course):
    with pytest.raises(UsageError, match="--test-from val draws the test split from the val split"):
        load_data(DataConfig(dataset=str(shared_data("linnaeus5-4class-96")), test_from="val"), seed=0)
    shutil.rmtree(course / "val")
    with pytest.raises(UsageError, match="this one has train"):
        load_data(DataConfig(dataset=str(course), test_from="val"), seed=0)


def test_a_folder_of_class_folders_alone_gets_seeded_stratified_splits(course, tmp_path):
    flat = course / "train"
    first = load_data(DataConfig(dataset=str(flat), image_size=16), seed=3)
    again = load_data(DataConfig(dataset=str(flat), image_size=16), seed=3)
    assert [len(first.train), len(first.val), len(first.test)] == [26, 6, 8]  # 40: 20% test, then 20% val
    assert np.array_equal(first.test.indices, again.test.indices)
    assert np.bincount(first.test.labels.numpy()).tolist() == [2, 2, 2, 2]
    assert set(first.origins.values()) == {f"{share} of the data set's train split (stratified, seeded)"
                                           for share in ("65%", "15%", "20%")}


def test_run_folders_and_files_are_named_after_the_data_set_without_a_labels_suffix():
    from imgclf.data.loading import dataset_stem

    assert [dataset_stem(name) for name in ("mnist", "../shared/data/cifar10-jpg", "photos/", "labels.csv",
                                            "kaggle/train.TSV", "hub/train-00000-of-00001.parquet")] == [
        "mnist", "cifar10-jpg", "photos", "labels", "train", "train-00000-of-00001"]


# Hugging Face data sets ---------------------------------------------------------------------------------------


def _hf_split(split: str, *, per_class: int = PER_CLASS):
    """A ``datasets.Dataset`` of the Linnaeus files of ``split``: encoded bytes in an Image column and a
    ClassLabel, as the hub publishes image data sets."""
    datasets = pytest.importorskip("datasets")
    files = _linnaeus_files(split, per_class)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=sorted(files))})
    rows = [({"bytes": file.read_bytes(), "path": file.name}, k)
            for k, name in enumerate(sorted(files)) for file in files[name]]
    return datasets.Dataset.from_dict({"image": [image for image, _ in rows], "label": [k for _, k in rows]},
                                      features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A ``DatasetDict`` of train and test written by ``save_to_disk``."""
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": _hf_split("train"), "test": _hf_split("test")}).save_to_disk(tmp_path / "saved")
    return tmp_path / "saved"


def test_a_saved_hugging_face_data_set_gives_its_images_labels_and_splits(saved):
    data = load_data(DataConfig(dataset=str(saved), image_size=24), seed=0)
    assert data.spec.class_names == ("berry", "bird", "dog", "flower")  # the ClassLabel's names
    assert len(data.test) == 4 * PER_CLASS and len(data.train) + len(data.val) == 4 * PER_CLASS
    assert data.origins["test"] == "the data set's test split"
    files = [file for files in _linnaeus_files("test").values() for file in files]
    expected = np.stack([decode_image(file, channels=3, size=(24, 24)) for file in files])
    assert np.array_equal(data.test.uint8_images().numpy(), expected)  # the rows in order, decoded as files are
    assert data.test.labels.tolist() == [k for k in range(4) for _ in range(PER_CLASS)]


def test_hugging_face_parquet_files_train_to_a_report_with_a_broken_row_skipped(tmp_path):
    """The hub's Parquet layout (splits told by file names), text labels without a ClassLabel, a row whose
    bytes are not an image, and an unlabelled split, trained and reopened from the CLI."""
    datasets = pytest.importorskip("datasets")
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    names = ["berry", "bird", "dog", "flower"]
    for split, source in (("train", "train"), ("test", "test")):
        table = _hf_split(source)
        rows = {"img": [row["image"] for row in table.cast_column("image", datasets.Image(decode=False))],
                "species": [names[k] for k in table["label"]]}
        if split == "train":
            rows["img"][3] = {"bytes": b"not an image", "path": "broken.jpg"}
        datasets.Dataset.from_dict(rows, features=datasets.Features(
            {"img": datasets.Image(), "species": datasets.Value("string")})).to_parquet(
            hub / f"{split}-00000-of-00001.parquet")
    unlabelled = datasets.Dataset.from_dict({"img": [{"bytes": b"x", "path": None}], "species": [None]},
                                            features=datasets.Features({"img": datasets.Image(),
                                                                        "species": datasets.Value("string")}))
    unlabelled.to_parquet(hub / "validation-00000-of-00001.parquet")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(hub.parent), "--label-column", "species", "--image-size", "16",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["bad_files"] == 1 and "[train][3]" in (out / "bad_files.txt").read_text()
    assert metrics["data"]["test"] == 4 * PER_CLASS
    assert metrics["data"]["train"] + metrics["data"]["val"] == 4 * PER_CLASS - 1
    assert any("validation split" in note and "no labels" in note for note in metrics["data_notes"])
    assert main(["evaluate", str(out), "--quiet"]) == 0  # reopens from its config.yaml (the decoded cache)
    with pytest.raises(UsageError, match=r"cannot decode .*\[train\]\[3\]"):
        load_data(DataConfig(dataset=str(hub.parent), label_column="species", image_size=16, bad_files="error",
                             cache=False), seed=0)


def test_a_single_saved_dataset_or_parquet_files_without_split_names_are_all_training_data(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    one = _hf_split("train", per_class=5)
    one.save_to_disk(tmp_path / "one")
    (tmp_path / "pq" / "shards").mkdir(parents=True)
    one.select(range(10)).to_parquet(tmp_path / "pq" / "shards" / "part-0.parquet")
    one.select(range(10, 20)).to_parquet(tmp_path / "pq" / "shards" / "part-1.parquet")
    monkeypatch.chdir(tmp_path)  # relative paths, as typed
    for dataset in ("one", "pq", "pq/shards/part-0.parquet"):
        data = load_data(DataConfig(dataset=dataset, image_size=8, cache=False), seed=0)
        assert data.origins["test"] == "20% of the data set's train split (stratified, seeded)"
        assert len(data.train) + len(data.val) + len(data.test) == (10 if dataset.endswith(".parquet") else 20)


def test_data_check_of_a_hugging_face_data_set_finds_duplicates_across_splits(saved, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    leaky = tmp_path / "leaky"
    datasets.DatasetDict({"train": _hf_split("train"), "test": _hf_split("train", per_class=2)}).save_to_disk(leaky)
    assert main(["data", "check", str(leaky)]) == 1
    out = capsys.readouterr().out
    assert "8 group(s) of identical files appear in more than one split (leakage)" in out
    assert f"train:{leaky}[train][0] == test:{leaky}[test][0]" in out
    assert main(["data", "check", str(saved)]) == 0


@pytest.mark.parametrize(("damage", "flags", "message"), [
    (None, ["--label-column", "fine"], "has no column 'fine'; its columns: image, label"),
    (None, ["--image-column", "label"], "the image and the label are the same column"),
    (None, ["--path-column", "image"], "--path-column applies to a labels file, not to a Hugging Face data set"),
    (lambda saved: (saved / "train" / "state.json").write_text("{"), [], "cannot be loaded with load_from_disk"),
    (lambda saved: (saved / "dataset_dict.json").write_text('{"splits": ["test"]}'), [], "has no train split"),
])
def test_a_broken_hugging_face_data_set_is_one_clear_error(saved, capsys, damage, flags, message):
    if damage is not None:
        damage(saved)
    assert main(["data", "check", str(saved), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_a_hugging_face_data_set_without_the_datasets_package_names_the_extra(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UsageError, match=r"needs pip install 'imgclf\[hf\]'"):
        load_data(DataConfig(dataset=str(saved), cache=False), seed=0)


def test_a_parquet_file_of_unknown_content_is_one_clear_error(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="cannot be read"):
        load_data(DataConfig(dataset=str(tmp_path / "junk.parquet"), cache=False), seed=0)
