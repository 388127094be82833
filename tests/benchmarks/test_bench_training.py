"""The training-loop benchmark runs from this repository alone, on a cache it builds itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_training.py"


@pytest.mark.integration  # about 10 s: a 40-image phantom, its cache, 2 x (fit, pure) per row
def test_training_benchmark_runs_on_tiny_sizes_and_reports_a_ratio_per_row(
    tmp_path: Path,
) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--models", "cnn_small", "unet_small",
         "--precisions", "fp32", "--images", "40", "--size", "32", "--batch", "8",
         "--rounds", "2", "--jobs", "1", "--eval-batch", "4", "--eval-batches", "4", "16",
         "--json", str(out_json)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert {r["eval_batch_size"] for r in result["rows"]} == {4}  # --eval-batch reached fit
    assert [(r["model"], r["supervision"], r["precision"]) for r in result["rows"]] == [
        ("cnn_small", "erm", "fp32"),
        ("unet_small", "seg", "fp32"),
    ]
    for row in result["rows"]:
        assert len(row["rounds"]) == 2  # loop, pure, loop, pure
        for key in ("loop_img_s", "pure_img_s", "ratio", "in_epoch_img_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["ratio"] == pytest.approx(row["loop_img_s"] / row["pure_img_s"])
        assert row["meets_target"] == (row["ratio"] >= result["target_ratio"])
        assert 0 <= row["data_wait_fraction"] < 1
        fits = [r["loop"] for r in row["rounds"]]
        in_epochs = sum(f["images"] / f["epoch_images_per_s"] for f in fits)
        assert row["outside_epochs_s"] == pytest.approx(
            (sum(f["seconds"] for f in fits) - in_epochs) / len(fits)
        )
        assert 0 < row["outside_epochs_s"] < max(f["seconds"] for f in fits)
        for r in row["rounds"]:
            # the pure side takes as many steps as the loop trained, on batches of 8
            assert r["pure"]["steps"] == r["loop"]["steps"] == row["train_images"] // 8
            assert r["loop"]["images"] == r["pure"]["images"] == 8 * r["loop"]["steps"]
    assert result["settings"]["size"] == 32 and result["threads"] >= 1 and result["cpu"]
    # The printed table: a header and one row per model and precision, the same numbers.
    loop_table = done.stdout.split("| model | eval batch")[0]
    lines = [line for line in loop_table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | supervision | precision | loop img/s | pure img/s")
    for line, row in zip(lines[1:], result["rows"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [row["model"], row["supervision"], row["precision"]]
        assert float(cells[5]) == pytest.approx(row["ratio"], abs=0.006)
    assert not list(tmp_path.glob("bench_training_*"))  # the temporary cache is gone
    # --eval-batches: predict() at each batch size per model, the same probabilities
    evals = result["eval_batches"]
    assert [(r["model"], r["batch"]) for r in evals] == [
        (m, b) for m in ("cnn_small", "unet_small") for b in (4, 16)
    ]
    for r in evals:
        assert r["images"] == result["rows"][0]["val_images"] > 4  # several batches at 4
        assert math.isfinite(r["img_s"]) and r["img_s"] > 0
        assert r["max_prob_diff"] < 1e-5, r
    table = done.stdout.split("| model | eval batch | predict img/s")[1].splitlines()[2:6]
    for line, r in zip(table, evals, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [r["model"], str(r["batch"])]
        assert float(cells[2]) == pytest.approx(r["img_s"], abs=0.06)


@pytest.mark.integration  # about 30 s, most of it torch.compile of a tiny model
def _one_cnn_round(tmp_path: Path, flag: str, timeout: int) -> tuple[dict, str]:
    """One round of ``cnn_small`` in fp32 on a 40-image phantom at 32 px with ``flag``:
    the JSON row and the printed output."""
    out_json = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--models", "cnn_small", "--precisions", "fp32",
         "--images", "40", "--size", "32", "--batch", "8", "--rounds", "1", "--jobs", "1",
         flag, "--json", str(out_json)],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out_json.read_text())["rows"]
    return row, done.stdout


def test_compile_flag_times_the_compiled_step_and_checks_its_determinism(tmp_path: Path) -> None:
    row, stdout = _one_cnn_round(tmp_path, "--compile", timeout=600)
    (r,) = row["rounds"]
    # the compiled step takes as many steps as the eager pure step, in the same round
    assert r["compiled"]["steps"] == r["pure"]["steps"] == r["loop"]["steps"]
    assert row["compiled_img_s"] == pytest.approx(
        r["compiled"]["images"] / r["compiled"]["seconds"]
    )
    assert row["compiled_vs_eager"] == pytest.approx(row["compiled_img_s"] / row["pure_img_s"])
    assert row["first_steps_s"] > 0 and row["check_steps"] == 3
    # the compiled model computes what eager does, its steps train, and two compiled runs
    # from the same weights end identical on one machine
    assert row["forward_max_diff"] < 1e-4
    assert row["compiled_moved_max"] > 1e-4
    assert row["compiled_vs_compiled_max_diff"] == 0
    assert math.isfinite(row["compiled_vs_eager_max_diff"])
    table = stdout.split("| model | precision | pure img/s | compiled img/s")[1]
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert cells[:2] == ["cnn_small", "fp32"]
    assert float(cells[4]) == pytest.approx(row["compiled_vs_eager"], abs=0.006)


def _conv_flops_by_hand(architecture: str, size: int) -> float:
    """A training step's convolution and linear FLOPs per image, counted from the layers'
    shapes: forward 2 x MACs; backward 2 x MACs for the weight gradients and 2 x MACs for
    the input gradients of every layer but the first (the image needs no gradient)."""
    from torch import nn

    from cxr_spurious.models.registry import build_model

    model = build_model({"architecture": architecture, "tasks": ["a"]}).train()
    macs: list[int] = []

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(out[0].numel() * module.in_channels // module.groups * k)
        else:
            macs.append(out[0].numel() * module.in_features)

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(hook)
    model.logits_and_embedding(torch.zeros(1, 1, size, size))
    return 2.0 * (3 * sum(macs) - macs[0])


@pytest.mark.integration  # about 15 s: a 40-image phantom, 1 x (fit, pure), 2 s of matmuls
def test_ceiling_flag_counts_the_step_flops_and_times_a_matrix_product(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--models", "cnn_small", "--precisions", "fp32",
         "--images", "40", "--size", "32", "--batch", "8", "--rounds", "1", "--jobs", "1",
         "--ceiling", "--ceiling-size", "256", "--json", str(out_json)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out_json.read_text())["rows"]
    # the counter's FLOPs are the layers' own, counted by hand from their shapes
    assert row["step_gflop_per_image"] * 1e9 == pytest.approx(
        _conv_flops_by_hand("cnn_small", 32), rel=1e-6
    )
    assert math.isfinite(row["matmul_gflop_s"]) and row["matmul_gflop_s"] > 0
    assert row["pure_gflop_s"] == pytest.approx(row["pure_img_s"] * row["step_gflop_per_image"])
    assert row["of_ceiling"] == pytest.approx(row["pure_gflop_s"] / row["matmul_gflop_s"])
    assert row["img_s_at_ceiling"] == pytest.approx(
        row["matmul_gflop_s"] / row["step_gflop_per_image"]
    )
    table = done.stdout.split("| model | precision | GFLOP per image (step)")[1]
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert cells[:2] == ["cnn_small", "fp32"]
    assert float(cells[6]) == pytest.approx(row["of_ceiling"], abs=0.006)


@pytest.mark.parametrize(
    "flag", [["--eval-batch", "0"], ["--eval-batches", "32", "0"], ["--ceiling-size", "0"]]
)
def test_training_benchmark_refuses_a_size_below_one(flag: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), *flag], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "must be >= 1" in done.stderr, done.stderr


def test_training_benchmark_refuses_an_unknown_model() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--models", "vgg11"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown ['vgg11']" in done.stderr, done.stderr


@pytest.mark.integration  # about 10 s: a 40-image phantom, its cache, (fit, pure) with and without
def test_fill_ab_times_both_settings_and_checks_they_train_the_same(tmp_path: Path) -> None:
    row, stdout = _one_cnn_round(tmp_path, "--fill-ab", timeout=300)
    (entry,) = row["rounds"]
    # the fill side trains as many steps as the project's side, and both are timed
    assert entry["loop_fill"]["steps"] == entry["loop"]["steps"] == entry["pure_fill"]["steps"]
    for key in ("loop_fill_img_s", "pure_fill_img_s", "loop_vs_fill", "pure_vs_fill"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert row["loop_vs_fill"] == pytest.approx(row["loop_img_s"] / row["loop_fill_img_s"])
    assert row["pure_vs_fill"] == pytest.approx(row["pure_img_s"] / row["pure_fill_img_s"])
    # no operation of the step reads memory it did not write: same parameters either way
    assert row["fill_vs_no_fill_max_diff"] == 0.0 and row["fill_params_finite"] is True
    table = stdout.split("| loop img/s, NaN fill on |")[1].splitlines()
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:2] == ["cnn_small", "fp32"]
    assert float(cells[4]) == pytest.approx(row["loop_vs_fill"], abs=0.0006)
    assert float(cells[8]) == 0.0 and cells[9] == "yes"
