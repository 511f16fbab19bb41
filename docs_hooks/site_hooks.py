"""MkDocs hooks: the documentation's tables, written from imgclf's registries at build time, and the links of
the tutorial notebooks made to work on the site.

A page asks for a table with ``{{ registry: NAME }}`` on a line of its own; NAME is one of
:data:`TABLES`. The tables are built from what is registered when the site is built (a data set,
model, attack, corruption or recipe added with its ``register_*`` function appears without a
word of the documentation changed), so the site cannot drift from the code. ``mkdocs build
--strict`` fails on an unknown NAME.

A notebook links to other pages by their files (``mnist-cnn.ipynb``, ``../how-to/sweeps.md``), which is what
works in Jupyter; on the site those links are rewritten to the pages' addresses, and one that names no page of
the site fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

PLACEHOLDER = re.compile(r"^\{\{ registry: ([a-z-]+) \}\}$", re.MULTILINE)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def datasets_table() -> str:
    """The built-in data sets: name, classes, image shape, splits, what it is."""
    from imgclf.data import DATASETS

    lines = ["| `--dataset` | classes | images | splits | what it is |", "| --- | ---: | --- | --- | --- |"]
    for entry in DATASETS.values():
        lines.append(f"| `{entry.name}` | {entry.num_classes} | {entry.channels}x{entry.image_size}x{entry.image_size}"
                     f" | {_cell(entry.splits)} | {_cell(entry.summary)} |")
    return "\n".join(lines)


def models_table() -> str:
    """The registered architectures with their options and defaults."""
    from imgclf.models import MODELS

    lines = ["| `--model` | what it is | options (`--model-option NAME=VALUE`) |", "| --- | --- | --- |"]
    for entry in MODELS.values():
        options = ", ".join(f"`{k}={v!r}`" for k, v in entry.defaults().items()) or "none"
        lines.append(f"| `{entry.name}` | {_cell(entry.summary)} | {_cell(options)} |")
    return "\n".join(lines)


def attacks_table() -> str:
    """The registered attacks, then each attack's own options."""
    from imgclf.attacks import ATTACK_PRESETS, ATTACKS
    from imgclf.attacks.registry import attacks_table as table

    options = [f"| `{info.name}` | `{option.flag} {option.metavar}` | {_cell(option.help)} "
               f"({_cell(option.describe())}) |" for info in ATTACKS.values() for option in info.options]
    presets = [f"| `{name}` | {', '.join(f'`{m}`' for m in members)} |" for name, members in ATTACK_PRESETS.items()]
    return "\n\n".join([table(),
                        "\n".join(["| attack | option | what it sets |", "| --- | --- | --- |", *options]),
                        "\n".join(["| `--preset` | attacks |", "| --- | --- |", *presets])])


def corruptions_table() -> str:
    """The common corruptions by group."""
    from imgclf.corruptions import CORRUPTIONS
    from imgclf.corruptions.registry import GROUPS

    lines = ["| group | corruptions (`--corruptions` names) |", "| --- | --- |"]
    for group in GROUPS:
        names = ", ".join(f"`{spec.name}`" for spec in CORRUPTIONS.values() if spec.group == group)
        lines.append(f"| {group} | {names} |")
    return "\n".join(lines)


def recipes_table() -> str:
    """The adversarial-training recipes."""
    from imgclf.defenses.recipes import recipe_choices, recipe_class

    lines = ["| `--adversarial` | method and source | attack steps |", "| --- | --- | --- |"]
    for name in recipe_choices():
        if name == "none":  # the choice that turns adversarial training off
            continue
        recipe = recipe_class(name)
        steps = f"{recipe.default_steps} (fixed)" if recipe.fixed_steps else str(recipe.default_steps)
        lines.append(f"| `{name}` | {_cell(recipe.summary)} | {steps} |")
    return "\n".join(lines)


def settings_table() -> str:
    """Every setting of a run configuration: its key, default and valid values."""
    from imgclf.config import RunConfig, section_class

    lines = ["| setting (YAML key) | default | valid values |", "| --- | --- | --- |"]
    for section in dataclasses.fields(RunConfig):
        if not dataclasses.is_dataclass(section.default_factory):  # type: ignore[arg-type]
            lines.append(_setting_row(section.name, section))
            continue
        for item in dataclasses.fields(section_class(section.name)):
            lines.append(_setting_row(f"{section.name}.{item.name}", item))
    return "\n".join(lines)


def _setting_row(key: str, item: dataclasses.Field) -> str:
    if item.default is not dataclasses.MISSING:
        default = item.default
    elif item.default_factory is not dataclasses.MISSING:
        default = item.default_factory()
    else:
        default = ""
    constraint = item.metadata.get("constraint")
    valid = constraint.describe() if constraint is not None else f"{_type_name(item.type)}"
    return f"| `{key}` | `{default!r}` | {_cell(valid)} |"


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def cli_reference() -> str:
    """Every command's ``--help``, as ``imgclf COMMAND --help`` prints it."""
    from imgclf.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page is as wide on any machine
    try:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["## imgclf", "", "```text", parser.format_help().rstrip(), "```"]
        for name, sub in commands.choices.items():
            parts += ["", f"## imgclf {name}", "", "```text", sub.format_help().rstrip(), "```"]
            for inner in (a for a in sub._actions if isinstance(a, argparse._SubParsersAction)):
                for inner_name, inner_parser in inner.choices.items():
                    parts += ["", f"### imgclf {name} {inner_name}", "", "```text",
                              inner_parser.format_help().rstrip(), "```"]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


def metrics_schema() -> str:
    """The sections of ``metrics.json`` with their fields, from the record's dataclasses."""
    from imgclf import record

    parts: list[str] = [f"Schema version {record.SCHEMA_VERSION}."]
    seen: set[type] = set()
    queue: list[type] = [record.Metrics]
    while queue:
        cls = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        rows = ["| field | type |", "| --- | --- |"]
        for item in dataclasses.fields(cls):
            rows.append(f"| `{item.name}` | `{_cell(_type_name(item.type))}` |")
            queue += [getattr(record, name) for name in re.findall(r"\b([A-Z]\w+)\b", str(item.type))
                      if dataclasses.is_dataclass(getattr(record, name, None))]
        parts += [f"### `{cls.__name__}`", "", doc, "", "\n".join(rows)]
    return "\n\n".join(parts)


TABLES: dict[str, Callable[[], str]] = {
    "datasets": datasets_table, "models": models_table, "attacks": attacks_table, "corruptions": corruptions_table,
    "recipes": recipes_table, "settings": settings_table, "cli": cli_reference, "metrics-schema": metrics_schema,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every ``{{ registry: NAME }}`` line of a page with its table."""
    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"{page.file.src_uri}: unknown table {name!r}; valid choices: {', '.join(TABLES)}")
        return TABLES[name]()

    return PLACEHOLDER.sub(table, markdown)


LINK = re.compile(r'href="(?![a-z]+:|#|/)([^"#]+\.(?:md|ipynb))(#[^"]*)?"')


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """In a notebook's page, point every link to another documentation file at that file's page."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html

    def address(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match.group(1)))
        linked = files.get_file_from_path(target)
        if linked is None:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"{page.file.src_uri} links to {match.group(1)}, which is not a page of the site")
        return f'href="{linked.url_relative_to(page.file)}{match.group(2) or ""}"'

    return LINK.sub(address, html)
