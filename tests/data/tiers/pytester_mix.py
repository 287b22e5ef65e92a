import subprocess
import sys


def test_plain():
    pass


def test_reads_a_finished_study(finished_study):
    assert finished_study


def test_study_command(tmp_path):
    subprocess.run([sys.executable, "-m", "catkd.study", "--help"])
