"""The registries are the one place a contributor extends: an attack registered inside a test
reaches the CLI, the configuration, the evaluation and the report with no other file touched
(and the documentation's tables, tests/test_docs.py)."""

import json
import re
from pathlib import Path

import pytest
import torch

from imgclf.attacks import ATTACKS, AttackSpec, register_attack, robustness
from imgclf.attacks.core import attack_entry, project
from imgclf.attacks.registry import AttackOption, unregister_attack
from imgclf.cli import build_parser, main
from imgclf.config import load_config
from imgclf.constraints import Interval
from imgclf.errors import UsageError
from imgclf.record import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("registry") / "digits"
    assert main(["train", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    return out


@attack_entry
def corner_noise(model, images, labels, *, eps, norm="linf", generator=None):
    """A toy black-box attack: each pixel moved by +-eps at random (the test's own attack)."""
    draw_on = generator.device if generator is not None else images.device
    signs = torch.randint(0, 2, images.shape, generator=generator, device=draw_on).to(images.device) * 2 - 1
    return project(images + eps * signs, images, eps, norm)


@pytest.fixture
def toy_attack():
    """A toy attack with an option of its own (``sparsity``: the share of pixels it moves), declared beside its
    registry row and nowhere else; the runner records what it was given."""
    given = []

    def run(spec, model, images, labels, eps, gen, target):
        given.append(spec.options["sparsity"])
        moved = corner_noise(model, images, labels, eps=eps, generator=gen)
        keep = torch.rand(images.shape, generator=gen) >= spec.options["sparsity"]
        return torch.where(keep.to(images.device), images, moved)

    register_attack("corner-noise", summary="toy: random corners of the eps cube", norms=("linf",),
                    white_box=False, default_steps=1, fixed_steps=True,
                    options=(AttackOption("sparsity", 0.0, Interval(float, 0, 1, "left"),
                                          "the share of pixels left alone", metavar="P"),))(run)
    yield "corner-noise", given
    unregister_attack("corner-noise")


def test_a_new_attack_is_one_registration(toy_attack, digits_run, capsys):
    toy_attack, given = toy_attack
    # the CLI lists it, with its own option
    help_text = build_parser()._subparsers._group_actions[0].choices["attack"].format_help()
    assert toy_attack in re.sub(r"\s+", "", help_text)
    assert "--sparsity P" in help_text and "the share of pixels left alone" in help_text
    # the configuration accepts it, and checks its norms from the registration
    assert load_config(None, {"attack.attacks": [toy_attack]}).attack.attacks == [toy_attack]
    with pytest.raises(UsageError, match="implemented for --norm linf only"):
        load_config(None, {"attack.attacks": [toy_attack], "attack.norm": "l2", "attack.eps": ["0.5"]})
    # the evaluation runs it, with the worst case and the checks
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images, labels = torch.rand(12, 1, 2, 2), torch.randint(0, 3, (12,))
    result = robustness(model.eval(), images, labels, attacks=[AttackSpec(toy_attack), AttackSpec("fgsm")],
                        eps_values=[0.0, 0.5], device=torch.device("cpu"))
    assert [e.attack for e in result.entries if e.eps == 0.5] == [toy_attack, "fgsm", "worst-case"]
    assert {c["name"]: c["status"] for c in result.checks}["white-box beats black-box"] != "not run"
    # the attack command runs it and the report renders it
    assert main(["attack", str(digits_run), "--attack", f"{toy_attack},pgd", "--eps", "0,0.2", "--quiet"]) == 0
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert {row["attack"] for row in metrics["evaluations"][-1]["robustness"]} == {toy_attack, "pgd", "worst-case"}
    assert main(["report", str(digits_run)]) == 0
    assert toy_attack.upper() in (digits_run / "report.html").read_text()
    capsys.readouterr()
    # its option reaches its runner from the flag, from a YAML key and from the Python API, is checked where
    # it enters, and is part of the evaluation's record (another value is another evaluation)
    given.clear()
    assert main(["attack", str(digits_run), "--attack", toy_attack, "--sparsity", "0.5", "--eps", "0,0.2",
                 "--quiet"]) == 0
    assert set(given) == {0.5}
    record = json.loads((digits_run / "metrics.json").read_text())["evaluations"][-1]
    assert record["settings"]["attacks"][0]["options"] == {"sparsity": 0.5}
    assert load_config(None, {"attack.sparsity": "0.25"}).attack.options == {"sparsity": 0.25}
    with pytest.raises(UsageError, match=r"attack.sparsity must be a number in \[0, 1\), got '2'"):
        load_config(None, {"attack.options.sparsity": "2"})
    assert main(["attack", str(digits_run), "--attack", toy_attack, "--sparsity", "2", "--quiet"]) == 2
    assert "--sparsity must be a number in [0, 1), got '2'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="unknown attack option 'sparsty'"):
        load_config(None, {"attack.options.sparsty": 1})
    assert AttackSpec("fgsm", options={"sparsity": 0.3}).options == {}  # another attack's option: not fgsm's
    assert AttackSpec(toy_attack).options == {"sparsity": 0.0}
    # and `imgclf attacks` lists it with its option
    assert main(["attacks"]) == 0
    listing = capsys.readouterr().out
    assert toy_attack in listing and "--sparsity P: the share of pixels left alone" in listing


def test_registering_a_taken_name_or_an_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        register_attack("pgd", summary="again")(lambda *args: None)
    with pytest.raises(ValueError, match="unknown norms"):
        register_attack("l0-attack", summary="x", norms=("l0",))(lambda *args: None)
    assert "l0-attack" not in ATTACKS


def test_every_attack_opens_the_same_way():
    """The shared opening: input checks, eps 0 returns a copy, a training-mode model is warned about."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.Dropout(0.1))
    images, labels = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    for name in ATTACKS:
        spec = AttackSpec(name, steps=2, options={"queries": 5}, target_classes=2)
        with pytest.raises(ValueError, match="pixel space"):
            spec.run(model.eval(), images * 3, labels, 0.1, torch.Generator())
        same = spec.run(model.eval(), images, labels, 0.0, torch.Generator())
        assert torch.equal(same, images) and same is not images
        with pytest.warns(UserWarning, match="training mode"):
            spec.run(model.train(), images, labels, 0.1, torch.Generator())


def test_a_new_training_recipe_is_one_registration_and_owns_its_guard(tmp_path):
    from dataclasses import dataclass

    from imgclf.config import AdversarialConfig, DataConfig, TrainConfig
    from imgclf.data import load_data
    from imgclf.defenses import TrainingRecipe, register_recipe
    from imgclf.defenses.recipes import unregister_recipe
    from imgclf.models import create_model
    from imgclf.training import fit

    @register_recipe
    @dataclass
    class NoiseTraining(TrainingRecipe):
        name = "noise-test"
        summary = "train on uniform noise of radius eps (the test's own recipe)"
        default_steps = 1
        validation_attacks = ("fgsm",)

        def perturb(self, model, images, labels, *, eps, norm, steps, alpha, generator):
            noise = torch.rand(images.shape, generator=generator) * 2 - 1
            return (images + eps * noise).clamp(0, 1)

        def guard(self, history):
            return "stopped by the test's guard" if len(history) == 2 else None

    try:
        config = load_config(None, {"adversarial.recipe": "noise-test", "adversarial.eps": "0.1"})
        data = load_data(DataConfig(), seed=0)
        s = data.spec
        model = create_model("mlp", channels=s.channels, image_size=s.image_size, num_classes=s.num_classes,
                             mean=s.mean, std=s.std)
        result = fit(model, data, TrainConfig(epochs=4, batch_size=128), augment="none", device=torch.device("cpu"),
                     seed=0, log=lambda line: None, quiet=True,
                     adversarial=AdversarialConfig(recipe="noise-test", val_examples=64, val_steps=2),
                     adversarial_eps=0.1)
        assert config.adversarial.recipe == "noise-test"
        assert len(result.history) == 2 and result.stopped_early
        assert result.catastrophic_overfitting == "stopped by the test's guard"
        assert {"robust_val_accuracy", "fgsm_val_accuracy", "train_eps"} <= set(result.history[0])
    finally:
        unregister_recipe("noise-test")
    with pytest.raises(UsageError, match="noise-test|valid choices"):
        load_config(None, {"adversarial.recipe": "noise-test"})


def test_every_imgclf_name_the_readme_and_the_documentation_mention_exists():
    import contextlib
    import importlib

    import imgclf

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.ipynb"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    names = set(re.findall(r"\bimgclf((?:\.[A-Za-z_]\w*)+)", text))
    assert {".Run.train", ".predict", ".attacks.robustness"} <= names
    for dotted in sorted(names):
        parts = dotted.strip(".").split(".")
        obj = imgclf
        for i, part in enumerate(parts):
            if not hasattr(obj, part) and isinstance(obj, type(imgclf)):  # a submodule not imported yet
                with contextlib.suppress(ModuleNotFoundError):
                    importlib.import_module(".".join(["imgclf", *parts[:i + 1]]))
            if isinstance(obj, type(imgclf)) and part in ("py", "md", "txt", "json", "yaml", "html"):
                break  # a file name such as imgclf.attacks.registry.py is not an attribute
            assert hasattr(obj, part), f"the documentation names imgclf{dotted}, which does not exist"
            obj = getattr(obj, part)


def test_a_run_folder_of_the_previous_release_still_opens(tmp_path, capsys):
    """tests/data/run-0.1.0 was written by imgclf 0.1.0 before schema versions (an fgsm-rs run on digits)."""
    import shutil

    from imgclf.pipeline import Run
    from imgclf.record import read_metrics

    old = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run-0.1.0", old)
    metrics = read_metrics(old)
    assert metrics.schema_version == 1 and metrics.training.adversarial.recipe == "fgsm-rs"
    assert metrics.worst_case() and metrics.attack.checks
    opened = Run.open(old, quiet=True)
    assert opened.settings.train_eps.value == pytest.approx(0.1) and opened.settings.eps_values == [0.0, 0.1]
    assert main(["report", str(old)]) == 0
    assert "fgsm-rs" in (old / "report.html").read_text()
    assert main(["evaluate", str(old), "--quiet"]) == 0
    assert read_metrics(old).clean.accuracy == pytest.approx(metrics.clean.accuracy)


#: The layers of src/imgclf, lowest first, by top-level module or package: a module imports only from its own
#: layer or the ones below (stages call attacks, attacks never call stages). ``imgclf`` is the package's own
#: table of lazy exports. A new top-level module must be placed here.
LAYERS = [
    {"imgclf", "errors", "lazy", "trust", "runtime", "distributed", "constraints", "tensorboard_logging",
     "notebook"},
    {"data", "numpy_nn", "metrics"},
    {"models"},
    {"evaluation", "calibration", "attacks", "certification"},
    {"corruptions", "defenses"},
    {"sections", "settings", "config"},
    {"record", "run_folder"},
    {"training", "lr_finder", "checkpoint"},
    {"prediction", "export", "report"},
    {"explanations", "robustness"},
    {"stages", "pipeline"},
    {"features", "sweep"},
    {"cli", "__main__"},
]


def import_graph():
    """``{module: {module it imports}}`` over src/imgclf, every import statement counted (inside functions too),
    those under ``if TYPE_CHECKING:`` aside (annotations only: never run); a package's ``__init__`` is the
    package's name."""
    import ast

    source = ROOT / "src"
    modules = {}
    for path in source.rglob("*.py"):
        name = ".".join(path.relative_to(source).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                       for statement in block.body for node in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
                targets = {resolve(node.module)} | {resolve(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                targets = {resolve(a.name) for a in node.names if a.name.startswith("imgclf")}
            else:
                continue
            graph[name] |= {target for target in targets if target and target != name}
    return graph


def test_the_modules_keep_the_layer_order_and_import_each_other_without_a_cycle():
    """No module imports one of a higher layer (:data:`LAYERS`), and no modules import each other, directly or
    round a longer loop, not even inside a function."""
    graph = import_graph()
    layer = {name: index for index, names in enumerate(LAYERS) for name in names}

    def layer_of(module):
        top = module.split(".")[1] if "." in module else module
        assert top in layer, f"{module} is in no layer: place {top!r} in tests/test_architecture.py's LAYERS"
        return layer[top]

    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                    if layer_of(target) > layer_of(name))
    assert not upward, "imports into a higher layer: " + "; ".join(upward)

    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def find_cycle(graph):
    """The first loop of imports in ``graph`` as ``[a, b, ..., a]``, or None. An import of the lazy table
    ``imgclf``, or of a package's own ``__init__`` by one of its modules, closes no loop (the package is
    executed first, whoever imports the module)."""
    state = {}

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if target == "imgclf" or name.startswith(target + "."):
                continue
            if state.get(target) == "open":
                return [*trail, name, target]
            if target not in state:
                found = visit(target, [*trail, name])
                if found:
                    return found
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return None


def test_the_layer_test_counts_imports_inside_functions_and_finds_a_loop():
    graph = import_graph()
    assert "imgclf.models.registry" in graph["imgclf.config"]  # a module-level import
    assert "imgclf.models.builders" in graph["imgclf.models.registry"]  # one inside get_entry
    assert find_cycle({"imgclf.a": {"imgclf.b"}, "imgclf.b": {"imgclf.c"}, "imgclf.c": {"imgclf.a"}}) == [
        "imgclf.a", "imgclf.b", "imgclf.c", "imgclf.a"]
    assert find_cycle({"imgclf.a": {"imgclf.b"}, "imgclf.b": set()}) is None


def test_the_model_record_and_the_training_state_are_checked_when_read(tmp_path, digits_run, capsys):
    import shutil

    from imgclf.record import read_model_record

    info = read_model_record(digits_run / "model.json")
    assert info.schema_version == SCHEMA_VERSION and info.input_shape == [1, 8, 8] and len(info.class_names) == 10
    broken = tmp_path / "broken"
    shutil.copytree(digits_run, broken)
    (broken / "model.json").write_text('{"format": "imgclf-model/1", "model": "mlp"}')
    assert main(["evaluate", str(broken)]) == 2
    assert "model.json" in capsys.readouterr().err
    shutil.copy(digits_run / "model.json", broken / "model.json")
    (broken / "train_state.pt").write_bytes(b"not a pickle at all")
    assert main(["train", "--resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as a training state" in err and len(err.strip().splitlines()) == 1
    import torch

    torch.save({"epoch": 1}, broken / "train_state.pt")
    assert main(["train", "--resume", str(broken)]) == 2
    assert "not a complete imgclf training state: it lacks stale" in capsys.readouterr().err


def test_flags_and_settings_are_checked_without_importing_torch(tmp_path):
    """The command line parses, checks every setting and refuses a bad one before torch loads
    (``bench/startup.py`` measures the time this saves)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from imgclf.cli import main\n"
        "assert main(['run', '--seed', '-1']) == 2\n"
        "assert main(['run', '--attack', 'cw', '--adversarial', 'trades', '--augment', 'flip-jitter']) == 2\n"
        "assert main(['attacks']) == 0 and main(['models']) == 0 and main(['datasets']) == 0\n"
        "assert main(['run', '--model', 'nosuch']) == 2\n"
        "for flag, name in (('--dataset', 'mnistt'), ('--attack', 'fulll'), ('--corruptions', 'smok'),\n"
        "                   ('--augment', 'flipp'), ('--recipe', 'nosuch'), ('--preset', 'nosuch')):\n"
        "    assert main(['train' if flag == '--recipe' else 'run', flag, name]) == 2, flag\n"
        "assert main(['run', '--model', 'mlp', '--model-option', 'hidden=many']) == 2\n"
        "from imgclf.config import load_config\n"
        "load_config(None, {'attack.attacks': ['pgd', 'apgd-ce'], 'adversarial.recipe': 'fgsm-rs',\n"
        "                   'attack.target': 'random'})\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_dir_of_the_package_lists_its_public_api_for_tab_completion():
    import imgclf

    listed = dir(imgclf)
    assert {"Run", "certify", "evaluate_robustness", "attacks", "certification", "__version__"} <= set(listed)
    assert "importlib" not in listed and all(hasattr(imgclf, name) for name in listed)


def test_lazily_exported_names_are_not_submodule_names_and_all_load():
    import importlib

    for package in ("imgclf.attacks", "imgclf.certification", "imgclf.defenses", "imgclf.data", "imgclf.models"):
        module = importlib.import_module(package)
        folder = Path(module.__file__).parent
        submodules = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()}
        assert not set(module.__all__) & submodules, package
        for name in module.__all__:
            assert getattr(module, name) is not None, (package, name)


def test_every_declared_attack_recipe_and_model_loads():
    import inspect

    from imgclf.defenses import BUILTIN_RECIPES, recipe_class
    from imgclf.models import MODELS

    for entry in MODELS.values():  # the declared options are the builder's keyword arguments
        params = inspect.signature(entry.build).parameters
        assert set(params) - {"channels", "image_size", "num_classes"} == set(entry.defaults()), entry.name

    for info in ATTACKS.values():
        assert callable(info.run), info.name
    for name in BUILTIN_RECIPES:
        assert recipe_class(name).name == name


def test_no_function_in_src_is_over_60_lines():
    """A function's body, its docstring aside, is at most 60 lines: longer work is split into named steps."""
    import ast

    long = []
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                if body and node.end_lineno - body[0].lineno + 1 > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, "functions over 60 lines: " + ", ".join(long)
