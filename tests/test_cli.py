"""The command-line entry points end without the interpreter's teardown, and lose nothing by it."""
from __future__ import annotations

import subprocess
import sys


def test_exit_now_runs_the_exit_handlers_flushes_output_and_keeps_the_exit_code(tmp_path):
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, sys\n"
        "from catkd.cli import exit_now\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "print('to stdout without a newline', end='')\n"
        "sys.stderr.write('to stderr')\n"
        "exit_now(3)\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stdout == "to stdout without a newline"  # piped, so block-buffered: flushed by exit_now
    assert done.stderr == "to stderr"
    assert marker.read_text() == "ran"


def test_the_study_command_exits_with_its_code_and_its_full_message_on_bad_input(tmp_path):
    study = tmp_path / "typo.yaml"
    study.write_text("name: t\nbase: cifar100/CAT_KD/res56_res20\nsearch: {algoritm: grid}\n")
    done = subprocess.run([sys.executable, "-m", "catkd.study", str(study), "--smoke", "--storage", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "algoritm" in done.stderr and str(study) in done.stderr
    assert not (tmp_path / "s").exists()
