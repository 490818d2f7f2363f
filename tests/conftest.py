"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pyproj  # noqa: F401 - before any test loads eccodes (cfgrib); see verification.verify
import pytest
import yaml


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real sample data folder: `$WXENS_SAMPLE_DATA`, else `../shared/data` beside the repo."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("WXENS_SAMPLE_DATA", default))
    if not path.is_dir():
        message = f"sample data not found at {path} (set WXENS_SAMPLE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has ../shared beside the clone
        pytest.skip(message)
    return path


TINY_WORLD = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
"""The tiny world: a T10 truth on a 9 x 16 grid (`configs/tiny.yaml`)."""


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, Path]:
    """A real three-year truth store of a tiny world (T10 truth, 9 x 16 grid at T4) and its
    config (with `analyses:` pointing at the store): train 2025, validate 2026, test 2027."""
    import yaml
    from wxens.data_pipeline.config import parse_config
    from wxens.data_pipeline.truth import write_truth

    folder = tmp_path_factory.mktemp("tiny_world")
    store = folder / "truth.zarr"
    data = {**TINY_WORLD, "analyses": str(store)}
    config = parse_config(data)
    write_truth(config, config.model_dump(mode="json"), 3, store, quiet=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, store


@pytest.fixture(scope="session")
def wxens():
    """Run `wxens ARGS...` in this process; returns (exit code, stdout and stderr)."""
    from typer.testing import CliRunner
    from wxens.forecast.cli import app

    runner = CliRunner()

    def run(*args) -> tuple[int, str]:
        result = runner.invoke(app, [str(arg) for arg in args])
        crash = result.exception if not isinstance(result.exception, SystemExit) else None
        return result.exit_code, result.output + (f"\n{crash!r}" if crash else "")

    return run


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_world, tmp_path_factory, wxens) -> Path:
    """A folder of two real SFNO checkpoints of the tiny world (seeds 1 and 2, short runs)."""
    path, _ = tiny_world
    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    for seed in (1, 2):
        code, output = wxens(
            "train",
            "--config",
            path,
            "--seed",
            seed,
            "--out",
            folder / f"sfno-seed{seed}",
            "--quiet",
        )
        assert code == 0, output
    return folder
