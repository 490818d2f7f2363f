"""`keep_freed_memory`: a task thread reuses the memory of its freed activations instead of
page-faulting fresh pages every SFNO step (minor page faults, counted in a fresh process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

THREAD_FAULTS = """
import resource, sys, threading
from pathlib import Path
import torch
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.models.checkpoint import load_checkpoint
if sys.argv[1] == "keep":
    keep_freed_memory()
root = Path(sys.argv[2])
config = load_config(root / "configs/demo.yaml")
emulator = load_checkpoint(root / "checkpoints/default/sfno-seed1", config)

@torch.no_grad()
def steps():  # as a runner task: one torch thread, forward passes of 8 members
    torch.set_num_threads(1)
    state = torch.randn(8, 2, 33, 64) * 1e7
    emulator.step(state)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(8):
        emulator.step(state)
    print((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) // 8)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
"""


def faults_per_step(mode: str) -> int:
    # glibc's defaults in the child, whatever an earlier `keep_freed_memory` here exported
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    run = subprocess.run(
        [sys.executable, "-c", THREAD_FAULTS, mode, str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_task_thread_reuses_freed_memory():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default > 1000  # glibc's thread arena unmaps each step's activations
    assert kept < default / 10
