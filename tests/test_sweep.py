"""`imgclf sweep`: validation of the sweep file, a sweep into run folders and its
report, and two processes sharing one SQLite study."""

import json
import subprocess
import sys
import textwrap

import optuna
import pytest
import yaml

from imgclf.cli import main
from imgclf.errors import UsageError
from imgclf.sweep import load_sweep

SWEEP = """
study: digits-mlp
trials: {trials}
startup_trials: 2
warmup_epochs: 0
base:
  data: {{dataset: digits}}
  model: {{name: mlp}}
  train: {{epochs: 3}}
search:
  train.lr: {{low: 3.0e-4, high: 1.0e-2, log: true}}
  model.options.hidden: {{low: 16, high: 128, log: true}}
"""


def write_sweep(tmp_path, trials=4, text=SWEEP):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text.format(trials=trials)))
    return path


@pytest.mark.parametrize("search, message", [
    ("{train.lrr: {low: 0.1, high: 1}}", "unknown setting train.'lrr'"),
    ("{train.lr: {low: 1, high: 0.1}}", "needs numbers low < high"),
    ("{train.lr: {low: 0, high: 1, log: true}}", "log scale needs low > 0"),
    ("{train.lr: {choices: []}}", "non-empty list"),
    ("{train.lr: {min: 1}}", "unknown key"),
    ("{}", "at least one setting"),
])
def test_bad_sweep_files_are_one_clear_error(tmp_path, search, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {{data: {{dataset: digits}}}}\nsearch: {search}\n")
    with pytest.raises(UsageError, match=message):
        load_sweep(path)


def test_unknown_sweep_key_and_missing_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("trails: 3\nsearch: {train.lr: [0.1, 0.01]}\n")
    with pytest.raises(UsageError, match="unknown sweep key"):
        load_sweep(path)
    assert main(["sweep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sweep_runs_trials_as_run_folders_and_writes_its_report(tmp_path, capsys):
    path = write_sweep(tmp_path, trials=5)
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "sweep.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == list(range(5))
    assert printed.count("trial ") == 5
    finished = [t for t in trials if t["state"] == "complete"]
    assert len(finished) >= 2  # the median pruner waits for 2 finished trials before pruning
    for t in trials:
        run = out / t["run"]
        assert (run / "config.yaml").is_file() and (run / "history.csv").is_file()
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["lr"] == pytest.approx(t["params"]["train.lr"])
        assert config["model"]["options"]["hidden"] == t["params"]["model.options.hidden"]
    for t in finished:
        metrics = json.loads((out / t["run"] / "metrics.json").read_text())
        assert t["value"] == metrics["training"]["best_val_accuracy"]  # chosen on validation, never test
        assert t["test_accuracy"] == metrics["clean"]["accuracy"]
        assert (out / t["run"] / "report.html").is_file()
    assert summary["best"]["value"] == max(t["value"] for t in finished)
    html = (out / "sweep.html").read_text()
    assert html.count("<tr") == 1 + 5  # the header and one row per trial
    assert (out / "figures" / "history.png").is_file() and (out / "figures" / "importances.png").is_file()
    assert set(summary["importances"]) == {"train.lr", "model.options.hidden"}
    assert f"trial-{summary['best']['number']:04d}/report.html" in html
    # running the same sweep again finds the study complete: no new trial, the report is rewritten
    assert main(["sweep", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 5
    # a folder that is not this sweep's is never written into
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["sweep", "--config", str(path), "--out", str(other)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err and (other / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    path = write_sweep(tmp_path, trials=8)
    out = tmp_path / "shared"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "imgclf", "sweep", "--config", str(path), "--out", str(out),
               "--storage", storage]
    workers = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for seed in (1, 2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="digits-mlp", storage=storage)
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in trials) == list(range(8))  # every trial once, none twice
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.get_trials())
    runs = sorted(p.name for p in out.glob("trial-*"))
    assert runs == [f"trial-{n:04d}" for n in range(8)]
    done_by = [stdout.count("trial ") for stdout, _ in outputs]
    assert all(count >= 1 for count in done_by), done_by  # both processes worked on the study
    assert sum(done_by) == 8


def test_a_resumed_sweep_draws_new_settings_and_runs_again_the_trial_of_a_killed_process(tmp_path, capsys):
    from imgclf.sweep import run_sweep

    path = write_sweep(tmp_path, trials=2)
    out = tmp_path / "resumed"
    run_sweep(path, out=out, quiet=True)
    storage = f"sqlite:///{(out / 'study.db').as_posix()}"
    study = optuna.load_study(study_name="digits-mlp", storage=storage)
    killed = study.ask()  # a trial whose process died: RUNNING, and no heartbeat for longer than the grace period
    study._storage.record_heartbeat(killed._trial_id)
    with optuna.storages.RDBStorage(storage).engine.begin() as connection:  # age the heartbeat
        connection.exec_driver_sql("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour')")
    run_sweep(path, trials=4, out=out, quiet=True)
    trials = optuna.load_study(study_name="digits-mlp", storage=storage).get_trials()
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL  # failed as stale, not counted
    done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 4 and len(trials) == 5
    first, later = [t.params for t in done[:2]], [t.params for t in done[2:]]
    assert all(params not in first for params in later)  # the second process did not repeat the first's draws


def test_two_processes_asking_at_once_for_the_last_trial_run_exactly_one():
    """The race behind a shared study: with one trial left, two processes ask at once; the trial with the lower
    number runs and the other is the surplus (counting every trial, both would give up)."""
    from imgclf.sweep import _counted

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for _ in range(7):
        study.tell(study.ask(), 0.5)
    first, second = study.ask(), study.ask()  # both asked before either counted
    assert _counted(study) == 9
    assert _counted(study, before=first.number) == 7  # runs: the 8th trial
    assert _counted(study, before=second.number) == 8  # surplus
