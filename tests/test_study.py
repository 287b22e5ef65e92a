"""Studies on Ray Tune (docs/contracts.md, C5-C7): validation, spaces, a real smoke study, faults, the
dashboard. (Killing the driver and resuming: test_faults.py, test_resume.py, test_object_storage.py.)"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import TINY, stop_study

from catkd.study import runner
from catkd.study.__main__ import main as study_main
from catkd.study.keys import ALIASES
from catkd.study.space import DefineByRun
from catkd.study.load import load_study
from catkd.study.spec import expand_grid

REPO = Path(__file__).resolve().parents[1]



def study_file(tmp_path: Path, text: str = TINY, name: str = "study.yaml", **patch) -> Path:
    data = yaml.safe_load(text)
    for k, v in patch.items():
        node = data
        parts = k.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


# ---- validation: exit 2, nothing written, Ray not started -----------------------------------------
BROKEN = [
    ("unknown top-level key", {"colour": "red"}, "colour"),
    ("negative beta", {"space__beta": {"loguniform": [-1, 10]}}, "space.beta"),
    ("beta below zero in choice", {"space__beta": {"choice": [-3.0]}}, "CAT_KD.LOSS.CAT_loss_weight"),
    ("CAM resolution 0", {"space__cam_resolution": {"choice": [0]}}, "CAT_KD.LOSS.CAM_RESOLUTION"),
    ("CAM resolution larger than the CAMs", {"space__cam_resolution": {"choice": [64]}}, "CAM_RESOLUTION"),
    ("cam_count above the classes", {"space__cam_count": {"choice": [50], "when": {"partial_cams": True}}}, "CAMs_Nums"),
    ("reserved rate above 1", {"fixed": {"reserved_rate": 1.5}}, "DATASET.RESERVED_RATE"),
    ("unknown model", {"fixed": {"student": "resnet9000"}, "smoke": None}, "DISTILLER.STUDENT"),
    ("unknown distiller", {"space__distiller": {"choice": ["DKDX"]}}, "DISTILLER.TYPE"),
    ("unknown dimension", {"space__betta": {"choice": [1.0]}}, "space.betta"),
    ("optuna with grid dims only", {"space": [{"cam_resolution": {"grid": [1, 2]}}]}, "space[0]: nothing to search"),
    ("range under grid search", {"search": {"algorithm": "grid"}}, "space.beta"),
    ("unknown searcher", {"search": {"algorithm": "hyperband"}}, "search.algorithm"),
    ("grace period above epochs", {"scheduler": {"type": "asha", "grace_period": 50}, "fixed": {"SOLVER.EPOCHS": 3}, "metric": "test_acc",
                                    "smoke": None}, "scheduler.grace_period"),
    ("condition on a missing dimension", {"space__cam_count": {"choice": [1], "when": {"binarize": True}}}, "when.binarize"),
    ("val metric without a validation split", {"smoke": {"val_size": 0}}, "metric"),
    ("wrong type", {"search": {"num_samples": "many"}}, "search.num_samples"),
    ("missing base", {"base": "cifar100/CAT_KD/no_such_pair"}, "base"),
    # --smoke replaces these fields, but checks the real study first: a green smoke means it will start
    ("unknown model under --smoke", {"fixed": {"student": "resnet9000"}}, "DISTILLER.STUDENT"),
    ("cam_count above the real classes under --smoke",
     {"space__cam_count": {"choice": [500], "when": {"partial_cams": True}},
      "smoke": {"space": {"cam_count": {"choice": [2], "when": {"partial_cams": True}}}}}, "CAMs_Nums"),
    ("real metric without a validation split under --smoke", {"fixed": {"normalize": True}}, "metric"),
    # confirmation must be independent of the search
    ("confirm seed is a search seed", {"confirm": {"top_k": 1, "seeds": [0, 1]}}, "confirm.seeds"),
    ("smoke confirm seed is a smoke search seed",
     {"confirm": {"top_k": 1, "seeds": [1, 2]}, "smoke": {"confirm": {"top_k": 1, "seeds": [0]}}},
     "smoke.confirm.seeds"),
]


@pytest.mark.parametrize("label, patch, key", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_study_exits_2_naming_key_without_starting_ray_or_writing(tmp_path, monkeypatch, capsys, label, patch, key):
    data = yaml.safe_load(TINY)
    smoke = patch.get("smoke", {}) is not None  # None: check the full-scale study (smoke replaces models)
    patch = {k: v for k, v in patch.items() if v is not None}
    for k, v in patch.items():
        if "__" in k:
            a, b = k.split("__")
            data[a][b] = v
        elif isinstance(v, dict) and isinstance(data.get(k), dict) and k != "fixed":
            data[k].update(v)
        else:
            data[k] = v
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(runner, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    rc = study_main([str(p), *(["--smoke"] if smoke else []), "--no-dashboard", "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(p) in err and key in err, err
    assert not (tmp_path / "store").exists()


def test_unsafe_yaml_tag_in_a_study_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['touch pwned']\nbase: x\n")
    assert study_main([str(p), "--no-dashboard", "--storage", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "pwned").exists() and "yaml" in capsys.readouterr().err


def test_missing_dataset_and_teacher_are_reported_before_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CATKD_DATA", str(tmp_path / "nodata"))
    monkeypatch.setattr(runner, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    p = study_file(tmp_path, fixed={"DATASET.VAL_SIZE": 100})
    assert study_main([str(p), "--no-dashboard", "--storage", str(tmp_path / "s")]) == 2
    assert str(tmp_path / "nodata" / "cifar-100-python") in capsys.readouterr().err
    (tmp_path / "nodata" / "cifar-100-python").mkdir(parents=True)
    (tmp_path / "nodata" / "cifar-100-python" / "train").write_bytes(b"")
    monkeypatch.setenv("CATKD_TEACHERS", str(tmp_path / "teachers"))
    assert study_main([str(p), "--no-dashboard", "--storage", str(tmp_path / "s")]) == 2
    assert "resnet56_vanilla/ckpt_epoch_240.pth" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ---- spaces ---------------------------------------------------------------------------------------
def test_optuna_space_samples_count_only_when_partial_cams_is_on(tmp_path):
    spec = load_study(study_file(tmp_path), smoke=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = DefineByRun(spec)
    seen = set()
    partial, count = ALIASES["partial_cams"], ALIASES["cam_count"]  # named by their dotted keys once loaded
    for _ in range(40):
        trial = study.ask()
        assert space(trial) == {"EXPERIMENT.SEED": 0}
        p = trial.params
        seen.add(p[partial])
        assert (count in p) == p[partial]
        study.tell(trial, 1.0)
    assert seen == {True, False}


def test_grid_crosses_subgrids_with_seeds_and_honours_conditions(tmp_path):
    spec = load_study(REPO / "studies" / "partial_cams.yaml")
    grid = expand_grid(spec)
    assert len(grid) == (1 + 2 * 4) * 3  # (all CAMs + strategy x n) x 3 seeds
    partial, count = ALIASES["partial_cams"], ALIASES["cam_count"]
    assert sum(1 for g in grid if not g[partial]) == 3
    assert all((count in g) == g[partial] for g in grid)
    assert sorted({g["EXPERIMENT.SEED"] for g in grid}) == [0, 1, 2]


def test_summary_table_shows_settings_in_the_study_words_and_dashes_what_a_trial_never_varied():
    from catkd.study.progress import summary_table

    spec = load_study(REPO / "studies" / "partial_cams.yaml", smoke=True)
    base = {"stage": "search", "status": "finished", "epochs_done": 4, "last_test_acc": 1.0,
            "EXPERIMENT.SEED": 0, "CAT_KD.CAMs_Nums": 100, "CAT_KD.Strategy": 0}
    trials = [{**base, "trial_id": "all", "CAT_KD.IF_OnlyTransferPartialCAMs": False, "best_test_acc": 30.0},
              {**base, "trial_id": "low", "CAT_KD.IF_OnlyTransferPartialCAMs": True, "CAT_KD.Strategy": 1,
               "CAT_KD.CAMs_Nums": 5, "best_test_acc": 20.0},
              {**base, "trial_id": "top", "CAT_KD.IF_OnlyTransferPartialCAMs": True, "CAT_KD.CAMs_Nums": 5,
               "best_test_acc": 10.0}]
    rows = {line.split()[1]: line.split() for line in summary_table(trials, spec).splitlines()[3:]}
    # columns: stage trial status partial_cams cam_strategy cam_count seed epochs ...
    assert rows["all"][3:6] == ["False", "-", "-"]  # its config's Strategy 0 / 100 CAMs: defaults, not settings
    assert rows["low"][3:6] == ["True", "lowest", "5"]
    assert rows["top"][3:6] == ["True", "top", "5"]


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_validates_full_and_smoke(path, tmp_path):
    from _helpers import students_experiment

    # a transfer study probes the students of another experiment: one made here stands in for it
    sets = {"from": str(students_experiment(tmp_path))} if "from" in yaml.safe_load(path.read_text()) else None
    full = load_study(path, sets=sets)
    smoke = load_study(path, smoke=True)
    assert full.description and smoke.smoke_mode
    assert full.resources.gpu > 0  # sized for GPUs at real scale


# ---- a real smoke study on Ray (tiny_study: conftest's session-wide smoke study, with its confirm stage) -


@pytest.mark.ray
def test_smoke_study_writes_parquet_with_contract_columns_and_statuses(tiny_study):
    rows = [r for r in pq.read_table(tiny_study / "results.parquet").to_pylist() if r["stage"] == "search"]
    trials = [t for t in pq.read_table(tiny_study / "trials.parquet").to_pylist() if t["stage"] == "search"]
    assert len(trials) == 6
    for col in ("trial_id", "study", "seed", "epoch", "lr", "train_loss", "loss_ce", "loss_cat", "train_acc",
                "val_acc", "test_acc", "test_acc_top5", "epoch_seconds", "images_per_second",
                "CAT_KD.LOSS.CAT_loss_weight", "CAT_KD.IF_OnlyTransferPartialCAMs"):
        assert col in rows[0], col
    for col in ("status", "epochs_done", "best_val_acc", "best_test_acc", "last_test_acc", "wall_seconds"):
        assert col in trials[0], col
    # one row per trial per epoch, each exactly once
    pairs = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == sum(t["epochs_done"] for t in trials)
    statuses = {t["status"] for t in trials}
    assert statuses <= {"finished", "stopped"}
    assert "stopped" in statuses and "finished" in statuses  # ASHA stopped some trials
    for t in trials:
        if t["status"] == "stopped":
            assert t["epochs_done"] < 4
    spec = yaml.safe_load((tiny_study / "study.yaml").read_text())
    assert spec["smoke_mode"] is True and spec["fixed"]["DATASET.TYPE"] == "synthetic"
    # TensorBoard event files where Tune puts them
    assert list(tiny_study.glob("trial_*/events.out.tfevents*"))


@pytest.mark.ray
def test_confirm_stage_reruns_the_best_search_config_with_each_seed_at_full_budget(tiny_study):
    trials = pq.read_table(tiny_study / "trials.parquet").to_pylist()
    search = [t for t in trials if t["stage"] == "search"]
    confirm = [t for t in trials if t["stage"] == "confirm"]
    best = max(search, key=lambda t: t["best_val_acc"] if t["status"] == "finished" else -1)
    assert sorted(t["EXPERIMENT.SEED"] for t in confirm) == [1, 2]  # new seeds, not the search seed 0
    for t in confirm:
        assert t["status"] == "finished" and t["epochs_done"] == 4
        assert t["CAT_KD.LOSS.CAT_loss_weight"] == best["CAT_KD.LOSS.CAT_loss_weight"]
        assert t["CAT_KD.IF_OnlyTransferPartialCAMs"] == best["CAT_KD.IF_OnlyTransferPartialCAMs"]
    assert (tiny_study / "confirm").is_dir()
    assert json.loads((tiny_study / "stage.json").read_text()) == {"search": "done", "confirm": "done"}


@pytest.mark.ray
def test_every_trial_keeps_its_own_files_even_on_a_reused_worker(tiny_study):
    # max_concurrent 1: trials 2..6 run on the first trial's reused actor
    trials = pq.read_table(tiny_study / "trials.parquet").to_pylist()
    assert len(trials) == 8
    for t in trials:
        run = Path(t["trial_dir"]) / "run"
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(1, t["epochs_done"] + 1)), t["trial_id"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["CAT_KD"]["LOSS"]["CAT_loss_weight"] == t["CAT_KD.LOSS.CAT_loss_weight"]
        assert (run / "student_best.pth").is_file()


@pytest.mark.ray
def test_asha_stopped_trials_are_pruned_not_complete_in_optuna(tiny_study):
    import pickle

    saved = list(tiny_study.glob("searcher-state-*.pkl"))
    assert saved
    with open(saved[0], "rb") as f:
        state = pickle.load(f)
    study = state["_ot_study"] if isinstance(state, dict) else state[0]
    trials = [t for t in pq.read_table(tiny_study / "trials.parquet").to_pylist() if t["stage"] == "search"]
    n_stopped = sum(t["status"] == "stopped" for t in trials)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == n_stopped > 0
    # Optuna learns from the value that got each trial stopped: its intermediate value at its last epoch
    rows = [r for r in pq.read_table(tiny_study / "results.parquet").to_pylist() if r["stage"] == "search"]
    last = {}
    for r in sorted(rows, key=lambda r: r["epoch"]):
        last[r["CAT_KD.LOSS.CAT_loss_weight"]] = (r["epoch"], r["val_acc"])
    for t in pruned:
        epoch, val = last[t.params["CAT_KD.LOSS.CAT_loss_weight"]]
        assert t.intermediate_values.get(epoch) == pytest.approx(val), (t.number, t.intermediate_values, epoch)
    for t in study.trials:  # every reported epoch is one intermediate value, at its epoch
        assert sorted(t.intermediate_values) == list(range(1, last[t.params["CAT_KD.LOSS.CAT_loss_weight"]][0] + 1))


@pytest.mark.ray
def test_diverging_trial_is_marked_diverged_not_retried_and_others_finish(tmp_path, ray_session, smoke_teacher):
    p = study_file(tmp_path, space={"lr": {"grid": [0.05, 1.0e12]}}, search={"algorithm": "grid"},
                   scheduler={"type": "fifo"}, metric="test_acc")
    spec = load_study(p, smoke=True, sets={"smoke.epochs": 2, "smoke.val_size": 0})
    smoke_teacher(spec, tmp_path / "s")
    assert runner.run_study(spec, str(p), tmp_path / "s", "div", dashboard=False) == 0
    trials = {t["SOLVER.LR"]: t for t in pq.read_table(tmp_path / "s" / "div" / "trials.parquet").to_pylist()}
    assert trials[1.0e12]["status"] == "diverged"
    assert trials[0.05]["status"] == "finished" and trials[0.05]["epochs_done"] == 2
    bad_dir = Path(trials[1.0e12]["trial_dir"])
    assert not (bad_dir / "error.txt").exists()  # returned normally: nothing for FailureConfig to retry


@pytest.mark.ray
def test_an_alias_and_its_name_land_as_one_name_in_results_and_one_group_in_the_report(tmp_path, ray_session,
                                                                                       smoke_teacher):
    p = study_file(tmp_path, space={"distiller": {"grid": ["vanilla", "NONE"]}}, search={"algorithm": "grid"},
                   scheduler={"type": "fifo"}, metric="test_acc")
    spec = load_study(p, smoke=True, sets={"smoke.epochs": 1, "smoke.val_size": 0})
    smoke_teacher(spec, tmp_path / "s")
    assert runner.run_study(spec, str(p), tmp_path / "s", "alias", dashboard=False) == 0
    exp = tmp_path / "s" / "alias"
    trials = pq.read_table(exp / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["DISTILLER.TYPE"] for t in trials} == {"NONE"}
    assert set(pq.read_table(exp / "results.parquet").column("DISTILLER.TYPE").to_pylist()) == {"NONE"}
    from analysis import tables
    from analysis.load import load

    t = tables.build(load(exp))[0]
    assert len(t.rows) == 1 and "(2)" in " ".join(t.rows[0])  # one configuration, n = 2


@pytest.mark.ray
def test_trial_whose_worker_dies_is_retried_from_its_checkpoint(tmp_path, ray_session, monkeypatch, smoke_teacher):
    marker = tmp_path / "worker_killed"
    monkeypatch.setenv("CATKD_INJECT_WORKER_EXIT", f"3:{marker}")
    p = study_file(tmp_path, space={"beta": {"grid": [10.0]}}, search={"algorithm": "grid"},
                   scheduler={"type": "fifo"})
    spec = load_study(p, smoke=True)
    smoke_teacher(spec, tmp_path / "s")
    assert runner.run_study(spec, str(p), tmp_path / "s", "crash", dashboard=False) == 0
    assert marker.exists()  # the worker really died once
    rows = pq.read_table(tmp_path / "s" / "crash" / "results.parquet").to_pylist()
    assert sorted(r["epoch"] for r in rows) == [1, 2, 3, 4]
    (trial,) = pq.read_table(tmp_path / "s" / "crash" / "trials.parquet").to_pylist()
    assert trial["status"] == "finished"
    results = [json.loads(l) for l in (Path(trial["trial_dir"]) / "result.json").read_text().splitlines()]
    epochs = [r["epoch"] for r in results]
    assert epochs == [1, 2, 3, 4]  # restored from epoch 2's checkpoint: epoch 3 reported once, not 1 again


def dashboard_url(proc: subprocess.Popen, timeout: float = 180) -> tuple[str, list[str]]:
    """Read a study driver's output until it prints the dashboard address; it must be on 127.0.0.1."""
    url, lines = None, []
    deadline = time.time() + timeout
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"Ray dashboard: (http://[\d.:]+)", line)
        url = m.group(1) if m else None
    assert url and url.startswith("http://127.0.0.1:"), "".join(lines)
    return url, lines


@pytest.mark.ray
def test_report_turns_a_real_smoke_study_into_tables_and_plots(tiny_study, tmp_path, capsys):
    from analysis import report

    assert report.main([str(tiny_study), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "SMOKE" in md and "confirm" in md.lower()
    pngs = list((tmp_path / "rep").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


@pytest.mark.ray
def test_dashboard_answers_on_localhost_behind_token_authentication_and_shows_running_trials(tmp_path, smoke_teacher):
    import urllib.error
    import urllib.request

    p = study_file(tmp_path, space={"beta": {"grid": [5.0, 50.0]}}, search={"algorithm": "grid"},
                   scheduler={"type": "fifo"})
    ray_tmp = Path(os.environ["RAY_TMPDIR"]) / "dash"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token authentication
    env.update({"RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1", "HOME": str(home)})
    cmd = [sys.executable, "-m", "catkd.study", str(p), "--smoke", "--storage", str(tmp_path / "s"),
           "--set", "smoke.epochs=8"]
    smoke_teacher(p, tmp_path / "s", {"smoke.epochs": 8})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = dashboard_url(proc)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/api/v0/actors", timeout=10)
        assert denied.value.code == 401  # no token, no API
        token = (home / ".ray" / "auth_token").read_text().strip()
        lines.append(proc.stdout.readline())
        assert any(str(home / ".ray" / "auth_token") in l for l in lines), "".join(lines)  # told where the token is

        def get(path: str):
            return urllib.request.urlopen(urllib.request.Request(
                f"{url}{path}", headers={"Authorization": f"Bearer {token}"}), timeout=10)

        assert get("/").status == 200
        seen_trial, deadline = False, time.time() + 180
        while time.time() < deadline and not seen_trial:
            try:
                body = get("/api/v0/actors?detail=1").read().decode()
                seen_trial = "ImplicitFunc" in body and "ALIVE" in body
            except OSError:
                pass
            time.sleep(1)
        assert seen_trial, "no running trial visible through the state API"
    finally:
        stop_study(proc, ray_tmp)


@pytest.mark.parametrize("stats", ["0", "1"])
def test_tunes_callback_census_imports_no_tracker_integration_while_usage_statistics_are_off(stats):
    """The driver's Tuner counts its callbacks for Ray's usage statistics by importing MLflow and the
    other integrations (0.8 s of CPU a driver); catkd skips the count while the statistics are off, and
    leaves it alone when a user turned them on."""
    code = ("import sys\nfrom catkd.study import stages\nstages._skip_callback_census()\n"
            "from ray import tune\nfrom ray.air._internal import usage\nusage.tag_callbacks([tune.Callback()])\n"
            "print('mlflow' in sys.modules)")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": stats}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ("False" if stats == "0" else "True")
