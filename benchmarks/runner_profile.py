"""Where the time of one `wxens forecast` task goes, on one core: the forward, the rest of the
step, the initial perturbations, the store writes and the padding.

    python benchmarks/runner_profile.py [--config configs/demo.yaml] [--members 100]
        [--steps 20] [--init 2031-01-16]      # after `make demo` (its truth)

Runs one task (one init, `--members` members) through `run_configured_ensemble` on one
worker thread (`threads:1`, batch size = members), with timers around the emulators' networks
(`SFNOEmulator.runtime_network`'s result), their whole `step`, the initial perturbations
and `EnsembleStore.write` (which runs on the task's writer thread, beside the steps). Prints
each as seconds and as a share of the task's wall clock, and the padding: forward-pass slots
that step no member.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.forecast.ensemble_store import EnsembleStore
from wxens.forecast.runner import MemberForecaster, RunOptions, run_configured_ensemble
from wxens.models.emulator import FixedBatchEmulator
from wxens.models.sfno import SFNOEmulator

SECONDS: dict[tuple[str, str], float] = defaultdict(float)
SLOTS = {"used": 0, "padding": 0}


PHASE = ["forecast"]
"""What the task is doing: its `forecast` steps, or breeding its initial `perturbation`."""


def timed(name: str, function: Callable) -> Callable:
    """`function`, adding its wall time to SECONDS[(phase, name)]."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[PHASE[-1], name] += time.perf_counter() - started

    return wrapper


def in_phase(phase: str, function: Callable) -> Callable:
    """`function`, timed as `phase`, with the timers inside it counted in that phase."""
    timed_function = timed(phase, function)

    def wrapper(*args, **kwargs):
        PHASE.append(phase)
        try:
            return timed_function(*args, **kwargs)
        finally:
            PHASE.pop()

    return wrapper


def instrument() -> None:
    """Timers on the step, the network inside it, the initial perturbations and the writes,
    and a slot count on the padded forward passes (wrapped class methods: every forecaster
    the run builds is timed)."""
    runtime_network = SFNOEmulator.runtime_network
    SFNOEmulator.runtime_network = lambda self: timed("network", runtime_network(self))
    for kind in (SFNOEmulator, *SFNOEmulator.__subclasses__()):
        if "step" in vars(kind):
            kind.step = timed("step", kind.step)
    EnsembleStore.write = timed("writes", EnsembleStore.write)
    fixed_step, forecaster_init = FixedBatchEmulator.step, MemberForecaster.__init__

    def counted_step(self, state, *, generator=None):
        SLOTS["used"] += len(state)
        SLOTS["padding"] += -len(state) % self.size
        return fixed_step(self, state, generator=generator)

    def timed_perturbations(self, *args, **kwargs):
        forecaster_init(self, *args, **kwargs)
        self.perturbations = [in_phase("perturbation", p) for p in self.perturbations]

    FixedBatchEmulator.step = counted_step
    MemberForecaster.__init__ = timed_perturbations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--init", default="2031-01-16T00")
    args = parser.parse_args()
    keep_freed_memory()
    instrument()
    init = np.datetime64(args.init, "ns")
    with tempfile.TemporaryDirectory() as folder:
        options = RunOptions(
            Path(folder) / "profile.zarr",
            batch_size=args.members,
            scheduler="threads:1",
            quiet=True,
        )
        started = time.perf_counter()
        summary = run_configured_ensemble(
            load_config(args.config), [init], args.members, f"{6 * args.steps}h", options
        )
        wall = time.perf_counter() - started
    task = args.members * args.steps / summary.member_steps_per_second
    forecast = {name: SECONDS["forecast", name] for name in ("network", "step", "writes")}
    breeding = SECONDS["perturbation", "perturbation"]
    rows = {
        "network forward": forecast["network"],
        "rest of the step (features, projection, patterns)": forecast["step"] - forecast["network"],
        "initial perturbations (breeding steps included)": breeding,
        "the loop outside the steps (gather, scatter, copies)": task - forecast["step"] - breeding,
        "store writes (on the writer thread, beside the steps)": forecast["writes"],
    }
    print(
        f"one task: {args.members} members x {args.steps} steps on one thread, {task:.1f} s"
        f" ({wall:.1f} s with start-up), {summary.member_steps_per_second:.1f} member-steps/s"
    )
    for name, seconds in rows.items():
        print(f"{name:56}{seconds:8.2f} s{seconds / task:8.1%}")
    slots = SLOTS["used"] + SLOTS["padding"]
    padding = SLOTS["padding"]
    print(f"padding: {padding} of {slots} forward-pass slots ({padding / slots:.1%})")


if __name__ == "__main__":
    main()
