import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Tuple

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_and_two_processes(tmp_path) -> Callable[[List[str]], Tuple[object, object]]:
    """``run(args)``: ``shiftadd.cli train`` with ``args`` in one process, then under ``torchrun
    --nproc_per_node 2`` (gloo, CPU); returns both runs' checkpoints (skips where torchrun is missing)."""
    from shiftadd.train import load_checkpoint

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(args: List[str]):
        launchers = {"one": [sys.executable],
                     "two": [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                             "--master_port", str(_free_port())]}
        for name, launcher in launchers.items():
            done = subprocess.run([*launcher, "-m", "shiftadd.cli", *args, "--out", str(tmp_path / name)],
                                  capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
            assert done.returncode == 0, f"{name} process(es): {done.stderr[-2000:]}"
        return load_checkpoint(str(tmp_path / "one")), load_checkpoint(str(tmp_path / "two"))

    return run
