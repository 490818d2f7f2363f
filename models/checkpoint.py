"""Emulator checkpoints: tensors in safetensors, metadata in JSON beside them; nothing pickled.

A checkpoint is a directory:

    model.safetensors   the network weights
    metadata.json       format, kind, architecture (grid, truncation, variables, normalisation
                        statistics, network sizes), sha256 of the weights, training seed and
                        config, sha256 of the training data description, validation metrics,
                        package version and git revision

Loading checks the format, the weights' sha256 and the grid and variables against the run's
config, and raises `CheckpointError` with one line naming the checkpoint on any mismatch. The
emulator is rebuilt by its kind's entry in the registry (`models.kinds.KINDS[kind].load`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.provenance import git_revision, package_version
from wxens.models.kinds import KINDS

FORMAT = "wxens-emulator/1"
WEIGHTS = "model.safetensors"
METADATA = "metadata.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming it."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Any) -> None:
    """Call `write(temporary_path)`, then rename onto `path`: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    contiguous = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    write_atomically(path, lambda p: safetensors.torch.save_file(contiguous, str(p)))


def save_json(data: dict[str, Any], path: Path) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def save_checkpoint(emulator: Any, directory: Path, **metadata: Any) -> Path:
    """Write `emulator` to `directory` (weights first, then the metadata that vouches for them):
    its `weights()`, its `kind` and its `architecture()` (what its kind's `load`
    rebuilds it from)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(emulator.weights(), directory / WEIGHTS)
    save_json(
        {
            "format": FORMAT,
            "kind": emulator.kind,
            "architecture": emulator.architecture(),
            "weights_sha256": sha256_file(directory / WEIGHTS),
            **metadata,
            "wxens_version": package_version(),
            "git_revision": git_revision(),
        },
        directory / METADATA,
    )
    return directory


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a checkpoint (no {METADATA})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return metadata


def check_compatible(directory: Path, metadata: dict[str, Any], config: ExperimentConfig) -> None:
    """Refuse a checkpoint whose grid or variables differ from the run's config."""
    architecture = metadata["architecture"]
    grid = architecture["grid"]
    theirs = f"{grid['nlat']}x{grid['nlon']} T{architecture['truncation']}"
    ours = f"{config.grid.nlat}x{config.grid.nlon} T{config.grid.truncation}"
    if theirs != ours:
        raise CheckpointError(f"{directory}: trained on grid {theirs}, the config has {ours}")
    if list(architecture["variables"]) != list(config.variables):
        raise CheckpointError(
            f"{directory}: trained on variables {architecture['variables']},"
            f" the config has {config.variables}"
        )


def load_checkpoint(
    directory: str | Path,
    config: ExperimentConfig | None = None,
    device: torch.device | str = "cpu",
) -> Any:
    """The emulator saved in `directory`, in eval mode on `device`.

    With `config`, the checkpoint's grid and variables must match it, and the emulator runs
    at its `sfno.precision`.
    """
    directory = Path(directory)
    metadata = read_metadata(directory)
    kind = metadata.get("kind")
    known = KINDS.checkpointed()
    if kind not in known:
        raise CheckpointError(
            f"{directory}: unknown emulator kind {kind!r}; expected one of {', '.join(known)}"
        )
    if config is not None:
        check_compatible(directory, metadata, config)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS}")
    if sha256_file(weights) != metadata.get("weights_sha256"):
        raise CheckpointError(f"{weights}: sha256 differs from {METADATA} (corrupt or replaced)")
    try:
        emulator = KINDS[kind].load(metadata["architecture"])
        emulator.load_weights(safetensors.torch.load_file(str(weights)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{directory}: cannot be loaded ({first_line})") from None
    emulator.metadata = metadata
    if config is not None:
        emulator.use_precision(config.sfno.precision)
    return emulator.to(device).eval()


def find_checkpoints(paths: list[Path]) -> list[Path]:
    """Each path that is a checkpoint, or the checkpoints directly inside it (sorted)."""
    found = []
    for path in paths:
        if (path / METADATA).is_file():
            found.append(path)
            continue
        inside = sorted(p for p in path.glob("*") if (p / METADATA).is_file())
        if not inside:
            raise CheckpointError(f"{path}: neither a checkpoint nor a folder of checkpoints")
        found.extend(inside)
    return found


def checkpoint_labels(paths: list[Path]) -> dict[str, Path]:
    """A name for each checkpoint: its folder's name, or the fewest trailing path parts that
    no other checkpoint shares (`cut-short/sfno-seed1` beside `finished/sfno-seed1`).

    Raises CheckpointError when one checkpoint is named twice."""
    resolved = [path.resolve() for path in paths]
    if len(set(resolved)) < len(resolved):
        pairs = zip(paths, resolved, strict=True)
        twice = next(given for given, full in pairs if resolved.count(full) > 1)
        raise CheckpointError(f"{twice}: the same checkpoint is named twice")

    def label(full: Path) -> str:
        depth = 1
        while any(o != full and o.parts[-depth:] == full.parts[-depth:] for o in resolved):
            depth += 1
        return "/".join(full.parts[-depth:])

    return {label(full): given for full, given in zip(resolved, paths, strict=True)}
