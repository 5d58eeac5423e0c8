"""`shiftadd ... | head -1`: a reader that stops early ends the command quietly (exit 141, no traceback)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shiftadd.cli import BROKEN_PIPE_EXIT

ROOT = Path(__file__).resolve().parents[1]


def run_into_closed_pipe(argv, unbuffered):
    """Run ``shiftadd argv`` with stdout a pipe whose reader has already gone (like ``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command starts: every write to stdout fails, no race
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.run([sys.executable, "-m", "shiftadd.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=300)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize("argv, unbuffered", [
    (["models"], True),                                # print() fails inside the command
    (["models"], False),                               # buffered: fails at the final flush
    (["energy", "--model", "resnet8", "--json"], False),
    (["--help"], False),                               # argparse's own output
])
def test_closed_pipe_exits_quietly(argv, unbuffered):
    code, err = run_into_closed_pipe(argv, unbuffered)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert err == ""
    assert code == BROKEN_PIPE_EXIT == 141
