"""Image folders that survive real-world files; the decoded-image cache; the disk path."""

import json
import os

import numpy as np
import pytest
import torch

from imgclf.cli import main
from imgclf.config import DataConfig
from imgclf.data import folder as folder_module
from imgclf.data import iterate_batches, load_data
from imgclf.data.check import check_images
from imgclf.data.folder import decode_image, scan_folder
from imgclf.errors import UsageError
from messy import make_messy_folder


@pytest.fixture
def messy(tmp_path):
    info = make_messy_folder(tmp_path / "messy")
    return tmp_path / "messy", info


def test_every_mode_and_format_decodes_and_every_bad_file_is_listed(messy):
    root, info = messy
    data = load_data(DataConfig(dataset=str(root), image_size=16), seed=0)
    assert len(data.train) + len(data.val) + len(data.test) == info["good"]  # every good file used
    assert sorted(os.path.basename(path) for path, _ in data.bad_files) == info["bad"]
    assert data.spec.channels == 3 and data.spec.class_names == ("blue", "green", "red")
    # Class colour survives every mode conversion: the mean of the class's channel is highest.
    for split in (data.train, data.test):
        images = split.float_images()
        for k, channel in ((0, 2), (1, 1), (2, 0)):
            chosen = images[split.labels == k].mean(dim=(0, 2, 3))
            grey_heavy = chosen.max() - chosen.min() < 0.05  # 1-bit, grey and 16-bit modes lose colour
            assert grey_heavy or chosen.argmax() == channel


def test_exif_orientation_is_applied(messy):
    _, info = messy
    upright = decode_image(info["rotated"], channels=3, size=(30, 10))  # (H, W) after rotation
    assert upright[0, :10].mean() > 200 and upright[2, :10].mean() < 60  # red on top
    assert upright[2, 20:].mean() > 200  # blue at the bottom


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    decoded = decode_image(tmp_path / "ramp.png", channels=1, size=(4, 4))
    assert decoded.min() == 0 and decoded.max() == 255 and len(np.unique(decoded)) == 16


def test_bad_files_error_policy_names_the_first_bad_file(messy):
    root, _ = messy
    with pytest.raises(UsageError, match=r"cannot decode '.*(fake|truncated|zero)\..*'.*--bad-files skip"):
        load_data(DataConfig(dataset=str(root), image_size=16, bad_files="error", cache=False), seed=0)


def test_the_messy_folder_trains_to_a_report(messy, tmp_path):
    root, info = messy
    out = tmp_path / "run"
    assert main(["run", "--dataset", str(root), "--image-size", "16", "--model", "mlp", "--epochs", "1",
                 "--attack-examples", "20", "--out", str(out), "--quiet"]) == 0
    listed = (out / "bad_files.txt").read_text().splitlines()
    assert sorted(os.path.basename(line.split("\t")[0]) for line in listed) == info["bad"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["data"][k] for k in ("train", "val", "test")) == info["good"]
    assert metrics["data"]["bad_files"] == 3
    assert (out / "report.html").is_file()
    assert "skipped 3 file(s)" in (out / "log.txt").read_text()


def test_the_cache_skips_decoding_and_notices_a_changed_file(messy, monkeypatch):
    root, _ = messy
    config = DataConfig(dataset=str(root), image_size=12)
    first = load_data(config, seed=0)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this folder")

    monkeypatch.setattr(folder_module, "decode_image", refuse)
    second = load_data(config, seed=0)
    assert torch.equal(first.train.images, second.train.images)
    assert second.bad_files == first.bad_files and any("skipped 3" in n for n in second.notes)
    changed = root / "test" / "red" / "00-1.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(config, seed=0)


def test_disk_path_yields_exactly_the_in_memory_batches(messy):
    root, _ = messy
    in_memory = load_data(DataConfig(dataset=str(root), image_size=16), seed=0)
    on_disk = load_data(DataConfig(dataset=str(root), image_size=16, memory_limit_mb=0), seed=0)
    assert in_memory.train.in_memory and not on_disk.train.in_memory
    assert any("memory_limit_mb" in note for note in on_disk.notes)
    assert on_disk.spec == in_memory.spec
    for augment in ("flip-crop", "flip-jitter", "seed000"):
        batches = [
            list(iterate_batches(data.train, batch_size=16, device=torch.device("cpu"), shuffle=True,
                                 generator=torch.Generator().manual_seed(3), augment=augment))
            for data in (in_memory, on_disk)
        ]
        assert len(batches[0]) == len(batches[1]) > 1
        for (x1, y1), (x2, y2) in zip(*batches, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_balanced_sampling_evens_out_the_classes():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    keep = np.flatnonzero((data.train.labels.numpy() != 0) | (np.arange(len(data.train)) % 10 == 0))
    skewed = data.train.subset(keep)  # class 0 is now 10x rarer
    counts = torch.bincount(skewed.labels, minlength=10).double()
    weights = (1.0 / counts)[skewed.labels]
    labels = torch.cat([y for _, y in iterate_batches(skewed, batch_size=64, device=torch.device("cpu"),
                                                       generator=torch.Generator().manual_seed(0),
                                                       sample_weights=weights)])
    share = torch.bincount(labels, minlength=10).double() / len(labels)
    assert counts[0] / counts.sum() < 0.02 and share[0] > 0.06


def test_data_check_reports_bad_files_and_duplicates(messy, capsys):
    root, info = messy
    clone = root / "test" / "red" / "copy-of-train.png"
    clone.write_bytes((root / "train" / "red" / "00-1.png").read_bytes())
    report = check_images(scan_folder(root))
    assert sorted(os.path.basename(p) for p, _ in report.bad_files) == info["bad"]
    assert any({s for s, _ in group} == {"train", "test"} for group in report.duplicates)
    assert report.counts["train"][2] == len(os.listdir(root / "train" / "red")) - 5  # less txt, hidden, 3 bad
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "more than one split (leakage)" in out and "cannot be decoded" in out and "I;16" in out


def test_data_check_passes_a_clean_folder(tiny_folder, capsys):
    (tiny_folder / "square" / "broken.png").unlink()
    assert main(["data", "check", str(tiny_folder)]) == 0
    assert "no problems found" in capsys.readouterr().out


def _write_idx(path, array):
    """An uncompressed IDX file as in LeCun's MNIST distribution."""
    dims = array.shape
    magic = (0x08 << 8) | len(dims)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_kmnist_reads_torchvisions_layout(tmp_path):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = load_data(DataConfig(dataset="kmnist", data_dir=str(tmp_path), download=False), seed=0)
    assert data.spec.class_names[:3] == ("o", "ki", "su")
    assert (len(data.train) + len(data.val), len(data.test)) == (50, 20)


def test_decompression_bombs_are_refused_with_a_reason(tiny_folder, monkeypatch):
    from pathlib import Path

    from PIL import Image

    (tiny_folder / "square" / "broken.png").unlink()
    Image.new("RGB", (40, 40), (200, 0, 0)).save(tiny_folder / "circle" / "huge.png")  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the other images have 24x20 = 480 pixels
    data = load_data(DataConfig(dataset=str(tiny_folder), image_size=8, cache=False), seed=0)
    assert [(Path(p).name, "decompression bomb" in r) for p, r in data.bad_files] == [("huge.png", True)]
    assert len(data.train) + len(data.val) + len(data.test) == 36
    report = check_images(scan_folder(tiny_folder))
    assert [Path(p).name for p, r in report.bad_files if "decompression bomb" in r] == ["huge.png"]


def test_the_whole_pipeline_runs_on_the_disk_path(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--dataset", str(tiny_folder), "--image-size", "16", "--model", "cnn", "--epochs", "2",
                 "--memory-limit", "0", "--attack-examples", "6", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("memory_limit_mb" in note for note in metrics["data_notes"])
    assert metrics["clean"]["n"] == metrics["data"]["test"] and metrics["evaluations"][-1]["attack"]["n"] == 6
    assert (out / "report.html").is_file()
