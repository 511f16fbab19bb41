import numpy as np
import pytest
import torch

from imgclf.config import DataConfig
from imgclf.data import DATASETS, iterate_batches, load_data, split_indices
from imgclf.data.augment import colour_jitter, random_crop, random_flip
from imgclf.data.folder import decode_image
from imgclf.errors import DataNotFoundError, UsageError


def test_digits_splits_are_disjoint_stratified_seeded_and_in_pixel_space():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    sizes = len(data.train), len(data.val), len(data.test)
    assert sum(sizes) == 1797 and data.test.source == data.val.source == "train"
    positions = [set(split.indices) for split in (data.train, data.val, data.test)]
    assert not (positions[0] & positions[1] or positions[0] & positions[2] or positions[1] & positions[2])
    assert abs(len(data.test) - 0.2 * 1797) <= 10  # 20% test, then 20% of the rest for val
    for split in (data.train, data.test):  # stratified: every class present in the same share
        share = np.bincount(split.labels.numpy(), minlength=10) / len(split)
        assert np.all(np.abs(share - 0.1) < 0.02)
    images = data.train.float_images()
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 8, 8)
    assert images.min() >= 0 and images.max() == 1
    assert data.spec.class_names == tuple(str(k) for k in range(10))
    again = load_data(DataConfig(dataset="digits"), seed=0)
    assert np.array_equal(again.val.indices, data.val.indices)
    other = load_data(DataConfig(dataset="digits"), seed=1)
    assert not np.array_equal(other.val.indices, data.val.indices)


def test_saved_split_indices_reproduce_the_same_examples():
    data = load_data(DataConfig(dataset="digits", train_examples=300), seed=3)
    assert len(data.train) == 300
    saved = {name: (getattr(data, name).source, getattr(data, name).indices) for name in ("train", "val", "test")}
    reloaded = load_data(DataConfig(dataset="digits"), seed=99, indices=saved)
    assert torch.equal(reloaded.test.images, data.test.images)
    assert torch.equal(reloaded.train.labels, data.train.labels)


def test_split_indices_use_existing_test_pool_and_hold_out_validation():
    labels = {"train": np.repeat(np.arange(4), 25), "test": np.arange(8) % 4}
    result = split_indices(labels, val_fraction=0.2, test_fraction=0.2, train_examples=None, seed=0)
    assert result["test"][0] == "test" and len(result["test"][1]) == 8
    assert len(result["val"][1]) == 20 and len(result["train"][1]) == 80


def test_image_folder_ignores_clutter_reports_broken_files_and_resizes(tiny_folder):
    data = load_data(DataConfig(dataset=str(tiny_folder), image_size=16), seed=0)
    assert data.spec.class_names == ("circle", "square", "stripe")
    assert data.spec.input_shape == (3, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 36  # every good image used
    assert [path.endswith("broken.png") for path, _ in data.bad_files] == [True]
    assert any("skipped 1 file" in note for note in data.notes)


def test_image_folder_with_split_folders(tmp_path, tiny_folder):
    root = tmp_path / "split"
    for split, count in (("train", 8), ("test", 4)):
        for cls in ("circle", "stripe"):
            (root / split / cls).mkdir(parents=True)
            for path in sorted((tiny_folder / cls).glob("*.png"))[:count]:
                (root / split / cls / path.name).write_bytes(path.read_bytes())
    data = load_data(DataConfig(dataset=str(root)), seed=0)
    assert data.test.source == "test" and len(data.test) == 8
    assert data.spec.image_size == (20, 24)  # the images' own size when none is asked for
    (root / "test" / "zebra").mkdir()
    (root / "test" / "zebra" / "z.png").write_bytes((tiny_folder / "circle" / "1.png").read_bytes())
    with pytest.raises(UsageError, match="classes that train does not: zebra"):
        load_data(DataConfig(dataset=str(root)), seed=0)


def test_bad_folders_get_one_clear_error(tmp_path, tiny_folder):
    with pytest.raises(UsageError, match="does not exist"):
        load_data(DataConfig(dataset=str(tmp_path / "nowhere")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        load_data(DataConfig(dataset=str(tmp_path / "empty")), seed=0)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    (one / "only" / "a.png").write_bytes((tiny_folder / "circle" / "1.png").read_bytes())
    with pytest.raises(UsageError, match="only one class"):
        load_data(DataConfig(dataset=str(one)), seed=0)
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'; valid choices: .*mnist"):
        load_data(DataConfig(dataset="imagenet"), seed=0)


def test_missing_builtin_files_say_which_files_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False), seed=0)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "by hand" in message
    missing = DATASETS["cifar10"].files(tmp_path)
    assert missing[0].parent == tmp_path / "cifar-10-batches-py"


def test_decode_flattens_transparency_onto_white_and_converts_modes(tmp_path):
    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "t.png")
    assert decode_image(tmp_path / "t.png", channels=3, size=(4, 4)).min() == 255
    Image.new("CMYK", (6, 6), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert decode_image(tmp_path / "c.jpg", channels=1, size=(3, 3)).shape == (1, 3, 3)


def test_batches_cover_the_split_once_in_pixel_space():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for images, labels in iterate_batches(data.val, batch_size=64, device=torch.device("cpu"),
                                          shuffle=True, generator=gen, augment="flip-crop"):
        assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
        seen.append(labels)
    assert torch.equal(torch.cat(seen).sort().values, data.val.labels.sort().values)


def test_augmentations_keep_shape_and_range_and_do_what_they_say():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 10, 12)
    flipped = random_flip(images, gen)
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(3)).flatten(1).all(1)
    assert torch.all(same | mirrored) and 10 < int(mirrored.sum()) < 54
    cropped = random_crop(images, gen, padding=2)
    assert cropped.shape == images.shape
    for i in range(8):  # every crop is a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        windows = [padded[:, y:y + 10, x:x + 12] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped[i], w) for w in windows)
    jittered = colour_jitter(images, gen)
    assert jittered.shape == images.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, images)


@pytest.mark.parametrize("n", [1, 3, 6, 7, 50, 99])
def test_subsets_have_exactly_the_size_asked_for(n):
    from imgclf.data import stratified_subset

    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    chosen = stratified_subset(labels, n, seed=0)
    assert len(chosen) == n == len(set(chosen.tolist()))
    if n == 50:  # stratified where possible: the class shares are kept
        assert np.bincount(labels[chosen]).tolist() == [25, 15, 10]


def test_the_declared_files_of_the_builtin_sets_are_torchvisions():
    """``imgclf datasets`` checks file presence without importing torchvision; the names it
    looks for must be those torchvision's readers open."""
    import os

    import torchvision.datasets as tvd

    from imgclf.data.builtin import CIFAR_FILES, IDX_FILES, SVHN_FILES

    for name in ("MNIST", "FashionMNIST", "KMNIST"):
        urls = [url for url, _md5 in getattr(tvd, name).resources]
        assert tuple(os.path.splitext(os.path.basename(url))[0] for url in urls) == IDX_FILES, name
    for name, (folder, files) in CIFAR_FILES.items():
        cls = getattr(tvd, name)
        assert cls.base_folder == folder
        assert tuple(n for n, _md5 in cls.train_list + cls.test_list) + (cls.meta["filename"],) == files
    assert tuple(tvd.SVHN.split_list[split][1] for split in ("train", "test")) == SVHN_FILES


def test_augmentation_settings_parse_with_defaults_and_refuse_what_is_not_there():
    from imgclf.data.augment import parse_augment, per_image

    assert parse_augment("none") == []
    assert parse_augment("flip-crop+randaugment:m=5+random-erasing") == [
        ("flip-crop", {}), ("randaugment", {"n": 2, "m": 5}), ("random-erasing", {"p": 0.5})]
    assert per_image("flip-crop+trivialaugment") == ["trivialaugment"]
    for bad, message in (("randaugment:k=2", "unknown option 'k=2'; its options: n=2, m=9"),
                         ("randaugment:n=two", "n must be int, got 'two'"),
                         ("random-erasing:p=1.5", r"p must be in \[0.0, 1.0\], got 1.5"),
                         ("flip-crop:x=1", "takes no options"),
                         ("trivialaugment+trivialaugment", "names a part twice")):
        with pytest.raises(UsageError, match=message):
            parse_augment(bad)


def test_torchvision_policies_draw_for_each_image_reproducibly_in_range():
    from imgclf.data.augment import build_augmentation

    images = torch.rand(1, 3, 16, 16).expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    gen = torch.Generator().manual_seed(0)
    augment = build_augmentation("randaugment:n=2,m=15")
    torch.manual_seed(0)
    first = augment(images, gen)
    torch.manual_seed(0)
    assert torch.equal(first, augment(images, gen))  # seeded: the same batch again
    assert first.shape == images.shape and first.dtype == torch.float32 and 0 <= first.min() <= first.max() <= 1
    assert len({tuple(image.flatten().tolist()) for image in first}) > 8  # each image its own operations
    erased = build_augmentation("random-erasing:p=1")(images, gen)
    zeros = erased == 0
    assert zeros.flatten(1).any(1).all() and len({tuple(z.flatten().tolist()) for z in zeros}) > 8
    resized = build_augmentation("flip-crop+random-resized-crop:scale=0.2")(images, gen)
    assert resized.shape == images.shape


def test_gaussian_noise_adds_unclamped_noise_of_the_given_sigma_to_every_pixel():
    from imgclf.data.augment import build_augmentation, parse_augment

    assert parse_augment("flip-crop+gaussian-noise:sigma=0.5") == [("flip-crop", {}),
                                                                   ("gaussian-noise", {"sigma": 0.5})]
    assert parse_augment("gaussian-noise") == [("gaussian-noise", {"sigma": 0.25})]
    with pytest.raises(UsageError, match=r"sigma must be in \[0.001, 10.0\], got 0.0"):
        parse_augment("gaussian-noise:sigma=0")
    images = torch.full((64, 1, 28, 28), 0.5)
    noisy = build_augmentation("gaussian-noise:sigma=0.5")(images, torch.Generator().manual_seed(0))
    noise = noisy - images
    assert noise.std().item() == pytest.approx(0.5, rel=0.02) and abs(noise.mean().item()) < 0.01
    assert noisy.min() < 0 and noisy.max() > 1  # not clamped: the base classifier sees what certify feeds it
    again = build_augmentation("gaussian-noise:sigma=0.5")(images, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_a_per_image_policy_trains_and_says_it_works_image_by_image(tiny_folder, tmp_path, capsys):
    from imgclf.cli import main

    assert main(["train", "--dataset", str(tiny_folder), "--image-size", "16", "--epochs", "1",
                 "--augment", "flip-crop+trivialaugment", "--out", str(tmp_path / "run")]) == 0
    assert "note: --augment trivialaugment runs image by image" in capsys.readouterr().out
