"""Settings resolved once: every declared constraint refuses its invalid values with one message
naming the field, every way of giving the training eps gives the right radius, and config.yaml
keeps what the user wrote."""

import dataclasses
import json

import pytest
import yaml

from imgclf.cli import main
from imgclf.config import AttackConfig, RunConfig, config_from_dict, load_config
from imgclf.constraints import Options, describe_field
from imgclf.errors import UsageError
from imgclf.settings import MAX_EPS_VALUES, resolve

SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def declared():
    """(section, field, constraint) of every declared setting, sections first then the top level."""
    for section in ("data", "train", "eval", "attack", "adversarial"):
        cls = type(getattr(RunConfig(), section))
        for f in dataclasses.fields(cls):
            if "constraint" in f.metadata:
                yield section, f.name, f.metadata["constraint"]
    for f in dataclasses.fields(RunConfig):
        if "constraint" in f.metadata:
            yield None, f.name, f.metadata["constraint"]


CASES = [(section, name, bad) for section, name, constraint in declared() for bad in constraint.invalid_values()]


@pytest.mark.parametrize("section, name, bad", CASES, ids=[f"{s}.{n}={b!r}" for s, n, b in CASES])
def test_every_declared_constraint_refuses_its_invalid_values_naming_the_field(section, name, bad):
    key = f"{section}.{name}" if section else name
    values = {section: {name: bad}} if section else {name: bad}
    with pytest.raises(UsageError) as error:
        config_from_dict(values)
    message = str(error.value)
    shown = repr(bad[0]) if isinstance(bad, list) and bad else repr(bad)  # a list names its bad item
    assert key in message and (shown in message or "is empty" in message)


def test_every_declared_default_is_valid_and_the_cli_help_shows_range_and_default(capsys):
    config_from_dict({})  # the defaults pass their own constraints
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "an integer in [1, 100000]; default 10" in help_text  # --epochs, from TrainConfig.epochs
    assert describe_field(AttackConfig, "examples") == "a positive integer up to 100,000,000 or 'all'; default 1000"
    assert "a positive integer up to 100,000,000 or 'all'; default 1000" in " ".join(
        _help(capsys, ["attack", "--help"]).split())


def _help(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_options_read_their_registry_when_checked():
    constraint = [c for s, n, c in declared() if (s, n) == ("attack", "attacks")][0]
    assert isinstance(constraint, Options) and "pgd" in constraint.valid() and "quick" in constraint.valid()


@pytest.mark.parametrize("overrides, channels, expected, written", [
    ({"adversarial.eps": "0.1"}, 1, 0.1, "0.1"),                        # given alone
    ({"adversarial.eps": "8/255"}, 3, 8 / 255, "8/255"),                # a fraction stays a fraction
    ({"attack.eps": "0.3"}, 1, 0.3, "0.3"),                             # one attack eps
    ({"attack.eps": "0,0.1,0.2"}, 1, 0.2, "0.2"),                       # the largest of a list
    ({"attack.eps": "0:0.2:0.05"}, 1, 0.2, "0.2"),                      # the largest of a range (the bug)
    ({"attack.eps": "0:8/255:2/255"}, 3, 8 / 255, "8/255"),
    ({"attack.eps": ["0", "4/255", "1/255"]}, 3, 4 / 255, "4/255"),     # not the last one
    ({}, 1, 0.3, "0.3"),                                                # the grey default list
    ({}, 3, 8 / 255, "8/255"),                                          # the colour default list
    ({"attack.norm": "l2"}, 3, 1.0, "1"),                               # the L2 colour default
    ({"adversarial.eps": "0.05", "attack.eps": "0,0.3"}, 1, 0.05, "0.05"),  # given wins over the list
])
def test_every_way_of_giving_the_training_eps(overrides, channels, expected, written):
    config = load_config(None, {"adversarial.recipe": "pgd", **overrides})
    settings = resolve(config, channels=channels, class_names=[str(k) for k in range(10)])
    assert settings.train_eps.value == pytest.approx(expected)
    assert settings.config.adversarial.eps == written
    again = resolve(load_config(None, {**overrides, "adversarial.recipe": "pgd",
                                       "adversarial.eps": settings.config.adversarial.eps}), channels=channels)
    assert again.train_eps.value == pytest.approx(expected)


@pytest.mark.parametrize("overrides, message", [
    ({"adversarial.eps": "0"}, "eps 0 is standard training"),
    ({"attack.eps": "0"}, "eps 0 is standard training"),
    ({"adversarial.eps": "0.1,0.2"}, "one radius"),
    ({"adversarial.eps": "0:0.2:0.1"}, "one radius"),
    ({"attack.eps": f"0:1:1/{10 * MAX_EPS_VALUES}"}, "at most"),
    ({"attack.eps": "0:1:1/1000000000"}, "at most"),
])
def test_a_bad_training_or_attack_eps_is_refused_at_load(overrides, message):
    with pytest.raises(UsageError, match=message):
        load_config(None, {"adversarial.recipe": "pgd", **overrides})


def test_eps_ranges_keep_a_readable_written_form():
    config = load_config(None, {"attack.eps": "0:0.2:0.05"})
    assert [e.text for e in resolve(config, channels=1).eps] == ["0", "0.05", "0.1", "0.15", "0.2"]
    config = load_config(None, {"attack.eps": "0:8/255:2/255"})
    assert [e.text for e in resolve(config, channels=3).eps] == ["0", "2/255", "4/255", "6/255", "8/255"]


def test_examples_all_travels_as_all():
    assert resolve(load_config(None, {"attack.examples": "all"})).examples is None
    assert resolve(load_config(None, {"attack.examples": 250})).examples == 250
    assert resolve(load_config(None, {"attack.examples": None})).examples is None  # run folders of earlier releases


def test_adversarial_run_with_an_eps_range_trains_at_its_largest_eps(tmp_path):
    out = tmp_path / "robust"
    assert main(["run", "--adversarial", "pgd", "--eps", "0:0.2:0.05", "--epochs", "1", "--adv-steps", "2",
                 "--robust-val-examples", "64", "--n-examples", "64", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["adversarial"]["eps"] == pytest.approx(0.2)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["attack"]["eps"] == ["0:0.2:0.05"] and saved["adversarial"]["eps"] == "0.2"
    rows = metrics["evaluations"][-1]["robustness"]
    assert sorted({row["eps"] for row in rows}) == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    assert (out / "report.html").is_file()


def test_config_yaml_keeps_the_fractions_the_user_wrote(tmp_path):
    out = tmp_path / "fractions"
    assert main(["train", "--adversarial", "fgsm-rs", "--adv-eps", "8/255", "--eps", "0,4/255,8/255", "--epochs",
                 "1", "--robust-val-examples", "32", "--out", str(out), "--quiet"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adversarial"]["eps"] == "8/255" and saved["attack"]["eps"] == ["0", "4/255", "8/255"]


def test_one_number_in_a_yaml_file_is_a_list_of_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("attack:\n  eps: 0.5\n  norm: l2\nadversarial:\n  recipe: pgd\n  eps: 8/255\n")
    settings = resolve(load_config(path), channels=3)
    assert settings.config.attack.eps == ["0.5"] and settings.eps_values == [0.5]
    assert settings.train_eps.text == "8/255"
