"""The documentation site: it builds with ``mkdocs build --strict``, its tables are the registries' (a toy entry
registered here appears on the built page), its notebook pages show their outputs and link to real pages, and
every tutorial notebook runs top to bottom and prints the number it promises."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"

pytest.importorskip("mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built in strict mode with a toy model, data set, corruption and recipe registered."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    from imgclf.corruptions.registry import register_corruption, unregister_corruption
    from imgclf.data import DATASETS
    from imgclf.defenses import TrainingRecipe, register_recipe
    from imgclf.defenses.recipes import unregister_recipe
    from imgclf.models import MODELS

    @register_recipe
    @dataclasses.dataclass
    class DocsToyRecipe(TrainingRecipe):
        name = "docs-toy-recipe"
        summary = "a recipe the documentation test registers"

    register_corruption("docs-toy-corruption", title="Toy", group="digital", function=lambda images, s, g: images)
    MODELS["docs-toy-model"] = dataclasses.replace(MODELS["mlp"], name="docs-toy-model",
                                                   summary="a model the documentation test registers")
    DATASETS["docs-toy-data"] = dataclasses.replace(DATASETS["digits"], name="docs-toy-data",
                                                    summary="a data set the documentation test registers")
    out = tmp_path_factory.mktemp("site")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NO_MKDOCS_2_WARNING", "1")  # (Material's notice of its successor)
            build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(out), strict=True))
    finally:
        unregister_recipe("docs-toy-recipe")
        unregister_corruption("docs-toy-corruption")
        del MODELS["docs-toy-model"], DATASETS["docs-toy-data"]
    return out


def page(site, path):
    return (site / path / "index.html").read_text(encoding="utf-8")


def test_the_registry_tables_list_every_entry_a_toy_one_included(site):
    from imgclf.attacks import ATTACKS
    from imgclf.corruptions import CORRUPTIONS
    from imgclf.data import DATASETS
    from imgclf.defenses.recipes import recipe_choices
    from imgclf.models import MODELS

    html = page(site, "reference/registries")
    for toy in ("docs-toy-model", "docs-toy-data", "docs-toy-corruption", "docs-toy-recipe"):
        assert f"<code>{toy}</code>" in html, toy
    names = [*ATTACKS, *CORRUPTIONS, *DATASETS, *MODELS, *(r for r in recipe_choices() if r != "none")]
    missing = [name for name in names if f"<code>{name}</code>" not in html]
    assert not missing


def test_the_command_and_settings_references_are_the_parser_and_the_configuration(site):
    from imgclf.cli import build_parser
    from imgclf.config import RunConfig, section_class

    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    cli = page(site, "reference/cli")
    assert all(f'id="imgclf-{name}"' in cli for name in commands), "a command without its section"
    assert "--certify-batch-size" in cli and "--plan-tolerance" in cli
    settings = page(site, "reference/settings")
    keys = [f"{s.name}.{f.name}" for s in dataclasses.fields(RunConfig) if s.name not in ("seed", "device")
            for f in dataclasses.fields(section_class(s.name))]
    assert all(f"<code>{key}</code>" in settings for key in keys)
    schema = page(site, "reference/run-folder")
    assert "<code>Certification</code>" in schema and "<code>evaluations</code>" in schema


def test_tutorial_pages_show_their_outputs_and_link_to_pages(site):
    for notebook in sorted(TUTORIALS.glob("*.ipynb")):
        html = page(site, f"tutorials/{notebook.stem}")
        assert "data:image/png;base64" in html or "<table" in html, f"{notebook.name} shows no output"
        assert not re.search(r'href="(?!https?:)[^"]*\.(ipynb|md)"', html), f"{notebook.name}: a link to a file"


def test_a_broken_link_in_a_notebook_fails_the_build(tmp_path, caplog):
    """Strict mode catches links inside notebooks too (MkDocs itself does not look into them)."""
    import shutil

    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "docs_hooks", tmp_path / "docs_hooks")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = re.sub(r"\n  - mkdocstrings:.*?(?=\nmarkdown_extensions:)", "", config, flags=re.S)  # (faster)
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    (tmp_path / "docs" / "reference" / "python.md").write_text("# Python API\n", encoding="utf-8")
    notebook = tmp_path / "docs" / "tutorials" / "activations.ipynb"
    notebook.write_text(notebook.read_text(encoding="utf-8").replace("(numpy-mlp-features.ipynb)", "(gone.ipynb)"),
                        encoding="utf-8")
    with pytest.raises(Abort):
        build(load_config(str(tmp_path / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True))
    assert "tutorials/activations.ipynb links to gone.ipynb, which is not a page of the site" in caplog.text


#: Every tutorial, the data it needs, and the floor (or ceiling) of the number its "checked" cell prints.
CHECKS = {
    "activations.ipynb": (None, lambda max_error: max_error < 1e-6),
    "fashion-mnist-dnn.ipynb": ("FashionMNIST", lambda accuracy: accuracy >= 0.85),
    "mnist-cnn.ipynb": ("MNIST", lambda accuracy: accuracy >= 0.97),
    "photo-folder-attacks.ipynb": ("linnaeus5-4class-96", lambda drop: drop >= 0.3),
    "cifar10-cnn.ipynb": ("cifar10-jpg", lambda accuracy: accuracy >= 0.40),
    "numpy-mlp-features.ipynb": ("FashionMNIST", lambda accuracy: accuracy >= 0.86),
    "evaluate-your-model.ipynb": ("MNIST", lambda worst: 0.2 <= worst <= 0.9),
}

#: The most seconds a tutorial may take here (they are written for about 3 minutes on a laptop's CPU).
LIMIT_SECONDS = 600


def test_every_tutorial_is_checked_and_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    names = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert names == sorted(CHECKS)
    assert all(f"tutorials/{name}" in nav for name in names)
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    assert all(f"({name})" in index for name in names)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_tutorial_runs_and_its_number_holds(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    folder, holds = CHECKS[name]
    data = os.environ.get("IMGCLF_DATA_DIR")
    if folder is not None and (not data or not (Path(data) / folder).exists()):
        pytest.skip(f"needs {folder} in IMGCLF_DATA_DIR")
    if data:
        monkeypatch.setenv("IMGCLF_DATA_DIR", str(Path(data).resolve()))
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    start = time.monotonic()
    NotebookClient(notebook, timeout=LIMIT_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.monotonic() - start < LIMIT_SECONDS
    checked = [cell for cell in notebook.cells if "checked" in cell.metadata.get("tags", [])]
    assert len(checked) == 1, "one cell tagged 'checked' prints the tutorial's number"
    value = float(checked[0].outputs[-1]["data"]["text/plain"])
    assert holds(value), f"{name}: {value}"
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert not errors


def readme_block(marker: str) -> str:
    """The code block after ``<!-- marker -->`` in README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    assert not re.search(r"\bissue \d|\bsession|20\d\d-\d\d-\d\d", readme)
    for link in re.findall(r"\]\((?!https?:)([^)#]+)\)", readme):
        assert (ROOT / link).exists(), f"the README links to {link}, which is not in the repository"


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_in_a_fresh_folder(tmp_path):
    """Its commands, then its Python, in order, as a new user runs them (in the activated environment)."""
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell = subprocess.run(["bash", "-e", "-c", readme_block("quickstart:shell")], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
    python = subprocess.run([sys.executable, "-c", readme_block("quickstart:python")], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert python.returncode == 0, python.stderr[-2000:]
    lines = python.stdout.strip().splitlines()
    assert 0.5 < float(lines[0]) <= 1  # the test accuracy, printed first
    assert lines[-1].startswith("RobustnessResult(n=100") and "failed_checks=0" in lines[-1]
