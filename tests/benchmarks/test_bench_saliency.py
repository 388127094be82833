"""The saliency benchmark: a tiny run prints its table, and both sides produce the same maps."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from tests.benchmarks.loader import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("bench_saliency")


def test_a_tiny_run_prints_one_row_per_method_and_size_with_matching_maps(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "saliency.json"
    argv = ["--images", "6", "--sizes", "32", "--batch", "4", "--repeats", "1"]
    argv += ["--ig-steps", "3", "--base-channels", "8", "--json", str(out)]
    assert _bench().main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = result["rows"]
    assert [(r["method"], r["size"]) for r in rows] == [
        ("gradcam", 32),
        ("integrated_gradients", 32),
    ]
    for r in rows:
        # the project's maps are the library's, post-processed (float16 rounding at most)
        assert r["max_map_diff"] < 1e-3, r
        assert r["project_maps_s"] > 0 and r["library_maps_s"] > 0
        assert abs(r["ratio"] - r["project_maps_s"] / r["library_maps_s"]) < 1e-9
        assert len(r["rounds"]) == 1
        assert f"| {r['method']} | 32 |" in printed


def test_library_channels_last_adds_a_third_side(capsys) -> None:
    argv = ["--images", "4", "--sizes", "32", "--batch", "4", "--repeats", "2", "--ig-steps", "2"]
    argv += ["--base-channels", "8", "--methods", "integrated_gradients", "--library-channels-last"]
    assert _bench().main(argv) == 0
    printed = capsys.readouterr().out
    assert "| library channels_last maps/s | ratio to it |" in printed
    row = _bench().bench_row(
        "gradcam", 32, n_images=4, batch=4, n_tasks=1, base_channels=8, ig_steps=2, repeats=2,
        library_channels_last=True,
    )  # fmt: skip
    assert [sorted(r) for r in row["rounds"]] == [["library", "library_cl", "project"]] * 2
    assert row["library_cl_maps_s"] > 0
    assert abs(row["ratio_cl"] - row["project_maps_s"] / row["library_cl_maps_s"]) < 1e-9


def test_library_frozen_side_freezes_outside_the_cam_layer_and_agrees(capsys) -> None:
    bench = _bench()
    model = bench.make_model(32, 1, 8)
    frozen = bench.frozen_copy(model)
    own = {name for name, _ in frozen.cam_layer.named_parameters()}
    assert own, "the CAM layer of unet_small has parameters"
    grads = {n: p.requires_grad for n, p in frozen.named_parameters()}
    cam_prefix = next(n for n, m in frozen.named_modules() if m is frozen.cam_layer)
    assert {n for n, g in grads.items() if g} == {f"{cam_prefix}.{n}" for n in own}
    assert all(p.requires_grad for p in model.parameters()), "the original is left as it was"
    row = bench.bench_row(
        "gradcam", 32, n_images=4, batch=4, n_tasks=1, base_channels=8, ig_steps=2, repeats=2,
        library_frozen=True,
    )  # fmt: skip
    assert [sorted(r) for r in row["rounds"]] == [["library", "library_frozen", "project"]] * 2
    # The same maps as the project's, up to float16 rounding (one step at 1.0 is 4.9e-4).
    assert row["max_map_diff_frozen"] < 1e-3
    assert abs(row["ratio_frozen"] - row["project_maps_s"] / row["library_frozen_maps_s"]) < 1e-9
    argv = ["--images", "4", "--sizes", "32", "--batch", "4", "--repeats", "1", "--ig-steps", "2"]
    assert bench.main([*argv, "--base-channels", "8", "--library-frozen"]) == 0
    assert "| library frozen maps/s | ratio to it | max map diff to it |" in capsys.readouterr().out
