"""Provenance attributes recorded in every store the project writes."""

from __future__ import annotations

import datetime as dt
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml


def package_version() -> str:
    try:
        return version("wxens")
    except PackageNotFoundError:
        return "unknown"


def git_revision() -> str:
    """The repository's HEAD commit (with `-dirty` for local code changes), or "unknown".

    Changes under `checkpoints/` are data, not code, and do not make the tree dirty.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!checkpoints",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def provenance(config_dict: dict, command: str, **options: object) -> dict[str, object]:
    """Attributes for a store: the config as YAML, the command and its options, versions."""
    return {
        "wxens_config": yaml.safe_dump(config_dict, sort_keys=False),
        "wxens_command": command,
        "wxens_options": yaml.safe_dump({k: str(v) for k, v in options.items()}, sort_keys=True),
        "wxens_version": package_version(),
        "git_revision": git_revision(),
        "history": f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {command}",
    }
