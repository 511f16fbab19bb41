import pytest

from imgclf.config import config_from_dict, dump_config, load_config
from imgclf.errors import UsageError
from imgclf.settings import DEFAULT_EPS
from imgclf.settings import parse_eps as parse_eps_texts


def parse_eps(values, norm="linf"):
    return [eps.value for eps in parse_eps_texts(values, norm)]


def test_parse_eps_accepts_fractions_decimals_lists_and_ranges():
    assert parse_eps("8/255") == [8 / 255]
    assert parse_eps("0,0.03, 1/255") == [0.0, 0.03, 1 / 255]
    assert parse_eps(["0", 0.1]) == [0.0, 0.1]
    assert parse_eps("0:8/255:2/255") == pytest.approx([0, 2 / 255, 4 / 255, 6 / 255, 8 / 255])
    assert parse_eps(list(DEFAULT_EPS[('linf', 1)])) == [0, 0.05, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("bad, words", [
    ("abc", "invalid eps 'abc'"),
    ("-1", "must be in [0, 1] under linf"),
    ("2", "must be in [0, 1] under linf"),
    ("1/0", "invalid eps"),
    ("0:1/255", "start:stop:step"),
    ("0:1/255:0", "step > 0"),
    ("", "no eps given"),
])
def test_parse_eps_rejects_bad_values_with_one_clear_sentence(bad, words):
    with pytest.raises(UsageError) as error:
        parse_eps(bad)
    assert words in str(error.value)


def test_unknown_keys_and_bad_values_name_the_setting_and_the_choices():
    with pytest.raises(UsageError, match=r"unknown setting train\.'epoch'.*valid settings.*epochs"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(UsageError, match="train.epochs must be an integer"):
        config_from_dict({"train": {"epochs": "many"}})
    with pytest.raises(UsageError, match="valid choices: adam, adamw, sgd"):
        config_from_dict({"train": {"optimizer": "lion"}})
    with pytest.raises(UsageError, match="valid choices: apgd-ce, .*, square"):
        config_from_dict({"attack": {"attacks": "fgsm,cw"}})
    with pytest.raises(UsageError, match="unknown config key 'optimizer'"):
        config_from_dict({"optimizer": "sgd"})
    with pytest.raises(UsageError, match=r"data.val_fraction must be a number in \(0, 1\), got 1.5"):
        config_from_dict({"data": {"val_fraction": 1.5}})
    with pytest.raises(UsageError, match=r"got \[55, 75, 90\]: give --milestones for the epochs you train"):
        load_config(None, {"recipe": "trades-mnist", "train.epochs": 10})  # the recipe's milestones are of 100
    assert load_config(None, {"recipe": "trades-mnist", "train.epochs": 10, "train.milestones": [6, 8, 9]})
    with pytest.raises(UsageError, match=r"train.cyclic_peak must be a number in \(0, 1\), got 1.0"):
        config_from_dict({"train": {"cyclic_peak": 1.0}})


def test_flags_override_the_yaml_file_and_the_dump_reads_back(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  dataset: mnist\ntrain:\n  epochs: 3\n  lr: 0.01\nattack:\n  eps: [0, 8/255]\n")
    config = load_config(path, {"train.epochs": 5, "model.name": "mlp", "model.options.hidden": 64})
    assert config.data.dataset == "mnist"
    assert (config.train.epochs, config.train.lr) == (5, 0.01)
    assert config.model.options == {"hidden": 64}
    assert config.attack.eps == ["0", "8/255"]
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


def test_config_file_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)


def test_attack_presets_expand_and_l2_eps_may_exceed_one():
    from imgclf.attacks import expand_attacks as attack_names

    assert attack_names(["quick"]) == ["fgsm", "pgd"]
    assert attack_names(["full", "pgd", "square"]) == ["apgd-ce", "apgd-t", "fab-t", "square", "pgd"]
    assert parse_eps("0,1.5,3", "l2") == [0, 1.5, 3]
    with pytest.raises(UsageError, match="must be >= 0 under l2"):
        parse_eps("-1", "l2")
