"""Hostile input, generated: every command ends with exit status 0, 1 or 2, says what went wrong in
one line for 1 and 2, never shows a traceback, and changes no file it did not create.

Three generators (Hypothesis), each with a fixed example budget and seed so CI is repeatable:

* random corruptions (truncation, flipped bytes, random bytes, values replaced or retyped) of every
  file of a real run folder, then a real ``evaluate``, ``attack``, ``report``, ``predict`` or
  ``train --resume`` on it;
* random flags and values for every subcommand, up to the end of validation (the training,
  attack and search that would follow are replaced by a stand-in, so that a valid ``--epochs
  100000`` does not run);
* random YAML documents as ``--config`` files and sweep files.

``IMGCLF_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` runs each generator longer, by hand.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from imgclf import pipeline, record
from imgclf.cli import build_parser, main

EXAMPLES = int(os.environ.get("IMGCLF_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``imgclf argv`` in this process: the exit status and stderr. An exception that escapes
    ``main`` fails the test (it would be a traceback for the user)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            status = exit_.code if isinstance(exit_.code, int) else 2
    return status, err.getvalue()


def assert_clean_ending(status: int, err: str, argv: list[str]) -> None:
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err, (argv, err)
    if status in (1, 2):
        lines = [line for line in err.strip().splitlines() if line.strip()]
        # argparse prints its usage above its one error line; imgclf's own errors are one line
        errors = [line for line in lines if line.startswith(("imgclf: error", "imgclf ", "imgclf:"))]
        assert errors, (argv, err)
        assert all(len(line) < 2000 for line in errors), (argv, err)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run: digits, an MLP, 2 epochs, attacked on 20 images (with a training state to resume)."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["run", "--model", "mlp", "--epochs", "2", "--attack", "fgsm", "--eps", "0,0.1",
                 "--n-examples", "20", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def image_file(trained_run) -> Path:
    from PIL import Image

    path = trained_run.parent / "digit.png"
    Image.new("L", (8, 8), 128).save(path)
    return path


# -- corrupted run folders ----------------------------------------------------------------------

FILES = (record.MODEL_INFO, record.WEIGHTS, record.TRAIN_STATE, record.SPLITS, record.METRICS, record.HISTORY,
         record.CONFIG)
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=4), st.just({}))


@st.composite
def corruptions(draw):
    """``(file name, how, function bytes -> bytes)``."""
    name = draw(st.sampled_from(FILES))
    how = draw(st.sampled_from(["truncate", "flip", "random", "empty", "retype"]))
    cut = draw(st.floats(0, 1))
    flips = draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))
    noise = draw(st.binary(min_size=1, max_size=300))
    path_choice = draw(st.integers(0, 10**6))
    replacement = draw(JSON_VALUES)

    def apply(data: bytes) -> bytes:
        if how == "truncate":
            return data[: int(cut * len(data))]
        if how == "flip":
            out = bytearray(data)
            for where, bits in flips:
                out[min(int(where * len(out)), len(out) - 1)] ^= bits
            return bytes(out)
        if how == "random":
            return noise
        if how == "empty":
            return b""
        # retype: one value of a JSON/YAML file replaced by another of any type
        if name.endswith(".json") or name.endswith(".yaml"):
            loader = json.loads if name.endswith(".json") else yaml.safe_load
            tree = loader(data.decode())
            slots = list(_slots(tree))
            if slots:
                parent, key = slots[path_choice % len(slots)]
                parent[key] = replacement
            return (json.dumps(tree) if name.endswith(".json") else yaml.safe_dump(tree)).encode()
        return data[: len(data) // 2]

    return name, how, apply


def _slots(tree):
    """Every (container, key) of a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield tree, key
            yield from _slots(value)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield tree, index
            yield from _slots(value)


COMMANDS = {
    # evaluate and attack rewrite the report after their evaluation
    "evaluate": (["evaluate", "{run}"], {record.METRICS, record.SAMPLES, record.REPORT}),
    "attack": (["attack", "{run}", "--attack", "fgsm", "--eps", "0.1", "--n-examples", "10"],
               {record.METRICS, record.EVALUATIONS, record.REPORT}),
    "report": (["report", "{run}"], {record.REPORT}),
    "predict": (["predict", "{run}", "{image}"], set()),
    "resume": (["train", "--resume", "{run}"], set()),  # a finished run: nothing to write
}


@seed(15)
@FUZZ
@given(corruption=corruptions(), command=st.sampled_from(sorted(COMMANDS)))
def test_corrupted_run_files_end_in_one_line(trained_run, image_file, tmp_path_factory, corruption, command):
    name, how, apply = corruption
    if name == record.CONFIG and command == "resume":
        command = "evaluate"  # a config.yaml retyped to epochs: 10**20 is a valid order to train for ever
    run = tmp_path_factory.mktemp("corrupt") / "run"
    shutil.copytree(trained_run, run)
    target = run / name
    target.write_bytes(apply(target.read_bytes()))
    run_on_damaged_folder(run, command, image_file, f"({name}: {how})")


def run_on_damaged_folder(run: Path, command: str, image: Path, damage: str) -> None:
    """``COMMANDS[command]`` on ``run``: a clean ending (:func:`assert_clean_ending`), and no file changed but
    those the command owns; then the folder is removed."""
    before = snapshot(run)
    template, writes = COMMANDS[command]
    argv = [part.format(run=run, image=image) for part in template]
    status, err = run_cli(argv)
    assert_clean_ending(status, err, [*argv, damage])
    after = snapshot(run)
    owned = writes | {record.LOG}
    changed = {key for key in before.keys() | after.keys()
               if before.get(key) != after.get(key) and key.split("/")[0] not in owned
               and not key.startswith(record.FIGURES)}
    assert not changed, (argv, damage, changed)
    shutil.rmtree(run.parent)


def _damaged_tensors(path: Path) -> None:
    """A file of tensors whose test positions point past the test split."""
    import torch

    stored = torch.load(path, weights_only=True)
    stored["test_positions"] = stored["test_positions"] + 10**6
    torch.save(stored, path)


EVALUATION_DAMAGE = {
    "random bytes": lambda path: path.write_bytes(os.urandom(300)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:1000]),
    "empty": lambda path: path.write_bytes(b""),
    "tensors that do not fit": _damaged_tensors,
}


@pytest.mark.parametrize(("name", "damage"), [(record.ADVERSARIAL_IMAGES, damage) for damage in EVALUATION_DAMAGE]
                         + [(record.ADVERSARIAL_EXAMPLES, damage) for damage in ("random bytes", "truncated", "empty")])
def test_a_damaged_evaluation_file_ends_every_command_that_reads_it_in_one_line(trained_run, tmp_path, name, damage):
    """``explain`` (adversarial images), ``report`` (the examples shown) and a repeated ``attack`` (reused) on
    an evaluation whose file was damaged: one line naming the file, or a clean run that does not need it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (target,) = run.glob(f"{record.EVALUATIONS}/*/{name}")
    EVALUATION_DAMAGE[damage](target)
    for argv in (["explain", str(run)], ["report", str(run)],
                 ["attack", str(run), "--attack", "fgsm", "--eps", "0,0.1", "--n-examples", "20"]):
        status, err = run_cli(argv)
        assert_clean_ending(status, err, [*argv, name, damage])
        if status:
            assert name in err, (argv, err)


# -- random flags -------------------------------------------------------------------------------

ODD_VALUES = ["", "0", "-1", "1", "2", "nan", "inf", "-inf", "1e309", "none", "null", "all", "true", "8/255",
              "0:1:1/1000000000", "1/0", "../nowhere", "fgsm", "pgd", "full", "linf", "l2", "random", "cpu",
              "cuda", "mlp", "digits", "flip-crop", "sgd", "[1, 2]", "{a: 1}", "100000000000000000000", "é"]
ARGV_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
VALUES = st.one_of(st.sampled_from(ODD_VALUES), st.integers(-10**20, 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), ARGV_TEXT)


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


SUBCOMMANDS = _subcommands()


@st.composite
def argvs(draw, run: Path, image: Path, out: Path):
    name = draw(st.sampled_from(sorted(SUBCOMMANDS)))
    parser = SUBCOMMANDS[name]
    argv = [name]
    if name == "data":
        argv.append("check")
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["check"]
    for action in parser._actions:
        if action.option_strings or action.dest == "help":
            continue
        many = action.nargs in ("+", "*")
        positional = {"run_dir": str(run), "run_dirs": str(run), "model_path": str(run), "images": str(image),
                      "features_file": str(run / "features.npz"), "path": str(run), "names": "elu"}
        value = positional.get(action.dest, "x")
        argv += draw(st.sampled_from([[value], [value, value]] if many else [[value]]))
        if draw(st.integers(0, 4)) == 0:
            argv[-1] = draw(VALUES) or value
    options = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]
    for action in draw(st.lists(st.sampled_from(options), max_size=5, unique_by=id)) if options else []:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        else:
            argv += [flag] + [draw(VALUES) for _ in range(action.nargs if isinstance(action.nargs, int) else 1)]
    if "--out" in {s for a in parser._actions for s in a.option_strings} and "--out" not in argv:
        argv += ["--out", str(out)]
    return argv


class _Stopped(Exception):
    """Raised by the stand-ins: validation passed, the work would begin here."""


@pytest.fixture
def stand_ins(monkeypatch):
    """Replace the long work that follows validation."""
    def stop(*args, **kwargs):
        raise _Stopped

    monkeypatch.setattr(pipeline.Run, "train", classmethod(stop))
    monkeypatch.setattr(pipeline.Run, "resume", classmethod(stop))
    monkeypatch.setattr(pipeline.Run, "attack", stop)
    monkeypatch.setattr(pipeline.Run, "evaluate", stop)
    monkeypatch.setattr(pipeline.Run, "corrupt", stop)
    monkeypatch.setattr(pipeline.Run, "explain", stop)
    monkeypatch.setattr(pipeline, "run", stop)
    import imgclf.export
    import imgclf.features.runs
    import imgclf.sweep

    monkeypatch.setattr(imgclf.sweep, "_prepare_out", stop)  # after the sweep file is read and checked
    monkeypatch.setattr(imgclf.features.runs, "fit_classifier_run", stop)
    monkeypatch.setattr(imgclf.export, "export_model", stop)
    import imgclf.explanations

    monkeypatch.setattr(imgclf.explanations, "explain_files", stop)


@seed(16)
@FUZZ
@given(data=st.data())
def test_random_flags_end_in_one_line(trained_run, image_file, tmp_path_factory, monkeypatch, stand_ins, data):
    work = tmp_path_factory.mktemp("flags")
    monkeypatch.chdir(work)  # where a relative --out or a default runs/ folder would go
    run = work / "run"
    shutil.copytree(trained_run, run)
    argv = data.draw(argvs(run, image_file, work / "out"))
    try:
        status, err = run_cli(argv)
    except _Stopped:
        status = 0  # valid settings; the work itself is what the other tests run
    else:
        assert_clean_ending(status, err, argv)
    shutil.rmtree(work)


# -- random YAML files --------------------------------------------------------------------------

SECTION_KEYS = {"data": ["dataset", "image_size", "channels", "augment", "val_fraction", "memory_limit_mb"],
                "model": ["name", "options"], "train": ["epochs", "lr", "optimizer", "batch_size", "schedule"],
                "attack": ["attacks", "eps", "norm", "target", "examples", "steps"],
                "adversarial": ["recipe", "eps", "steps", "beta"], "eval": ["tta", "batch_size"]}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), ARGV_TEXT,
                    st.sampled_from(ODD_VALUES))
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(ARGV_TEXT, inner, max_size=3)),
                           max_leaves=6)


@st.composite
def config_documents(draw):
    document: dict = {}
    for section in draw(st.lists(st.sampled_from([*SECTION_KEYS, "seed", "device", "recipe", "junk"]),
                                 max_size=4, unique=True)):
        if section in SECTION_KEYS and draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(SECTION_KEYS[section]), max_size=3, unique=True))
            document[section] = {key: draw(YAML_VALUES) for key in keys}
        else:
            document[section] = draw(YAML_VALUES)
    return document


@st.composite
def sweep_documents(draw):
    keys = ["study", "trials", "out", "storage", "seed", "pruner", "startup_trials", "warmup_epochs", "attack",
            "base", "search", "junk"]
    document = {key: draw(YAML_VALUES) for key in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))}
    if draw(st.booleans()):
        document["search"] = {draw(st.sampled_from(["train.lr", "train.epochs", "model.options.hidden", "x"])):
                              draw(st.one_of(YAML_VALUES, st.fixed_dictionaries(
                                  {"low": SCALARS, "high": SCALARS}, optional={"log": SCALARS, "step": SCALARS})))}
    if draw(st.booleans()):
        document["base"] = draw(config_documents())
    return document


@seed(17)
@FUZZ
@given(document=st.one_of(config_documents(), YAML_VALUES), kind=st.sampled_from(["run", "sweep"]),
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_random_yaml_files_end_in_one_line(tmp_path_factory, monkeypatch, stand_ins, document, kind, raw):
    work = tmp_path_factory.mktemp("yaml")
    monkeypatch.chdir(work)
    path = work / "settings.yaml"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
    argv = ["run", "--config", str(path), "--out", str(work / "out")] if kind == "run" else \
        ["sweep", "--config", str(path), "--out", str(work / "out")]
    try:
        status, err = run_cli(argv)
    except _Stopped:
        return
    assert_clean_ending(status, err, [*argv, repr(document)])


@seed(18)
@FUZZ
@given(document=sweep_documents())
def test_random_sweep_files_end_in_one_line(tmp_path_factory, monkeypatch, stand_ins, document):
    work = tmp_path_factory.mktemp("sweep")
    monkeypatch.chdir(work)
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    from imgclf.sweep import load_sweep

    argv = ["sweep", "--config", str(path)]
    try:
        load_sweep(path)
    except Exception as error:  # noqa: BLE001  (the assertion below names any other type)
        from imgclf.errors import UsageError

        assert isinstance(error, UsageError), (document, repr(error))
        assert "\n" not in str(error), (document, str(error))
    assert argv


# -- values of a run folder's JSON files: ranges, types, nesting ----------------------------------------------

RANGE_BREAKERS = st.one_of(st.sampled_from([-1, -0.5, 1.5, 7.5, 10**30, -10**30, float("nan"), float("inf"),
                                            float("-inf"), 999, 0, True, "0.5", None, [], {}]),
                           st.integers(1, 3000).map(lambda depth: ("nested", depth)),
                           st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70))


@seed(19)
@FUZZ
@given(name=st.sampled_from([record.METRICS, record.MODEL_INFO]), choice=st.integers(0, 10**6),
       value=RANGE_BREAKERS, command=st.sampled_from(["evaluate", "report", "predict", "attack"]))
def test_run_folder_json_values_out_of_range_end_in_one_line(trained_run, image_file, tmp_path_factory, name,
                                                            choice, value, command):
    """One value of ``metrics.json`` or ``model.json`` (a number where a number is, most often) replaced by one
    outside its range, of another type, or nested thousands deep."""
    run = tmp_path_factory.mktemp("values") / "run"
    shutil.copytree(trained_run, run)
    tree = json.loads((run / name).read_text())
    slots = list(_slots(tree))
    numbers = [(parent, key) for parent, key in slots if isinstance(parent[key], int | float)]
    parent, key = (numbers or slots)[choice % len(numbers or slots)]
    parent[key] = "__nested__" if isinstance(value, tuple) else value
    text = json.dumps(tree)  # (Python's json writes NaN and Infinity, as imgclf's files may)
    if isinstance(value, tuple):  # written as text: neither Hypothesis nor json can print thousands of levels
        text = text.replace('"__nested__"', "[" * value[1] + "0.5" + "]" * value[1])
    (run / name).write_text(text)
    run_on_damaged_folder(run, command, image_file, f"({name}: {key!r} = {value!r:.80})")


# -- model sources named by a run folder ------------------------------------------------------------------------

PLANTED = "imgclf_fuzz_planted"
SOURCES = st.one_of(
    st.sampled_from([f"py:{PLANTED}.py:Net", f"py:{PLANTED}:Net", "py:timeit:timeit", "py:os:system",
                     "py:builtins:exec", "py:subprocess:run", "timm:resnet18", "torchvision:resnet18",
                     "evil.pt2", "../../etc/passwd.onnx", "model.pt", "mlp", "simple-cnn", "py:", "py::", ""]),
    ARGV_TEXT.map(lambda text: f"py:{text}"), ARGV_TEXT)
OPTIONS = st.one_of(st.just({}), st.fixed_dictionaries({"stmt": st.just("open('PLANTED-RAN', 'w')"),
                                                       "number": st.just(1)}),
                    st.dictionaries(st.sampled_from(["hidden", "depth", "args", "command", "stmt"]), SCALARS,
                                    max_size=2))


@seed(20)
@FUZZ
@given(source=SOURCES, options=OPTIONS, where=st.sampled_from(["model.json", "config.yaml", "both"]),
       command=st.sampled_from(["evaluate", "report", "predict", "attack", "resume"]))
def test_model_sources_in_run_folders_never_run_code(trained_run, image_file, tmp_path_factory, monkeypatch,
                                                     source, options, where, command):
    """A run folder shared by someone hostile names any model source with any options: without
    ``--trust-code`` no code of theirs runs (a planted module and ``timeit``'s statement leave marker files)."""
    work = tmp_path_factory.mktemp("sources")
    monkeypatch.chdir(work)
    (work / f"{PLANTED}.py").write_text("open('PLANTED-IMPORTED', 'w')\n")
    run = work / "run"
    shutil.copytree(trained_run, run)
    if where in ("model.json", "both"):
        info = json.loads((run / record.MODEL_INFO).read_text())
        info.update(model=source, options=options)
        (run / record.MODEL_INFO).write_text(json.dumps(info))
    if where in ("config.yaml", "both"):
        config = yaml.safe_load((run / record.CONFIG).read_text())
        config["model"] = {"name": source, "options": options}
        (run / record.CONFIG).write_text(yaml.safe_dump(config))
    template, _ = COMMANDS[command]
    argv = [part.format(run=run, image=image_file) for part in template]
    status, err = run_cli(argv)
    assert_clean_ending(status, err, [*argv, f"({where}: {source!r} {options!r})"])
    assert not (work / "PLANTED-IMPORTED").exists() and not (work / "PLANTED-RAN").exists(), (argv, source)
    import sys

    assert PLANTED not in sys.modules
    shutil.rmtree(work)


# -- labels-file paths -------------------------------------------------------------------------------------------

LABEL_PATHS = st.one_of(
    st.sampled_from(["images/a0.png", "images/b0.png", "./images/a1.png", "images/../images/b1.png",
                     "../outside.png", "../../../../etc/passwd", "/etc/passwd", "/dev/zero", "images/pipe.png",
                     "images/link-out.png", "images", "", " ", "images/missing.png", "~/x.png", "images/a0"]),
    ARGV_TEXT)


@seed(21)
@FUZZ
@given(paths=st.lists(st.tuples(LABEL_PATHS, st.sampled_from(["a", "b"])), min_size=1, max_size=6),
       command=st.sampled_from(["data", "load"]))
def test_labels_file_paths_end_in_one_line_and_stay_inside_the_root(tmp_path_factory, monkeypatch, paths, command):
    """A labels file whose rows name any path: a path leaving the image root is refused (never opened), a
    FIFO or a device is a bad file (never a hang), and every other row reads or is listed as bad."""
    import csv

    from PIL import Image

    work = tmp_path_factory.mktemp("labels")
    monkeypatch.chdir(work)
    images = work / "data" / "images"
    images.mkdir(parents=True)
    for name in ("a", "b"):
        for i in range(3):
            Image.new("L", (8, 8), 60 if name == "a" else 200).save(images / f"{name}{i}.png")
    os.mkfifo(images / "pipe.png")
    (work / "outside.png").write_bytes((images / "a0.png").read_bytes())
    (images / "link-out.png").symlink_to(work / "outside.png")
    rows = [("images/a0.png", "a"), ("images/b0.png", "b"), *paths]  # two classes at least, then the fuzz
    labels = work / "data" / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    if command == "data":  # (its status 1 says the check found problems, which it prints on stdout)
        argv = ["data", "check", str(labels)]
        status, err = run_cli(argv)
        if status == 1 and not err:
            status = 0
    else:
        from imgclf.config import DataConfig
        from imgclf.data import load_data
        from imgclf.errors import UsageError

        argv = ["load_data", str(labels)]
        try:
            load_data(DataConfig(dataset=str(labels), image_size=8, cache=False), seed=0)
            status, err = 0, ""
        except UsageError as error:
            status, err = 2, f"imgclf: error: {error}"
    assert_clean_ending(status, err, [*argv, repr(paths)])
    leaving = [p for p, _ in paths if p.strip() and not os.path.normpath(os.path.join(images.parent, p)).startswith(
        str(images.parent) + os.sep)]
    if leaving:  # refused before anything was read (for that, or for an earlier bad row)
        assert status == 2, (paths, err)
    shutil.rmtree(work)
