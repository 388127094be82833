"""Scaling benchmark: how wall time and peak memory of each stage grow with the data set.

Usage:
    python benchmarks/bench_scaling.py [--sizes 1000 4000 16000] [--image-size 224]
        [--cache-size 96] [--saliency-images N] [--methods gradcam seg_prob]
        [--jobs 2] [--device cpu] [--stages phantom read cache] [--out FOLDER]
        [--work-dir DIR] [--quick]

For each data-set size N (``--sizes``), a phantom of N images at ``--image-size`` px goes
through the stages below, each run in a fresh Python process (so its peak memory is its
own), writing into a temporary folder that the next stage reads, as the pipelines do:

- ``phantom``: ``cxr_spurious.phantom.generate_phantom`` with the default study's phantom
  settings (``conf/base/parameters_ingestion.yml``) and ``n_images = N``.
- ``read``: the ingestion nodes ``read_source`` (phantom adapter), ``build_manifest`` and
  ``extract_ground_truth``; the manifest and the seven ground-truth JSON documents are
  written like the catalog writes them (``pandas.ParquetDataset``'s ``to_parquet``,
  ``json.JSONDataset``). The manifest and the ground truth are tables of
  per-image rows: their in-memory size (``rows_mb``, a deep ``sys.getsizeof``) is measured.
- ``cache``: ``build_image_cache``, then ``cxr_spurious.sources.cache.build_cache`` (what
  the ``image_cache`` dataset does on save) at ``--cache-size`` px (default: the study's
  ``ingestion.cache.size``). Reading the source again is set-up (in ``base_mb``).
- ``train_epoch``: one epoch of ``cxr_spurious.training.engine.fit`` for the study's
  ``seg`` variant (``conf/base/parameters_training.yml`` with ``epochs: 1``,
  ``precision: fp32``, ``progress: false``; validation pass included), on the train split.
- ``saliency:<method>``: the saliency node ``compute_heatmaps`` for that one method on the
  test split (``conf/base/parameters_saliency.yml``), saved like the catalog's
  ``heatmap_collection``. ``--saliency-images`` caps the maps per N (a seeded subset of
  the test split, ``saliency.max_images``); the table's ``items`` column says how many.
- ``localization``: the localization node ``evaluate_heatmaps`` (the study's
  ``conf/base/parameters_localization.yml``) over the saved heatmap collection.

Per stage and N the table gives wall time of the stage's work (set-up such as imports and
reading the previous stage's outputs not included), ``items`` (images generated / cached /
trained on, maps computed / evaluated), per-item milliseconds, and memory:

- ``peak_mb``: the largest anonymous memory (proportional share, ``Pss_Anon`` of
  ``/proc/<pid>/smaps_rollup``) of the stage's process and all its worker processes
  together, sampled every 50 ms. Pages of memory-mapped files (the image cache) are the
  page cache's, not the process's, and are left out.
- ``base_mb``: the same right before the timed work (interpreter, torch, inputs read);
  ``work_mb`` = ``peak_mb - base_mb``, what the work itself added.
- ``hwm_mb``: ``VmHWM`` of the stage's main process (resident high-water mark, file-backed
  pages included).

Growth per stage (``fit_growth``): the log-log slope of wall time against items (1 = the
time per item stays flat) and of ``work_mb`` against N (0 = memory does not grow with N),
plus the linear fit's megabytes per 1,000 images; verdicts ``flat`` / ``grows``
(``growth_verdicts``), or ``rows`` where the growth is that of the per-image tables the stage
holds (``rows_mb``) and nothing else. Results: printed tables, ``scaling.csv`` (one row per
stage and N) and ``scaling.json`` (rows, growth, settings, machine) under ``--out``.

``--quick`` (CI): sizes 40 and 80 at 64 px, a 32 px cache, one saliency method, one job.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "base"
DEFAULT_SIZES: tuple[int, ...] = (1000, 4000, 16000)
DEFAULT_METHODS: tuple[str, ...] = ("gradcam", "seg_prob")  # the study's methods
SALIENCY_PREFIX = "saliency:"
VARIANT = {"name": "seg", "supervision": "seg", "architecture": "unet_small"}
SAMPLE_S = 0.05  # memory sampling interval
# Growth verdicts: per-item time "grows" when wall time rises faster than N^(1 + TIME_TOL);
# memory "grows" when work memory rises like N^MEM_SLOPE or faster AND by more than
# MEM_FLOOR_MB over the sizes measured (sampling noise and allocator slack stay below it).
TIME_TOL = 0.15
MEM_SLOPE = 0.25
MEM_FLOOR_MB = 16.0
# A stage's memory growth is that of its per-image tables ("rows") when its work memory rises
# by no more than the tables' own rise plus ROWS_SLACK of it (allocator slack, the documents'
# text while parsed and encoded) or MEM_FLOOR_MB, whichever is larger.
ROWS_SLACK = 0.5
TARGETS: dict[str, int] = {"MIMIC-CXR-JPG": 377_110, "CheXpert": 224_316}
COLUMNS: tuple[str, ...] = (
    "stage",
    "n",
    "items",
    "wall_s",
    "per_item_ms",
    "peak_mb",
    "base_mb",
    "work_mb",
    "hwm_mb",
    "rows_mb",
)


# ----------------------------------------------------------------------------- growth


@dataclass(frozen=True)
class Growth:
    """Fitted growth of one stage over the sizes measured."""

    stage: str
    time_slope: float  # log-log slope of wall time vs items (1 = flat per item)
    mem_slope: float  # log-log slope of work memory vs N (0 = flat)
    mb_per_1k: float  # linear fit of work memory vs N, MB per 1,000 images
    mem_rise_mb: float  # work memory at the largest N minus at the smallest
    time_verdict: str  # per-item time: flat | grows
    mem_verdict: str  # flat | grows | rows (grows as its per-image tables, nothing else)
    rows_rise_mb: float = 0.0  # in-memory per-image tables at the largest N minus smallest


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (values below 1e-9 raised to it).

    Raises:
        ValueError: fewer than two distinct ``x`` or lengths that differ.
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    lx = np.log(np.maximum(np.asarray(x, dtype=float), 1e-9))
    if len(x) < 2 or np.ptp(lx) == 0:
        raise ValueError(f"a slope needs at least two distinct x values, got {list(x)}")
    ly = np.log(np.maximum(np.asarray(y, dtype=float), 1e-9))
    return float(np.polyfit(lx, ly, 1)[0])


def growth_verdicts(
    time_slope: float, mem_slope: float, mem_rise_mb: float, rows_rise_mb: float = 0.0
) -> tuple[str, str]:
    """(per-item time verdict, memory verdict): ``flat`` or ``grows`` (see ``TIME_TOL``,
    ``MEM_SLOPE``, ``MEM_FLOOR_MB``); memory that grows is ``rows`` when ``rows_rise_mb``,
    the rise of the per-image tables the stage holds, accounts for it (``ROWS_SLACK``)."""
    time_verdict = "grows" if time_slope > 1.0 + TIME_TOL else "flat"
    mem_verdict = "grows" if mem_slope >= MEM_SLOPE and mem_rise_mb > MEM_FLOOR_MB else "flat"
    explained = mem_rise_mb - rows_rise_mb <= max(MEM_FLOOR_MB, ROWS_SLACK * rows_rise_mb)
    if mem_verdict == "grows" and rows_rise_mb > 0 and explained:
        mem_verdict = "rows"
    return time_verdict, mem_verdict


def fit_growth(stage: str, rows: Sequence[Mapping[str, Any]]) -> Growth:
    """Growth of ``stage`` from its rows (one per N; ``n``, ``items``, ``wall_s``,
    ``peak_mb``, ``work_mb``). Work memory is floored at 1 MB for the log.

    Raises:
        ValueError: fewer than two sizes.
    """
    rows = sorted(rows, key=lambda r: r["n"])
    ns = [float(r["n"]) for r in rows]
    items = [float(r["items"]) for r in rows]
    if len(set(items)) < 2:  # a capped stage: the same work at every N
        items = ns
    time_slope = loglog_slope(items, [r["wall_s"] for r in rows])
    work = [max(1.0, float(r["work_mb"])) for r in rows]
    mem_slope = loglog_slope(ns, work)
    mb_per_1k = float(np.polyfit(ns, [float(r["work_mb"]) for r in rows], 1)[0]) * 1000
    rise = float(rows[-1]["work_mb"]) - float(rows[0]["work_mb"])
    rows_rise = float(rows[-1].get("rows_mb", 0.0)) - float(rows[0].get("rows_mb", 0.0))
    time_verdict, mem_verdict = growth_verdicts(time_slope, mem_slope, rise, rows_rise)
    return Growth(
        stage, time_slope, mem_slope, mb_per_1k, rise, time_verdict, mem_verdict, rows_rise
    )


def deep_size_mb(obj: Any) -> float:
    """In-memory size of a table or JSON-like document in MB: ``sys.getsizeof`` of every
    container, string and number reachable through dicts, lists and tuples (dicts and strings
    counted once, as ``json`` shares its keys); a DataFrame's ``memory_usage(deep=True)``."""
    seen: set[int] = set()
    total = 0
    todo = [obj]
    while todo:
        item = todo.pop()
        if hasattr(item, "memory_usage") and hasattr(item, "columns"):  # a DataFrame
            total += int(item.memory_usage(deep=True).sum())
            continue
        if isinstance(item, dict | str):
            if id(item) in seen:
                continue
            seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return total / 2**20


# ----------------------------------------------------------------------------- memory


def _children_of() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``)."""
    children = _children_of()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def anon_kb(pid: int) -> int:
    """Proportional anonymous memory of ``pid`` in kB (``Pss_Anon``, else ``RssAnon``)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return _status_kb(pid, "RssAnon:")


def _status_kb(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_anon_mb(pid: int | None = None) -> float:
    """Anonymous memory of a process and its descendants together, in MB."""
    root = os.getpid() if pid is None else pid
    return sum(anon_kb(p) for p in process_tree(root)) / 1024


class PeakSampler:
    """Samples ``tree_anon_mb`` of this process every ``SAMPLE_S`` seconds in a thread."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_anon_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = tree_anon_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_anon_mb())


# ----------------------------------------------------------------------------- settings


def _yaml_block(name: str, key: str) -> dict[str, Any]:
    path = CONF / name
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get(key), dict):
        raise KeyError(f"{path}: expected a mapping under '{key}'")
    return dict(data[key])


def study_cache_size() -> int:
    """``ingestion.cache.size`` of the default study."""
    return int(_yaml_block("parameters_ingestion.yml", "ingestion")["cache"]["size"])


@dataclass(frozen=True)
class StageArgs:
    """What a stage process needs (passed as JSON on its command line)."""

    stage: str
    n: int
    work: str
    image_size: int
    cache_size: int
    saliency_images: int | None
    jobs: int
    device: str
    seed: int


# ----------------------------------------------------------------------------- stages
# Each stage: set-up (untimed), returning its work (timed) -> (items processed, items the
# stage would process without ``--saliency-images``: the projections scale by it[, the
# per-image tables the stage holds, sized after the timing by ``deep_size_mb``]).

Work = Callable[[], tuple[int, int] | tuple[int, int, Any]]


def _manifest(work: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(work / "manifest.parquet")


def stage_phantom(a: StageArgs) -> Work:
    from cxr_spurious.phantom import PhantomConfig, generate_phantom

    phantom = _yaml_block("parameters_ingestion.yml", "ingestion").get("phantom") or {}
    cfg = PhantomConfig.from_dict({**phantom, "n_images": a.n, "image_size": a.image_size})

    def run() -> tuple[int, int]:
        generate_phantom(cfg, Path(a.work) / "phantom", seed=a.seed, n_jobs=a.jobs, progress=False)
        return a.n, a.n

    return run


def stage_read(a: StageArgs) -> Work:
    from kedro_datasets.json import JSONDataset

    from cxr_spurious.pipelines.ingestion.nodes import (
        build_manifest,
        extract_ground_truth,
        read_source,
    )

    options = _yaml_block("parameters_ingestion.yml", "ingestion")
    work = Path(a.work)
    names = ground_truth_names()

    def run() -> tuple[int, int, Any]:
        ingested = read_source(str(work / "phantom"), {**options, "source": "phantom"})
        manifest = build_manifest(ingested)
        manifest.to_parquet(work / "manifest.parquet")
        documents = extract_ground_truth(ingested)
        for name, blob in zip(names, documents, strict=True):
            JSONDataset(filepath=str(work / f"{name}.json")).save(blob)  # the catalog's type
        return len(manifest), len(manifest), [manifest, *documents]

    return run


def ground_truth_names() -> list[str]:
    """The catalog names of ``extract_ground_truth``'s outputs, in its order (from the
    ingestion pipeline's wiring)."""
    from cxr_spurious.pipelines.ingestion.pipeline import create_pipeline

    (node,) = (n for n in create_pipeline().nodes if n.name == "extract_ground_truth")
    return list(node.outputs)


def stage_cache(a: StageArgs) -> Work:
    from cxr_spurious.pipelines.ingestion.nodes import build_image_cache, read_source
    from cxr_spurious.sources.cache import build_cache

    options = _yaml_block("parameters_ingestion.yml", "ingestion")
    work = Path(a.work)
    ingested = read_source(str(work / "phantom"), {**options, "source": "phantom"})
    manifest = _manifest(work)

    def run() -> tuple[int, int]:
        spec = build_image_cache(manifest, ingested, a.cache_size, a.jobs)
        build_cache(spec, work / "cache", progress=False)
        return len(manifest), len(manifest)

    return run


def _training_config(device: str) -> dict[str, Any]:
    from cxr_spurious.training.config import resolve_training_config

    shared = _yaml_block("parameters_training.yml", "training")
    shared.pop("variants", None)
    shared.pop("only", None)
    shared.update(epochs=1, progress=False, precision="fp32", device=device)
    return resolve_training_config(shared, VARIANT)


def stage_train_epoch(a: StageArgs) -> Work:
    from cxr_spurious.datasets.torch_model import TorchModelDataset
    from cxr_spurious.sources.cache import load_cache
    from cxr_spurious.training.config import model_config
    from cxr_spurious.training.data import build_training_table
    from cxr_spurious.training.device import setup_for
    from cxr_spurious.training.engine import fit

    work = Path(a.work)
    manifest = _manifest(work)
    cfg = _training_config(a.device)
    # a small N (``--quick``'s 40: 26 train rows) holds fewer train rows than one batch; the
    # loader drops an incomplete batch, so the epoch is one batch of every train row there
    n_train = int((manifest["split"] == "train").sum())
    cfg = {**cfg, "batch_size": max(1, min(int(cfg["batch_size"]), n_train))}
    cache = load_cache(work / "cache")
    table = build_training_table(manifest, cache, cfg)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    setup = setup_for(cfg)

    def run() -> tuple[int, int]:
        result = fit(train, val, cache, cfg, setup, checkpoint_dir=None)
        TorchModelDataset(str(work / "model.pt")).save(
            {"state_dict": result.state_dict, "config": model_config(cfg)}
        )
        return len(train), len(train)

    return run


def full_maps(manifest: Any, artifact: Mapping[str, Any], split: str) -> int:
    """Maps of one method over the whole ``split``: its images x the model's tasks."""
    tasks = artifact.get("config", {}).get("tasks") or _training_config("cpu")["tasks"]
    return int((manifest["split"] == split).sum()) * len(tasks)


def stage_saliency(a: StageArgs, method: str) -> Work:
    from cxr_spurious.datasets.heatmap_folders import HeatmapCollectionDataset
    from cxr_spurious.datasets.torch_model import TorchModelDataset
    from cxr_spurious.pipelines.saliency.nodes import compute_heatmaps
    from cxr_spurious.sources.cache import load_cache

    work = Path(a.work)
    params = _yaml_block("parameters_saliency.yml", "saliency")
    artifact = TorchModelDataset(str(work / "model.pt")).load()
    cache = load_cache(work / "cache")
    manifest = _manifest(work)

    def run() -> tuple[int, int]:
        sets = compute_heatmaps(
            artifact,
            VARIANT,
            cache,
            manifest,
            [method],
            params["tasks"],
            params["split"],
            a.saliency_images,
            int(params["seed"]),
            int(params["batch_size"]),
            a.device,
            params["method_options"],
        )
        if not sets:
            raise RuntimeError(f"saliency method '{method}' made no maps for {VARIANT['name']}")
        HeatmapCollectionDataset(path=str(work / "heatmaps" / method)).save(sets)
        return sum(len(s) for s in sets.values()), full_maps(manifest, artifact, params["split"])

    return run


def stage_localization(a: StageArgs) -> Work:
    from cxr_spurious.datasets.heatmap_folders import HeatmapCollectionDataset
    from cxr_spurious.pipelines.localization.nodes import evaluate_heatmaps

    work = Path(a.work)
    p = _yaml_block("parameters_localization.yml", "localization")
    collection: dict[str, Any] = {}
    for folder in sorted((work / "heatmaps").iterdir()):
        collection.update(HeatmapCollectionDataset(path=str(folder)).load())
    gt = json.loads((work / "gt_segmentations.json").read_text())
    spurious = json.loads((work / "spurious_segmentations.json").read_text())
    split = _yaml_block("parameters_saliency.yml", "saliency")["split"]
    full = len(collection) * full_maps(_manifest(work), {}, split)

    def run() -> tuple[int, int]:
        table, _ = evaluate_heatmaps(
            collection,
            gt,
            spurious,
            p["fixed_thresholds"],
            p["prob_cutoffs"],
            int(p["smoothing_k"]),
            p["tuning_grid"],
            bool(p["extra_metrics"]),
            int(p["top_k"]),
            bool(p["prefer_gpu"]) and a.device != "cpu",
            p["missing_maps"],
        )
        maps = sum(len(s) for s in collection.values())
        return (maps if len(table) else 0), full

    return run


def stage_runner(a: StageArgs) -> Work:
    """The stage's set-up, run now; returns its timed work."""
    if a.stage.startswith(SALIENCY_PREFIX):
        return stage_saliency(a, a.stage[len(SALIENCY_PREFIX) :])
    stages: dict[str, Callable[[StageArgs], Work]] = {
        "phantom": stage_phantom,
        "read": stage_read,
        "cache": stage_cache,
        "train_epoch": stage_train_epoch,
        "localization": stage_localization,
    }
    if a.stage not in stages:
        raise ValueError(f"unknown stage '{a.stage}'; expected one of {sorted(stages)}")
    return stages[a.stage](a)


def run_stage_here(a: StageArgs) -> dict[str, Any]:
    """Set the stage up, then time its work while sampling memory (in this process).

    torch is imported first by every stage (a pipeline's process has it loaded), so that a
    lazy import inside the work does not count as the work's memory.
    """
    import torch  # noqa: F401

    work = stage_runner(a)
    base = tree_anon_mb()
    with PeakSampler() as sampler:
        start = time.perf_counter()
        done = work()
        wall = time.perf_counter() - start
    peak = max(sampler.peak, base)
    items, full_items = done[0], done[1]
    hwm_mb = _status_kb("self", "VmHWM:") / 1024  # before sizing the tables
    rows_mb = deep_size_mb(done[2]) if len(done) > 2 else 0.0
    return {
        "stage": a.stage,
        "n": a.n,
        "items": int(items),
        "full_items": int(full_items),
        "wall_s": wall,
        "per_item_ms": 1000 * wall / max(items, 1),
        "peak_mb": peak,
        "base_mb": base,
        "work_mb": peak - base,
        "hwm_mb": hwm_mb,
        "rows_mb": rows_mb,
    }


def run_stage(a: StageArgs, timeout: float | None = None) -> dict[str, Any]:
    """``run_stage_here`` in a fresh Python process; its row."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=a.work, delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-json", json.dumps(vars(a))]
    cmd += ["--result", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"stage {a.stage} at N={a.n} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    row = json.loads(result.read_text())
    result.unlink()
    return row


# ----------------------------------------------------------------------------- report


def stages_for(methods: Sequence[str], only: Sequence[str] | None = None) -> list[str]:
    """The stages in order: all, or those in ``only`` (each with the stages it reads from).

    Raises:
        ValueError: an unknown stage in ``only``, or one without a stage it reads from.
    """
    saliency = [SALIENCY_PREFIX + m for m in methods]
    every = ["phantom", "read", "cache", "train_epoch", *saliency, "localization"]
    if only is None:
        return every
    needs: dict[str, list[str]] = {
        "phantom": [],
        "read": ["phantom"],
        "cache": ["phantom", "read"],
        "train_epoch": ["cache"],
        **{m: ["train_epoch"] for m in saliency},
        "localization": ["read", *saliency],
    }
    unknown = sorted(set(only) - set(every))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {every}")
    for stage in only:
        missing = [n for n in needs[stage] if n not in only]
        if missing:
            raise ValueError(f"stage '{stage}' reads the output of {missing}: add it")
    return [s for s in every if s in only]


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per stage and N (Markdown)."""
    out = [
        "| stage | N | items | wall s | per item ms | peak MB | base MB | work MB | hwm MB "
        "| rows MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rows_mb = f"{r['rows_mb']:.0f}" if r.get("rows_mb") else "-"
        out.append(
            f"| {r['stage']} | {r['n']} | {r['items']} | {r['wall_s']:.2f} "
            f"| {r['per_item_ms']:.2f} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} "
            f"| {r['work_mb']:.0f} | {r['hwm_mb']:.0f} | {rows_mb} |"
        )
    return "\n".join(out)


def format_growth(growth: Sequence[Growth]) -> str:
    """Fitted growth per stage (Markdown)."""
    out = [
        "| stage | time slope (1 = flat per item) | per-item time | work-memory slope "
        "| rise MB | of it per-image tables MB | MB per 1k images | memory |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for g in growth:
        out.append(
            f"| {g.stage} | {g.time_slope:.2f} | {g.time_verdict} | {g.mem_slope:.2f} "
            f"| {g.mem_rise_mb:.0f} | {g.rows_rise_mb:.0f} | {g.mb_per_1k:.1f} "
            f"| {g.mem_verdict} |"
        )
    return "\n".join(out)


def projections(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage, at the largest N measured: seconds per image of the data set (seconds per
    item x the items the stage processes per image uncapped: train share, test-split maps)
    and the hours that projects to for each of ``TARGETS`` on this machine."""
    out = []
    largest = max(r["n"] for r in rows)
    for r in (r for r in rows if r["n"] == largest):
        per_image_s = r["wall_s"] / max(r["items"], 1) * r["full_items"] / r["n"]
        entry = {"stage": r["stage"], "n": largest, "s_per_image": per_image_s}
        entry.update({f"hours_{k}": per_image_s * v / 3600 for k, v in TARGETS.items()})
        out.append(entry)
    return out


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="N (1000 4000 16000)")
    ap.add_argument("--image-size", type=int, default=None, help="phantom px (224)")
    ap.add_argument("--cache-size", type=int, default=None, help="cache px (ingestion.cache.size)")
    ap.add_argument(
        "--saliency-images",
        type=int,
        default=None,
        help="cap on maps per N (a seeded subset of the test split; default: the whole split)",
    )
    ap.add_argument("--methods", nargs="+", default=None, help="saliency methods")
    ap.add_argument(
        "--stages",
        nargs="+",
        default=None,
        help="only these stages (with the stages they read from), e.g. phantom read cache",
    )
    ap.add_argument("--jobs", type=int, default=None, help="processes of phantom and cache (2)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:k] (training and saliency)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_scaling_out"), help="results folder")
    ap.add_argument("--work-dir", type=Path, default=None, help="temporary folders go here")
    ap.add_argument("--stage-timeout", type=float, default=None, help="seconds per stage")
    ap.add_argument(
        "--quick", action="store_true", help="CI: sizes 40 80, 64 px, 32 px cache, gradcam, 1 job"
    )
    ap.add_argument("--stage-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = {"sizes": [40, 80], "image_size": 64, "cache_size": 32, "methods": ["gradcam"]}
    full = {
        "sizes": list(DEFAULT_SIZES),
        "image_size": 224,
        "cache_size": None,
        "methods": list(DEFAULT_METHODS),
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.jobs is None:
        args.jobs = 1 if args.quick else 2
    if args.cache_size is None and args.stage_json is None:
        args.cache_size = study_cache_size()
    if args.stage_json is None:
        if len(set(args.sizes)) < 2 or min(args.sizes) < 1:
            ap.error(f"--sizes: at least two distinct sizes >= 1, got {args.sizes}")
        for name in ("image_size", "cache_size", "jobs"):
            if getattr(args, name) < 1:
                ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.saliency_images is not None and args.saliency_images < 1:
            ap.error(f"--saliency-images must be >= 1, got {args.saliency_images}")
        from cxr_spurious.saliency.registry import get_method

        for method in args.methods:
            try:
                get_method(method)
            except Exception as exc:  # the registry's error lists the valid names
                ap.error(f"--methods: {exc}")
        try:
            stages_for(args.methods, args.stages)
        except ValueError as exc:
            ap.error(f"--stages: {exc}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.stage_json is not None:  # a stage process
        row = run_stage_here(StageArgs(**json.loads(args.stage_json)))
        args.result.write_text(json.dumps(row))
        return row
    started = dt.datetime.now(dt.UTC)
    stages = stages_for(args.methods, args.stages)
    rows: list[dict[str, Any]] = []
    print(
        f"sizes {args.sizes} at {args.image_size} px, cache {args.cache_size} px, methods "
        f"{args.methods}, saliency cap {args.saliency_images}, jobs {args.jobs}, device "
        f"{args.device}; CPU {cpu_name()}, {os.cpu_count()} cores, load "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    for n in sorted(args.sizes):
        with tempfile.TemporaryDirectory(prefix="bench_scaling_", dir=args.work_dir) as tmp:
            for stage in stages:
                a = StageArgs(
                    stage, n, tmp, args.image_size, args.cache_size, args.saliency_images,
                    args.jobs, args.device, args.seed,
                )  # fmt: skip
                row = run_stage(a, args.stage_timeout)
                rows.append(row)
                print(
                    f"N={n} {stage}: {row['items']} items in {row['wall_s']:.1f} s "
                    f"({row['per_item_ms']:.1f} ms each), peak {row['peak_mb']:.0f} MB "
                    f"(work {row['work_mb']:.0f} MB)",
                    flush=True,
                )
    growth = [fit_growth(s, [r for r in rows if r["stage"] == s]) for s in stages]
    result = {
        "command": shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])]),
        "date": started.isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_after": list(os.getloadavg()),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("stage_json", "result")
        },
        "rows": rows,
        "growth": [vars(g) for g in growth],
        "projections": projections(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "scaling.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(format_rows(rows))
    print()
    print(format_growth(growth))
    grows = [g.stage for g in growth if g.mem_verdict == "grows"]
    rows_only = [g.stage for g in growth if g.mem_verdict == "rows"]
    print(f"\nstages whose memory grows with N: {', '.join(grows) or 'none'}")
    print(
        "stages whose memory grows only as their per-image tables: "
        f"{', '.join(rows_only) or 'none'}"
    )
    return result


if __name__ == "__main__":
    main()
