"""The shipped configs and checkpoints: every config loads, and every checkpoint it names is
found, matches its grid and variables, and loads with the weights its metadata hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from wxens.data_pipeline.config import ExperimentConfig, load_config
from wxens.models.checkpoint import find_checkpoints, load_checkpoint, read_metadata

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def named_checkpoints(config: ExperimentConfig) -> list[Path]:
    """The checkpoints a config names: the ensemble's and the diffusion's mean networks."""
    named = list(config.ensemble.checkpoints)
    named += [p for kind in config.ensemble.kinds.values() for p in kind.mean_checkpoints]
    return find_checkpoints([ROOT / p for p in named]) if named else []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_with_the_checkpoints_it_names(path: Path) -> None:
    config = load_config(path)
    for checkpoint in named_checkpoints(config):
        emulator = load_checkpoint(checkpoint, config)
        assert emulator.metadata["architecture"]["variables"] == config.variables


def test_the_finished_checkpoints_continue_the_committed_ones() -> None:
    """checkpoints/default-finished/sfno-seedN is checkpoints/default/sfno-seedN trained to the
    end of its schedule: it continues those weights from the step they stopped at, runs the
    schedule's 8 epochs to the end, and validates better than they did on the same analyses."""
    finished = find_checkpoints([ROOT / "checkpoints/default-finished"])
    assert [p.name for p in finished] == [f"sfno-seed{seed}" for seed in (1, 2, 3, 4)]
    for path in finished:
        metadata = read_metadata(path)
        committed = read_metadata(ROOT / "checkpoints/default" / path.name)
        training = metadata["training"]
        assert training["continues"] == {
            "weights_sha256": committed["weights_sha256"],
            "step": committed["training"]["step"],
        }
        assert training["finished"] and not committed["training"]["finished"]
        assert [epoch["epoch"] for epoch in training["history"]] == list(range(8))
        assert training["epoch"] in (7, 8)  # the best epoch's weights: after the 7th or 8th
        assert metadata["validation"]["score"] < training["start_validation"]["score"]
