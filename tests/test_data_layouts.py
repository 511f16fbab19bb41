"""Data the way people keep it: a labels file (CSV or TSV) beside the images, a folder with train/ and
val/ but no test/, a folder of class folders alone. Built in each test from the shared Linnaeus 5 images."""

from __future__ import annotations

import json
import shutil
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
    from imgclf.data.labels_file import dataset_stem

    assert [dataset_stem(name) for name in ("mnist", "../shared/data/cifar10-jpg", "photos/", "labels.csv",
                                            "kaggle/train.TSV")] == ["mnist", "cifar10-jpg", "photos", "labels",
                                                                     "train"]
