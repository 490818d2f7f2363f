"""Which dask scheduler runs a verification: `threads`, `local-cluster:N` or an address."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import dask
from wxens.verification.errors import ScoreError


@contextlib.contextmanager
def dask_scheduler(spec: str = "threads", progress: bool = True) -> Iterator[None]:
    """Run the dask computations inside the block on the scheduler named by `spec`.

    - `threads`: dask's threaded scheduler in this process (the default);
    - `local-cluster:N`: a `distributed.LocalCluster` with N single-threaded worker processes;
    - anything else is a scheduler address (`tcp://host:8786`), e.g. one started by
      dask-jobqueue's `SLURMCluster`/`PBSCluster` (`cluster.scheduler_address`).

    Example:
        >>> import dask.array
        >>> with dask_scheduler("threads", progress=False):
        ...     int(dask.array.ones(10, chunks=5).sum().compute())
        10
    """
    if spec == "threads":
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
        with dask.config.set(scheduler="threads"), bar:
            yield
        return
    from distributed import Client, LocalCluster

    if spec.startswith("local-cluster:"):
        workers = spec.removeprefix("local-cluster:")
        if not workers.isdigit() or int(workers) < 1:
            raise ScoreError(f"scheduler {spec!r}: expected local-cluster:N with N >= 1")
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True)
        with cluster, Client(cluster):
            yield
        return
    if "://" not in spec:
        raise ScoreError(
            f"scheduler {spec!r}: expected threads, local-cluster:N or a scheduler address"
        )
    with Client(spec):
        yield
