"""Synthetic tests for tests/test_tiers.py: the detector must classify each as its name says. (Kept
out of test_tiers.py: the detector reads the helpers a test names, so naming these there would mark
the detector's own test e2e.)"""
import subprocess
import sys

SCRIPT = "from ray.cluster_utils import Cluster\ncluster = Cluster(initialize_head=True)\n"


def fixture_with_ray(ray_session):
    return ray_session


def fixture_on_top(fixture_with_ray):  # depends on Ray through another fixture
    return fixture_with_ray


def runs_a_study_driver(tmp):
    return subprocess.run([sys.executable, "-m", "catkd.study", str(tmp)])


def fast_reads_numbers():
    assert sum([1, 2]) == 3


def fast_monkeypatches_ray_init_away(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: None)  # names ray.init, calls nothing
    subprocess.run([sys.executable, "-c", "print('catkd')"])


def e2e_runs_a_study_through_a_helper(tmp_path):
    runs_a_study_driver(tmp_path)


def e2e_runs_a_cluster_script(tmp_path):
    subprocess.run([sys.executable, "-c", SCRIPT])


def e2e_runs_the_runner_in_process(spec, tmp_path):
    from catkd.study import runner

    runner.run_study(spec, "x", tmp_path, "x")


def fast_reads_import_edges(edges):
    return [m for m in edges if m.startswith(("catkd.study", "analysis"))]  # a module name, no command


def fast_checks_a_study_by_the_api(tmp_path):
    import catkd.study

    catkd.study.run(tmp_path / "broken.yaml")  # bad input: an error before Ray; the guard stops any other


def e2e_trains_with_tune():
    from ray import tune

    tune.Tuner(lambda config: None).fit()


# what the guard stops in a fast-tier test (test_tiers calls these through the module, unseen by the detector)
def start_ray():
    import ray

    ray.init(num_cpus=1)


def start_a_study_driver():
    subprocess.run([sys.executable, "-m", "catkd.study", "--help"])


# (test, its fixtures, the sign the detector must name or None for the fast tier)
CASES = [
    (fast_reads_numbers, [], None),
    (fast_monkeypatches_ray_init_away, [], None),
    (fast_reads_numbers, [fixture_on_top, fixture_with_ray], "ray_session"),
    (e2e_runs_a_study_through_a_helper, [], "-m catkd.study"),
    (e2e_runs_a_cluster_script, [], "cluster_utils"),
    (e2e_runs_the_runner_in_process, [], "run_study("),
    (e2e_trains_with_tune, [], "Tuner("),
    (fast_reads_import_edges, [], None),
    (fast_checks_a_study_by_the_api, [], None),
]
