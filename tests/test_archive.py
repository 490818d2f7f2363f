"""The forecast archive (`forecast.archive`): appended init by init, idempotent, atomic per
init under SIGKILL and a full disk, read in time order, one writer, readers never see a
partial init, and another ensemble refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_api import Advection, analyses, bump
from wxens.data_pipeline.analysis_store import StoreError, StoreLock

import wxens

TESTS = Path(__file__).resolve().parent
TRUTH = analyses(16)
INITS = TRUTH.time.values[[4, 1, 6, 2]]  # out of order: a backfill of older dates among them
ENSEMBLE = {"n_members": 24, "lead_time": "48h", "perturbation": bump, "seed": 3}
WRITER = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_api import Advection, analyses, bump
import wxens
truth = analyses(16)
inits = truth.time.values[{indices}]
print("ready", flush=True)
wxens.run_ensemble([Advection(0.1), Advection(0.5)], truth, inits, 24, "48h",
    perturbation=bump, seed=3, archive={archive!r}, batch_size=2)
print("done", flush=True)
"""


def append(archive: Path, inits, **changes) -> xr.Dataset:
    members = [Advection(0.1), Advection(0.5)]
    return wxens.run_ensemble(
        members, TRUTH, inits, **{**ENSEMBLE, **changes}, archive=archive, batch_size=2
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> xr.Dataset:
    """The ensemble of the four inits, in time order, from one uninterrupted run in memory."""
    members = [Advection(0.1), Advection(0.5)]
    return wxens.run_ensemble(members, TRUTH, np.sort(INITS), **ENSEMBLE)


def assert_same_fields(a: xr.Dataset, b: xr.Dataset) -> None:
    np.testing.assert_array_equal(a.init_time, b.init_time)
    for name in ("u", "v"):
        assert np.array_equal(a[name].values, b[name].values), name


def start_writer(archive: Path, indices: list[int]) -> subprocess.Popen:
    script = WRITER.format(tests=str(TESTS), indices=indices, archive=str(archive))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    return process


def test_inits_append_in_any_order_and_read_in_time_order(tmp_path, reference):
    archive = tmp_path / "archive.zarr"
    first = append(archive, INITS[0])
    assert first.sizes["init_time"] == 1
    whole = append(archive, INITS)  # the first is skipped, the others appended
    assert_same_fields(whole, reference)
    stored = xr.open_zarr(archive).init_time.values  # arrival order on disk
    np.testing.assert_array_equal(stored, INITS)
    before = {p: p.stat().st_mtime_ns for p in archive.rglob("*") if p.is_file()}
    again = append(archive, INITS[::-1])  # idempotent: nothing is rewritten
    assert_same_fields(again, reference)
    assert before == {p: p.stat().st_mtime_ns for p in archive.rglob("*") if p.is_file()}


def test_another_ensemble_is_refused_in_one_line(tmp_path):
    archive = tmp_path / "archive.zarr"
    append(archive, INITS[0])
    listing = sorted(p.relative_to(archive) for p in archive.rglob("*"))
    for change in ({"seed": 4}, {"n_members": 23}, {"lead_time": "24h"}):
        with pytest.raises(StoreError, match="archives another ensemble") as caught:
            append(archive, INITS[1], **change)
        assert "\n" not in str(caught.value)
    store = tmp_path / "store.zarr"
    wxens.run_ensemble([Advection(0.1)], TRUTH, INITS[0], 2, "6h", store=store)
    with pytest.raises(StoreError, match="is a forecast store, not an archive"):
        append(store, INITS[1])
    with pytest.raises(wxens.ForecastError, match="a store or an archive, not both"):
        wxens.run_ensemble([Advection(0.1)], TRUTH, INITS[0], 2, "6h", store=store, archive=store)
    assert sorted(p.relative_to(archive) for p in archive.rglob("*")) == listing
    assert wxens.open_archive(archive).sizes["init_time"] == 1


def test_a_second_writer_is_refused_and_readers_are_not_blocked(tmp_path, reference):
    archive = tmp_path / "archive.zarr"
    append(archive, INITS[:2])
    holder = subprocess.Popen(["sleep", "60"])  # a live process that holds the lock
    try:
        StoreLock(archive).file.write_text(str(holder.pid))
        with pytest.raises(StoreError, match=f"being written by another run \\(pid {holder.pid}"):
            append(archive, INITS[2])
        read = wxens.open_archive(archive)  # readers take no lock
        assert_same_fields(read, reference.sel(init_time=np.sort(INITS[:2])))
    finally:
        holder.kill()
        holder.wait()
    assert append(archive, INITS[2]).sizes["init_time"] == 3  # the dead holder's lock is taken


def test_sigkill_at_random_moments_then_rerun_is_bitwise_uninterrupted(tmp_path, reference):
    """A writer killed mid-append, and its rerun killed at a random moment: every init
    already archived stays readable and unchanged, and the next run finishes bitwise."""
    archive = tmp_path / "archive.zarr"
    append(archive, INITS[:1])
    rng = np.random.default_rng(int(time.time()))  # a new moment each run; printed on failure
    started = time.perf_counter()
    append(tmp_path / "timing.zarr", INITS[1:])
    seconds = time.perf_counter() - started
    for attempt in range(2):
        delay = rng.uniform(0, seconds)
        writer = start_writer(archive, [1, 6, 2])
        if attempt == 0:  # surely mid-append: as soon as an init is pending
            flags = archive / "tasks" / "zarr.json"
            while writer.poll() is None and '"pending": {' not in flags.read_text():
                time.sleep(0.001)
            assert writer.poll() is None, "the writer finished before an init was pending"
        else:
            time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        seen = wxens.open_archive(archive)  # whatever was published is whole and unchanged
        assert INITS[0] in seen.init_time.values, (attempt, delay)
        assert_same_fields(seen, reference.sel(init_time=seen.init_time.values))
    assert_same_fields(append(archive, INITS), reference)
    assert StoreLock(archive).holder() is None


def test_a_reader_during_appends_sees_only_whole_inits(tmp_path, reference):
    archive = tmp_path / "archive.zarr"
    append(archive, INITS[:1])
    writer = start_writer(archive, [1, 6, 2])
    lengths, failures = [], []

    def read_while_writing() -> None:
        while writer.poll() is None:
            try:
                seen = xr.open_zarr(archive)
                lengths.append(seen.sizes["init_time"])
                expected = reference.sel(init_time=seen.init_time.values)
                for name in ("u", "v"):
                    if not np.array_equal(seen[name].values, expected[name].values):
                        failures.append((seen.sizes["init_time"], name))
            except Exception as exc:  # any failure to read is what this test looks for
                failures.append(repr(exc))

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    reader.join()
    assert writer.returncode == 0, writer.stderr.read()
    assert not failures, failures[:3]
    assert len(set(lengths)) >= 2, lengths  # the reader did read during the appends
    scores = wxens.score(wxens.open_archive(archive), TRUTH, scores=["rmse"], regions=["global"])
    assert scores.rmse.notnull().all()


def test_a_full_disk_leaves_the_archive_readable_and_the_next_run_finishes(tmp_path, reference):
    """In a 1 MiB tmpfs (a user namespace's mount) filled but for a few kB, an append fails
    with one line; the archive reads as before, and after space is freed the rerun
    finishes it bitwise."""
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {probe.stderr.strip()}")
    script = tmp_path / "full_disk.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, shutil, sys
            sys.path.insert(0, {str(TESTS)!r})
            from test_api import Advection, analyses, bump
            import wxens
            truth, folder = analyses(16), sys.argv[1]
            archive = folder + "/archive.zarr"

            def append(index):
                return wxens.run_ensemble([Advection(0.1), Advection(0.5)], truth,
                    truth.time.values[index], 24, "48h", perturbation=bump, seed=3,
                    archive=archive, batch_size=2)

            append(4)
            free = shutil.disk_usage(folder).free
            with open(folder + "/ballast", "wb") as ballast:
                ballast.write(b"0" * (free - 8192))
            try:
                append(1)
                print("no error")
            except OSError as exc:
                print("error:", str(exc).splitlines()[0])
            print("inits after the failure:", wxens.open_archive(archive).sizes["init_time"])
            os.remove(folder + "/ballast")
            append(1)
            shutil.copytree(archive, sys.argv[2])
            """
        )
    )
    out = tmp_path / "copied.zarr"
    command = f"mount -t tmpfs -o size=1m tmpfs /mnt && {sys.executable} {script} /mnt {out}"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error: [Errno 28] No space left on device" in result.stdout, result.stdout
    assert "inits after the failure: 1" in result.stdout
    assert_same_fields(wxens.open_archive(out), reference.sel(init_time=np.sort(INITS[:2])))


def test_the_commands_grow_an_archive_and_its_statistics(tiny_world, wxens, tmp_path):
    """`wxens forecast --archive`, `wxens hindcast --archive` (a backfill), `wxens verify
    --stats` and `wxens finalize`; misuse gets one line and exit 1 and changes nothing."""
    config, truth = tiny_world
    archive, stats = tmp_path / "archive.zarr", tmp_path / "stats.zarr"
    common = ["--config", config, "--model", "nwp", "--members", 4, "--lead-days", 1, "--quiet"]
    code, output = wxens("forecast", *common, "--init", "2027-01-03", "--archive", archive)
    assert code == 0 and "appended 2027-01-03T00:00" in output, output
    code, output = wxens("forecast", *common, "--init", "2027-01-03", "--archive", archive)
    assert code == 0 and "holds init 2027-01-03T00:00:00.000000000 already" in output, output
    backfill = ["--start", "2027-01-01", "--end", "2027-01-03", "--every", "1D"]
    code, output = wxens("hindcast", *common, *backfill, "--archive", archive)
    assert code == 0 and "appended 2027-01-01T00:00, 2027-01-02T00:00" in output, output
    assert wxens_inits(archive) == ["2027-01-01", "2027-01-02", "2027-01-03"]
    listing = sorted(archive.rglob("*"))
    for bad, message in (
        (["--members", 5], "archives another ensemble"),
        (["--overwrite"], "never overwritten"),
        (["--out", tmp_path / "x.zarr"], "name one output"),
    ):
        code, output = wxens(
            "forecast", *common, "--init", "2027-01-04", *bad, "--archive", archive
        )
        assert code == 1 and message in output and len(output.strip().splitlines()) == 1, output
    assert sorted(archive.rglob("*")) == listing
    verify = ["verify", "--forecast", archive, "--truth", truth, "--reference", "persistence"]
    code, output = wxens(*verify, "--stats", stats, "--regions", "global", "--quiet")
    assert code == 0 and "pairs: forecast 15, persistence 15" in output, output
    code, output = wxens(*verify, "--stats", stats, "--regions", "global", "--quiet")
    assert code == 0 and "forecast 0, persistence 0" in output, output
    code, output = wxens("finalize", "--stats", stats, "--out", tmp_path / "s.zarr", "--last", 2)
    assert code == 0, output
    assert xr.open_zarr(tmp_path / "s.zarr").crps_by_init.sizes["init_time"] == 2


def wxens_inits(archive: Path) -> list[str]:
    return [str(t)[:10] for t in wxens.open_archive(archive).init_time.values]
