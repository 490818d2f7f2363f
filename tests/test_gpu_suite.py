"""The GPU benchmark suite (`benchmarks/gpu_suite.py`) at tiny sizes on the CPU, checked against
independent computations, and its exit where there is no GPU."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
PARTS = ["setup", "sfno_forward", "forecast", "huge_ensemble", "reproducibility", "training"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[dict, str, Path, ModuleType]:
    """One tiny CPU run of the suite: its JSON, what it printed, its work folder (with its
    analysis store) and the module. A budget of 60 s makes the huge ensemble extrapolate."""
    folder = tmp_path_factory.mktemp("gpu_suite")
    out = folder / "suite.json"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPOSITORY)  # the benchmarks read configs/ from the repository root
        patch.syspath_prepend(str(REPOSITORY / "benchmarks"))
        import gpu_suite

        arguments = ["--device", "cpu", "--tiny", "--out", str(out), "--budget-seconds", "60"]
        with contextlib.redirect_stdout(printed):
            code = gpu_suite.main([*arguments, "--workdir", str(folder / "work")])
    assert code == 0
    return json.loads(out.read_text()), printed.getvalue(), folder / "work", gpu_suite


def test_every_part_ran_without_error(suite):
    results, printed, _, _ = suite
    assert list(results["parts"]) == PARTS
    assert results["tiny"] is True and "CPU" in results["device"]
    for name, part in results["parts"].items():
        assert "error" not in part, (name, part.get("traceback"))
        assert part["seconds"] > 0 and part["budget_seconds"] > 0
        assert f"## {name}" in printed
    for kind in ("sfno", "fgn", "vae", "diffusion"):
        assert "error" not in results["parts"]["training"]["kinds"][kind], kind
    assert 0 < results["total_seconds"] < 120
    assert results["parts"]["reproducibility"]["member_sha256"] in printed


def test_sfno_forward_against_the_floor(suite):
    from wxens.models.checkpoint import load_checkpoint

    results, _, _, module = suite
    part = results["parts"]["sfno_forward"]
    floor = part["floor"]
    assert set(floor["matmul_tflops"]) == {"bf16", "fp32"}  # TF32: CUDA only
    assert all(value > 0 for value in floor["matmul_tflops"].values()) and floor["fft_gflops"] > 0
    # The counted matmul FLOPs: the 1x1 convolutions' 2 x weights x grid points (all at 33 x 64),
    # plus the Legendre transforms' bmm, a small share.
    network = load_checkpoint(module.CHECKPOINT).network
    convolutions = sum(
        2 * m.weight.numel() * 33 * 64 for m in network.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert convolutions <= part["matmul_flops_per_member_step"] <= 1.25 * convolutions
    assert part["fft_flops_per_member_step"] > 0 and part["fft_calls_per_forward"] > 0
    assert list(part["batches"]) == ["1", "2"]
    for batch in part["batches"].values():
        assert batch["raw_member_steps_per_s"] > 0 and batch["wxens_step_member_steps_per_s"] > 0
        seconds = 1e-6 * batch["raw_us_per_member_step"]
        assert seconds == pytest.approx(1 / batch["raw_member_steps_per_s"])
        achieved = part["matmul_flops_per_member_step"] / seconds / 1e12
        assert batch["matmul_tflops_achieved"] == pytest.approx(achieved)
        fraction = batch["matmul_fraction_of_floor"]["fp32"]
        assert fraction == pytest.approx(achieved / floor["matmul_tflops"]["fp32"])
        assert batch["replay_us_per_member_step"] > 0 and batch["raw_over_replay"] > 0


def test_forecast_at_the_automatic_batch_size(suite):
    part = suite[0]["parts"]["forecast"]
    assert part["config"] == "configs/demo.yaml" and part["mode"] == "timed"
    measured = part["measured"]
    assert measured["member_steps"] == measured["members"] * measured["steps"] == 8
    assert 1 <= measured["batch_size"] <= measured["members"]
    assert measured["member_steps_per_s"] > 0 and measured["wall_member_steps_per_s"] > 0
    assert measured["wall_seconds"] >= measured["task_seconds"] > 0
    assert measured["peak_gpu_memory_bytes"] is None  # on the CPU
    assert measured["store_bytes"] > 0 and measured["process_peak_rss_bytes"] > 0


def test_huge_ensemble_extrapolated_from_what_fits(suite):
    part = suite[0]["parts"]["huge_ensemble"]
    assert (part["target_members"], part["target_steps"]) == (7424, 60)
    assert part["mode"] == "extrapolated"  # 445,440 member-steps do not fit 18 s of a CPU
    measured = part["measured"]
    assert 0 < measured["member_steps"] < 7424 * 60
    scale = 7424 * 60 / measured["member_steps"]
    assert part["estimated_task_seconds"] == pytest.approx(scale * measured["task_seconds"])
    assert part["estimated_wall_seconds"] >= part["estimated_task_seconds"]


def test_members_bitwise_equal_whatever_their_batch(suite):
    """On the CPU every member is bitwise the same in any batch, and the suite's last member
    is the same as when run through `wxens.run_ensemble` in an ensemble of one more member."""
    import wxens

    results, _, work, _ = suite
    part = results["parts"]["reproducibility"]
    assert part["bitwise_equal"] is True and part["max_abs_difference"] == 0.0
    for batch in part["batches"].values():
        assert batch["members_bitwise_equal"] == part["members"]
    members = wxens.load_members(REPOSITORY / "checkpoints" / "default", device="cpu")
    ensemble = wxens.run_ensemble(
        members,
        wxens.open_analyses(work / "analyses.zarr"),
        np.datetime64(part["init_time"]),
        part["members"] + 1,
        f"{6 * part['steps']}h",
        perturbation=[wxens.random_field_perturbation(m) for m in members],
        seed=part["seed"],
    )
    k = part["member"]
    fields = np.stack([ensemble[v].isel(init_time=0, member=k).values for v in ensemble.data_vars])
    assert fields.dtype == np.float32 and fields.shape[1] == part["steps"] + 1
    assert hashlib.sha256(fields.tobytes()).hexdigest() == part["member_sha256"]


def test_one_epoch_of_each_kind(suite):
    """Each kind trains one epoch, unless the part's budget ran out first (a busy machine):
    then it says so; the first kind always trains."""
    kinds = suite[0]["parts"]["training"]["kinds"]
    assert list(kinds) == ["sfno", "fgn", "vae", "diffusion"]
    assert "skipped" not in kinds["sfno"]
    for kind, epoch in kinds.items():
        if "skipped" in epoch:
            assert "s left of the budget, the last kind took" in epoch["skipped"], kind
            continue
        assert (epoch["samples"], epoch["batch_size"], epoch["optimizer_steps"]) == (4, 2, 2), kind
        assert epoch["validation_inits"] == 2 and epoch["parameters"] > 0
        assert epoch["epoch_seconds"] > 0 and epoch["setup_seconds"] > 0
        assert epoch["train_samples_per_s"] is None or epoch["train_samples_per_s"] > 0
    for kind in ("fgn", "vae"):
        if "skipped" not in kinds[kind]:
            assert kinds[kind]["init_from"] == "checkpoints/default/sfno-seed1", kind


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "suite.json"
    command = [sys.executable, "benchmarks/gpu_suite.py", "--device", "cuda", "--out", str(out)]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and "no CUDA device" in done.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_parts_runs_only_the_parts_named(suite, tmp_path):
    _, _, _, module = suite
    out = tmp_path / "suite.json"
    arguments = ["--device", "cpu", "--tiny", "--out", str(out), "--parts", "reproducibility"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert module.main([*arguments, "--workdir", str(tmp_path / "work")]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["setup", "reproducibility"]
    assert "error" not in parts["reproducibility"]


def test_an_unknown_part_is_refused_in_one_line(tmp_path):
    out = tmp_path / "suite.json"
    command = [sys.executable, "benchmarks/gpu_suite.py", "--device", "cpu", "--tiny"]
    command += ["--out", str(out), "--parts", "forecast,warp_drive"]
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--parts: unknown part(s) ['warp_drive']" in done.stderr.splitlines()[-1]
    assert not out.exists()
