"""Common corruptions: every registered corruption keeps shape, dtype and range for grey and colour images of
any size and is deterministic with a seed; the operations written here for OpenCV's and SciPy's agree with
them; the evaluation's mean corruption error and mCE match hand computations; `imgclf corrupt` end to end."""

import json
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from imgclf.cli import main
from imgclf.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptionEntry,
    CorruptionEvaluation,
    against_baseline,
    common,
    corrupt,
    corruption_names,
    corruption_robustness,
    parse_corruptions,
    parse_severities,
)

SHAPES = [(3, 1, 28, 28), (3, 3, 32, 32), (2, 3, 20, 30)]


def _images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255


def test_the_fifteen_corruptions_of_the_benchmark_are_registered():
    assert len(corruption_names()) == 15
    assert [sum(spec.group == g for spec in CORRUPTIONS.values()) for g in ("noise", "blur", "weather", "digital")] \
        == [3, 4, 4, 4]


@pytest.mark.parametrize("name", corruption_names())
@pytest.mark.parametrize("shape", SHAPES, ids=["grey28", "colour32", "colour20x30"])
def test_every_corruption_keeps_shape_dtype_and_range_and_is_seeded(name, shape):
    images = _images(shape)
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out * 255, (out * 255).round()), "8-bit values, as the benchmark's files"
        assert torch.equal(out, corrupt(images, name, severity, seed=3)), "same seed, same images"
    assert not torch.equal(corrupt(images, name, 5, seed=3), images), "severity 5 changes the images"
    assert torch.equal(corrupt(images, name, 0, seed=3), images), "severity 0 is the identity"


@pytest.mark.parametrize("name", corruption_names())
def test_an_image_is_corrupted_the_same_way_in_any_batch_and_seeds_differ(name):
    images = _images((5, 3, 32, 32))
    whole = corrupt(images, name, 3, seed=1, indices=[10, 11, 12, 13, 14])
    alone = corrupt(images[2:3], name, 3, seed=1, indices=[12])
    assert torch.equal(whole[2:3], alone)
    random = name not in ("defocus-blur", "zoom-blur", "brightness", "contrast", "pixelate", "jpeg")
    assert torch.equal(whole, corrupt(images, name, 3, seed=2, indices=[10, 11, 12, 13, 14])) != random


def test_severity_raises_the_damage_of_the_monotone_corruptions():
    images = _images((8, 3, 32, 32))
    for name in ("gaussian-noise", "shot-noise", "impulse-noise", "defocus-blur", "zoom-blur", "fog",
                 "brightness", "contrast", "pixelate", "jpeg"):
        damage = [float((corrupt(images, name, s) - images).abs().mean()) for s in SEVERITIES]
        assert damage == sorted(damage), (name, damage)


def test_contrast_and_brightness_match_their_definitions():
    images = _images((2, 3, 32, 32))
    out = corrupt(images, "contrast", 2)  # factor 0.5 around each channel's mean
    means = images.mean(dim=(2, 3), keepdim=True).double()
    expected = torch.floor(((images.double() - means) * 0.5 + means).clamp(0, 1) * 255 + 1e-6) / 255
    assert torch.allclose(out.double(), expected, atol=1e-6)
    grey = _images((2, 1, 32, 32))
    brighter = corrupt(grey, "brightness", 5)  # a grey level + 0.3, as HSV's value of a grey pixel
    assert torch.allclose(brighter, torch.floor((grey.double() + 0.3).clamp(0, 1) * 255 + 1e-6).float() / 255)
    as_colour = corrupt(grey.repeat(1, 3, 1, 1), "brightness", 5)
    assert torch.allclose(as_colour, brighter.repeat(1, 3, 1, 1), atol=1 / 255 + 1e-6)


def test_jpeg_is_pillows_encoder_at_the_benchmarks_quality():
    import io

    from PIL import Image

    image = _images((1, 3, 32, 32))
    pixels = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=40)  # severity 5
    expected = np.asarray(Image.open(buffer), dtype=np.float32) / 255
    assert np.allclose(corrupt(image, "jpeg", 5)[0].permute(1, 2, 0).numpy(), expected)


def test_the_zoom_matches_scipys():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = rng.random((32, 30, 3))
    for factor in np.arange(1, 1.26, 0.01):
        h, w = image.shape[:2]
        ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
        top, left = (h - ch) // 2, (w - cw) // 2
        zoomed = ndimage.zoom(image[top:top + ch, left:left + cw], (factor, factor, 1), order=1)
        trim_top, trim_left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        assert np.allclose(common._clipped_zoom(image[None], factor)[0],
                           zoomed[trim_top:trim_top + h, trim_left:trim_left + w], atol=1e-9)


def test_the_affine_warp_and_the_disk_blur_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    image = rng.random((32, 32, 3)).astype(np.float32)
    source = np.float32([[26, 26], [26, 6], [6, 6]])
    target = source + rng.uniform(-2.5, 2.5, size=source.shape).astype(np.float32)
    theirs = cv2.warpAffine(image, cv2.getAffineTransform(source, target), (32, 32), borderMode=cv2.BORDER_REFLECT_101)
    ours = common._affine_warp(image.astype(np.float64), source.astype(np.float64), target.astype(np.float64))
    inside = (slice(3, -3), slice(3, -3))  # (OpenCV's fixed-point bilinear weights differ at 1/32 steps)
    assert np.abs(ours[inside] - theirs[inside]).max() < 0.02
    for radius, alias_blur in [(0.5, 0.6), (1.5, 0.1), (9, 0.3)]:
        half = max(8, int(np.ceil(radius)))
        x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
        disk = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.float32)
        disk /= disk.sum()
        size = 3 if radius <= 8 else 5
        expected = cv2.GaussianBlur(disk, ksize=(size, size), sigmaX=alias_blur)
        assert np.allclose(common._disk(radius, alias_blur), expected, atol=1e-6)
        plane = image[..., 0].astype(np.float64)  # applied as the benchmark applies it: filter2D, reflect 101
        assert np.allclose(ndimage.correlate(plane, common._disk(radius, alias_blur), mode="mirror"),
                           cv2.filter2D(image[..., 0], -1, expected), atol=1e-5)


def test_glass_blurs_one_gather_equals_the_pixel_by_pixel_order_for_one_pixel_neighbourhoods():
    rng = np.random.default_rng(2)
    pixels = rng.random((32, 32, 3))
    ys, xs = np.meshgrid(np.arange(31, 1, -1), np.arange(31, 1, -1), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    dx, dy = rng.integers(-1, 1, size=(2, len(ys)))
    sources = (ys + dy, xs + dx)
    gathered = common._take_neighbours(pixels.copy(), (ys, xs), sources, in_order=False)
    in_order = common._take_neighbours(pixels.copy(), (ys, xs), sources, in_order=True)
    assert np.array_equal(gathered, in_order)
    assert not np.array_equal(gathered, pixels)


def test_the_motion_blur_is_a_line_of_gaussian_weights_along_each_images_angle():
    images = np.zeros((2, 32, 32, 1))
    images[:, 16, 16] = 1  # an impulse spreads along the angle, on one side, weights summing to one
    blurred = common._motion_blur(images, radius=3, sigma=2, angles=np.array([0.0, 90.0]))
    weights = np.exp(-np.arange(7) ** 2 / 8)
    assert np.allclose(blurred[0, 16, 10:17, 0], (weights / weights.sum())[::-1])
    assert blurred[0].sum() == pytest.approx(1) and blurred[0, :, 17:].sum() == 0 and blurred[0, 15].sum() == 0
    assert blurred[1, 10:17, 16, 0].sum() == pytest.approx(1)


def test_frost_needs_its_photographs(monkeypatch):
    import importlib.util

    common._frost_photographs.cache_clear()
    common._frost_texture.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install imagecorruptions"):
        corrupt(_images((1, 3, 32, 32)), "frost", 1)
    monkeypatch.undo()
    common._frost_photographs.cache_clear()
    assert corrupt(_images((1, 3, 32, 32)), "frost", 1).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: corrupt(torch.rand(1, 3, 32, 32), "blurr", 1), "unknown corruption 'blurr'"),
    (lambda: corrupt(torch.rand(1, 3, 32, 32), "fog", 6), "severity must be 0 to 5"),
    (lambda: corrupt(torch.rand(1, 2, 32, 32), "fog", 1), "C 1 or 3"),
    (lambda: corrupt(torch.rand(1, 3, 4, 32), "fog", 1), "at least 8x8"),
    (lambda: parse_severities("0:3"), "integers from 1 to 5"),
    (lambda: parse_severities("a"), "integers from 1 to 5"),
    (lambda: parse_corruptions("noise,smoke"), "unknown corruption 'smoke'"),
])
def test_bad_arguments_name_the_valid_choices(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parsing_groups_and_severities():
    assert parse_corruptions("fog,noise") == ("gaussian-noise", "shot-noise", "impulse-noise", "fog")
    assert parse_corruptions("all") == corruption_names()
    assert parse_severities("1:3,5") == (1, 2, 3, 5) and parse_severities([5, 1]) == (1, 5)


class _Threshold(torch.nn.Module):
    """Class 1 where an image's mean is above 0.5: brightness pushes every image there."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-(m - 0.5) * self.scale, (m - 0.5) * self.scale], dim=1)


def test_the_evaluation_counts_each_corruption_and_severity():
    images = torch.cat([torch.full((6, 1, 16, 16), 0.3), torch.full((6, 1, 16, 16), 0.7)])
    labels = torch.tensor([0] * 6 + [1] * 6)
    model = _Threshold().eval()
    result = corruption_robustness(model, images, labels, corruptions=["brightness", "contrast"],
                                   severities=[1, 5], batch_size=5)
    assert result.clean_accuracy == 1 and result.n == 12
    assert result.accuracy("contrast", 5) == 1  # flat images keep their mean
    assert result.accuracy("brightness", 1) == 1 and result.accuracy("brightness", 5) == 0.5  # 0.3 + 0.3 > 0.5
    assert result.errors == {"brightness": 0.25, "contrast": 0.0} and result.mean_error == 0.125
    assert [(e.corruption, e.severity) for e in result.entries] == [
        ("brightness", 1), ("brightness", 5), ("contrast", 1), ("contrast", 5)]


def test_mce_and_relative_mce_match_a_hand_computation():
    def evaluation(clean, accuracies):
        entries = [CorruptionEntry(c, s, a, 0.0, 100) for (c, s), a in accuracies.items()]
        return CorruptionEvaluation({}, 100, clean, entries, {}, 0.0)

    ours = evaluation(0.9, {("fog", 1): 0.8, ("fog", 2): 0.6, ("snow", 1): 0.9, ("snow", 2): 0.7})
    base = evaluation(0.8, {("fog", 1): 0.6, ("fog", 2): 0.4, ("snow", 1): 0.7, ("snow", 2): 0.5})
    result = against_baseline(ours, base, name="runs/base")
    # fog: errors 0.2 + 0.4 against 0.4 + 0.6 -> 0.6; snow: 0.1 + 0.3 against 0.3 + 0.5 -> 0.5
    assert result.corruption_errors == pytest.approx({"fog": 0.6, "snow": 0.5})
    assert result.mce == pytest.approx(0.55)
    # relative: fog (0.6 - 2 * 0.1) / (1.0 - 2 * 0.2) = 2/3; snow (0.4 - 0.2) / (0.8 - 0.4) = 1/2
    assert result.relative_mce == pytest.approx((2 / 3 + 0.5) / 2)
    with pytest.raises(ValueError, match="no result for snow at severity 2"):
        against_baseline(ours, evaluation(0.8, {("fog", 1): 0.6, ("fog", 2): 0.4, ("snow", 1): 0.7}), name="b")


def test_imgclf_corrupt_end_to_end(tmp_path, capsys):
    run, base = tmp_path / "run", tmp_path / "base"
    for out, epochs in ((base, "1"), (run, "2")):
        assert main(["train", "--model", "mlp", "--epochs", epochs, "--out", str(out), "--quiet"]) == 0
    common_flags = ["--corruptions", "noise,contrast", "--severities", "1,5", "--corruption-examples", "60"]
    assert main(["corrupt", str(base), *common_flags, "--quiet"]) == 0
    assert main(["corrupt", str(run), *common_flags, "--baseline", str(base), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["corruptions"]
    assert metrics["settings"]["corruptions"] == ["gaussian-noise", "shot-noise", "impulse-noise", "contrast"]
    assert metrics["settings"]["severities"] == [1, 5] and metrics["n"] == 60
    assert len(metrics["entries"]) == 8 and metrics["baseline"] == str(base) and metrics["mce"] > 0
    assert metrics["mean_error"] == pytest.approx(np.mean(list(metrics["errors"].values())))
    samples = np.load(run / "corruptions.npz")
    assert samples["images"].shape == (4, 3, 1, 8, 8) and samples["predictions"].shape == (4, 3)
    page = (run / "report.html").read_text()
    assert "Robustness to common corruptions" in page and "relative mCE" in page and "Impulse noise" in page
    assert (run / "figures" / "corruptions.png").is_file()
    capsys.readouterr()
    assert main(["corrupt", str(run), "--baseline", str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["corrupt", str(run), "--corruptions", "smoke"]) == 2
    assert "unknown corruption" in capsys.readouterr().err
    assert main(["corrupt", str(run), "--severities", "0:9"]) == 2
    assert "--severities must be integers from 1 to 5, as 1:5, 3 or 1,3,5 (or a list), got '0:9'" in \
        capsys.readouterr().err
    assert main(["corrupt", str(run), "--severities", "1:3", "--corruption-examples", "60",
                 "--baseline", str(base)]) == 2
    assert "no result for gaussian-noise at severity 2" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--seed", "1", "--out", str(other), "--quiet"]) == 0
    assert main(["corrupt", str(other), *common_flags, "--baseline", str(base)]) == 2
    assert "not the same images" in capsys.readouterr().err


def test_the_run_stage_follows_its_setting(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", "mlp", "--epochs", "1", "--attack", "fgsm", "--eps", "0,0.1", "--n-examples", "20",
                 "--out", str(out)]) == 0
    assert "common corruptions skipped: the images are 8x8, under the 16x16 auto runs it on" in \
        capsys.readouterr().out
    assert "corruptions" not in json.loads((out / "metrics.json").read_text())
    on = tmp_path / "on"
    assert main(["run", "--model", "mlp", "--epochs", "1", "--attack", "fgsm", "--eps", "0,0.1", "--n-examples", "20",
                 "--corruptions", "blur", "--severities", "3", "--corruption-examples", "30",  # asked for: it runs
                 "--out", str(on), "--quiet"]) == 0
    assert json.loads((on / "metrics.json").read_text())["corruptions"]["n"] == 30


def test_the_auto_rule_is_the_work_alone():
    from imgclf.corruptions.registry import auto_skips

    assert auto_skips(images=100, shape=(1, 28, 28), corruptions=15, severities=5) is None  # MNIST: 6 million
    assert auto_skips(images=100, shape=(3, 64, 64), corruptions=15, severities=5) is None  # 92 million
    assert "under the 16x16" in auto_skips(images=100, shape=(1, 8, 8), corruptions=15, severities=5)
    assert "207 million values" in auto_skips(images=100, shape=(3, 96, 96), corruptions=15, severities=5)


def test_the_same_command_runs_the_same_stages_on_a_busy_machine(tiny_folder, tmp_path, monkeypatch):
    """``imgclf run`` twice on the same data, the second time with a clock that makes every measured second
    ten times longer: the same stages, corruptions included, both times."""
    import time

    argv = ["run", "--dataset", str(tiny_folder), "--image-size", "16", "--model", "mlp", "--epochs", "1",
            "--attack", "fgsm", "--eps", "0,8/255", "--n-examples", "9", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "calm")]) == 0
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: 10 * real())
    assert main([*argv, "--out", str(tmp_path / "busy")]) == 0
    calm, busy = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("calm", "busy"))
    assert set(calm) == set(busy) and "corruptions" in calm
    assert calm["corruptions"]["entries"] == busy["corruptions"]["entries"]


def test_the_registry_loads_without_torch():
    import subprocess

    code = "import sys, imgclf.corruptions as c; c.corruption_names(); c.parse_severities('1:5'); " \
           "print('torch' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
