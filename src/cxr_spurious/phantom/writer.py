"""``generate_phantom``: render the cohort and write it in the CheXpert / CheXlocalize formats.

Output folder (written into a temporary folder and swapped in only when complete)::

    images/patientXXXXX/studyN/view1_frontal.png      8-bit grayscale
    labels.csv                                        CheXpert header
    attributes.csv                                    image_id,patient_id,study_id,split,sex,
                                                      age_years,race,insurance,site,tube
    gt_annotations.json, gt_segmentations.json        CheXlocalize formats (every image)
    spurious_segmentations.json                       {image_id: {object: rle}}
    hb_annotations.json, hb_segmentations.json, hb_salient_pt.json   (human-benchmark splits)
    counterfactuals/<render>/images/...png            (counterfactual splits: no_tube, no_lesion)
    counterfactuals/with_<kind>/images/...png         (artefact splits: one render per artefact)
    counterfactuals/with_<kind>/masks.json            {image_id: rle} the artefact's exact mask
    phantom_meta.json                                 resolved config, seed, version, counts
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import json
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.atomic import atomic_dir, write_text_atomic
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.phantom import human_benchmark
from cxr_spurious.phantom.artefacts import render_name
from cxr_spurious.phantom.cohort import STREAM_IMAGE, ImageRecord, build_cohort, stream_rng
from cxr_spurious.phantom.config import PIPELINE_KEY, PhantomConfig, check_config
from cxr_spurious.phantom.render import RENDER_REMOVES, RenderedImage, RenderSpec, render_versions
from cxr_spurious.progress import progress_bar
from cxr_spurious.sources.adapters.base import RENDER_MASKS_FILE
from cxr_spurious.sources.contract import ATTRIBUTE_HEADER, SPLITS
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.tasks import (
    CHEXPERT_HEADER,
    CHEXPERT_OBSERVATIONS,
    PHANTOM_TASKS,
    SPURIOUS_OBJECTS,
    task_column,
)

logger = logging.getLogger(__name__)

PHANTOM_VERSION = "1.0.0"
_HB_STREAM = 90
_CHUNK = 16
# Chunks rendered ahead of the writer per worker: bounds the results held in memory.
_AHEAD_PER_JOB = 4
_SEX_WORD = {"M": "Male", "F": "Female"}


@dataclass(frozen=True)
class ImageResult:
    """What a worker sends back for one image (everything but the pixels)."""

    record: ImageRecord
    positives: tuple[str, ...]
    annotations: dict[str, Any]
    segmentations: dict[str, Any]
    spurious: dict[str, Any]
    hb_annotations: dict[str, Any] | None
    hb_segmentations: dict[str, Any] | None
    hb_points: dict[str, Any] | None
    support_device: int
    render_masks: dict[str, Any] | None = None

    def row(self) -> ImageRow:
        """What the tables and the summary keep of the image once its JSON is written."""
        return ImageRow(self.record, self.positives, self.support_device)


@dataclass(frozen=True)
class ImageRow:
    """The per-image row kept for ``labels.csv``, ``attributes.csv`` and the summary."""

    record: ImageRecord
    positives: tuple[str, ...]
    support_device: int


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _segmentations(polygons: dict[str, list], size: int) -> dict[str, Any]:
    from cxr_spurious.io.masks import rasterize_polygons

    return {
        t: encode_rle(rasterize_polygons(polygons.get(t, []), size, size)) for t in PHANTOM_TASKS
    }


def _renders_needed(rec: ImageRecord, renders: Sequence[str]) -> dict[str, RenderSpec]:
    """Counterfactuals that differ from the original (the others are byte copies)."""
    present = set(rec.positives) | ({"Chest Tube"} if rec.tube else set())
    return {r: RenderSpec(remove=RENDER_REMOVES[r]) for r in renders if RENDER_REMOVES[r] & present}


def process_record(cfg: PhantomConfig, rec: ImageRecord, seed: int, out_dir: Path) -> ImageResult:
    """Render one image (and its counterfactuals), write its PNGs, return its ground truth.

    Args:
        cfg: Generator config.
        rec: The image's record.
        seed: Master seed.
        out_dir: Output (temporary) folder.

    Returns:
        The image's ground truth entries.
    """
    size = cfg.image_size
    cf_renders = cfg.counterfactuals.renders if rec.split in cfg.counterfactuals.splits else ()
    needed = _renders_needed(rec, cf_renders)
    kinds = cfg.artefacts.kinds if rec.split in cfg.artefacts.splits else ()
    with_artefact = {render_name(k): RenderSpec(artefact=k) for k in kinds}
    renders = render_versions(cfg, rec, seed, {"original": RenderSpec(), **needed, **with_artefact})
    original: RenderedImage = renders["original"]
    data = _png(original.image)
    _write(out_dir / rec.rel_path, data)
    for render in cf_renders:
        image = _png(renders[render].image) if render in needed else data
        _write(out_dir / "counterfactuals" / render / rec.rel_path, image)
    render_masks = {}
    for name in with_artefact:
        _write(out_dir / "counterfactuals" / name / rec.rel_path, _png(renders[name].image))
        render_masks[name] = encode_rle(renders[name].artefact_mask)
    polygons = original.polygons
    annotations = {
        "img_size": [size, size],
        **{t: polygons[t] for t in PHANTOM_TASKS if t in polygons},
    }
    hb = (None, None, None)
    if rec.split in cfg.human_benchmark.splits:
        outlines, points = human_benchmark.read_image(
            polygons,
            stream_rng(seed, STREAM_IMAGE, rec.index, _HB_STREAM),
            cfg.human_benchmark,
            size,
        )
        hb = ({"img_size": [size, size], **outlines}, _segmentations(outlines, size), points)
    return ImageResult(
        record=rec,
        positives=tuple(t for t in PHANTOM_TASKS if t in polygons),
        annotations=annotations,
        segmentations=_segmentations(polygons, size),
        spurious={o: encode_rle(original.spurious[o]) for o in SPURIOUS_OBJECTS},
        hb_annotations=hb[0],
        hb_segmentations=hb[1],
        hb_points=hb[2],
        support_device=int(original.spurious["Support Device"].any()),
        render_masks=render_masks or None,
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _process_chunk(
    cfg: PhantomConfig, records: Sequence[ImageRecord], seed: int, out_dir: str
) -> list[ImageResult]:
    return [process_record(cfg, rec, seed, Path(out_dir)) for rec in records]


def _rendered(
    cfg: PhantomConfig,
    records: Sequence[ImageRecord],
    seed: int,
    out_dir: Path,
    n_jobs: int,
    progress: bool,
) -> Iterator[ImageResult]:
    """Render every record (writing its PNGs) and yield its result, in record order.

    With several workers, at most ``_AHEAD_PER_JOB * n_jobs`` chunks are rendered ahead of
    the consumer, so the results held in memory do not grow with the number of images.
    """
    chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
    with progress_bar(
        total=len(records), desc="phantom", unit="img", disable=not progress, leave=True
    ) as bar:
        if n_jobs == 1:
            for chunk in chunks:
                part = _process_chunk(cfg, chunk, seed, str(out_dir))
                bar.update(len(part))
                yield from part
            return
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
            todo = iter(chunks)
            pending: deque[cf.Future[list[ImageResult]]] = deque()

            def submit_next() -> None:
                chunk = next(todo, None)
                if chunk is not None:
                    pending.append(pool.submit(_process_chunk, cfg, chunk, seed, str(out_dir)))

            for _ in range(_AHEAD_PER_JOB * n_jobs):
                submit_next()
            while pending:
                part = pending.popleft().result()
                submit_next()
                bar.update(len(part))
                yield from part


class JsonObjectWriter:
    """Writes a JSON object to a file one entry at a time.

    The bytes are those of ``json.dumps(dict(entries), separators=(",", ":"))``, so a
    document that does not fit in memory as Python objects is written without building it.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.count = 0
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fh.write("{")

    def add(self, key: str, value: Any) -> None:
        """Append ``key: value`` (keys must be unique; the caller guarantees it)."""
        self._fh.write(("," if self.count else "") + json.dumps(key) + ":" + _json(value))
        self.count += 1

    def close(self) -> None:
        """Close the object and the file."""
        if not self._fh.closed:
            self._fh.write("}")
            self._fh.close()


class _GroundTruthWriter:
    """Streams each image's ground truth into the CheXlocalize-format JSON files."""

    def __init__(self, cfg: PhantomConfig, out: Path, stack: contextlib.ExitStack) -> None:
        def open_json(rel: str | Path) -> JsonObjectWriter:
            writer = JsonObjectWriter(out / rel)
            stack.callback(writer.close)
            return writer

        self.gt = {
            "annotations": open_json("gt_annotations.json"),
            "segmentations": open_json("gt_segmentations.json"),
            "spurious": open_json("spurious_segmentations.json"),
        }
        self.hb = (
            {
                "hb_annotations": open_json("hb_annotations.json"),
                "hb_segmentations": open_json("hb_segmentations.json"),
                "hb_points": open_json("hb_salient_pt.json"),
            }
            if cfg.human_benchmark.splits
            else {}
        )
        self.masks = {
            name: open_json(Path("counterfactuals") / name / RENDER_MASKS_FILE)
            for name in map(render_name, cfg.artefacts.kinds)
        }
        self.hb_images = 0

    def add(self, result: ImageResult) -> None:
        image_id = result.record.image_id
        for field, writer in self.gt.items():
            writer.add(image_id, getattr(result, field))
        if result.hb_annotations is not None:
            self.hb_images += 1
            for field, writer in self.hb.items():
                writer.add(image_id, getattr(result, field))
        for name, mask in (result.render_masks or {}).items():
            self.masks[name].add(image_id, mask)


def labels_row(result: ImageRow) -> list[str]:
    """One ``labels.csv`` row (CheXpert header order) for an image."""
    rec = result.record
    row = [rec.rel_path, _SEX_WORD[rec.sex], str(rec.age_years), "Frontal", rec.view]
    for obs in CHEXPERT_OBSERVATIONS:
        task = task_column(obs)
        if task in PHANTOM_TASKS:
            row.append("1.0" if task in result.positives else "0.0")
        elif obs == "Support Devices":
            row.append("1.0" if (rec.tube or result.support_device) else "0.0")
        elif obs == "No Finding":
            row.append("0.0" if result.positives else "1.0")
        else:
            row.append("")
    return row


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def summarise(results: Sequence[ImageRow]) -> dict[str, Any]:
    """Counts per split: images, patients, positives per task, tube rates by PTX status."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        rows = [r for r in results if r.record.split == split]
        ptx = [r for r in rows if "Pneumothorax" in r.positives]
        no_ptx = [r for r in rows if "Pneumothorax" not in r.positives]
        out[split] = {
            "images": len(rows),
            "patients": len({r.record.patient for r in rows}),
            "positives": {t: sum(t in r.positives for r in rows) for t in PHANTOM_TASKS},
            "tube": sum(r.record.tube for r in rows),
            "tube_rate_given_ptx": (sum(r.record.tube for r in ptx) / len(ptx)) if ptx else None,
            "tube_rate_given_no_ptx": (sum(r.record.tube for r in no_ptx) / len(no_ptx))
            if no_ptx
            else None,
        }
    return out


def _write_tables(
    cfg: PhantomConfig,
    rows: Sequence[ImageRow],
    truth: _GroundTruthWriter,
    seed: int,
    out: Path,
) -> None:
    write_text_atomic(out / "labels.csv", _csv(CHEXPERT_HEADER, [labels_row(r) for r in rows]))
    attrs = [
        [
            r.record.image_id,
            r.record.patient_id,
            r.record.study_id,
            r.record.split,
            r.record.sex,
            r.record.age_years,
            r.record.race,
            r.record.insurance,
            r.record.site,
            r.record.tube,
        ]
        for r in rows
    ]
    write_text_atomic(out / "attributes.csv", _csv(ATTRIBUTE_HEADER, attrs))
    meta = {
        "generator": "cxr_spurious.phantom",
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "config": cfg.to_dict(),
        "counts": summarise(rows),
        "human_benchmark_images": truth.hb_images,
        "counterfactual_images": {
            v: sum(r.record.split in cfg.counterfactuals.splits for r in rows)
            for v in cfg.counterfactuals.renders
        },
        "artefact_images": {name: writer.count for name, writer in truth.masks.items()},
    }
    # Not sort_keys: the order of sites and demographic groups decides the cohort, so the
    # config must keep it for ``PhantomConfig.from_dict(meta["config"])`` to reproduce it.
    write_text_atomic(out / "phantom_meta.json", json.dumps(meta, indent=2))


def generate_phantom(
    cfg: PhantomConfig, out_dir: Path | str, *, seed: int, n_jobs: int = 1, progress: bool = True
) -> Path:
    """Generate the phantom data set into ``out_dir`` (replaced atomically when complete).

    Args:
        cfg: Generator config (``PhantomConfig.from_dict``; one built otherwise gets the
            same checks).
        out_dir: Output folder; an existing folder is replaced only once the new one is done.
        seed: Master seed, an integer in ``[0, 2**32 - 1]``; the output depends only on
            (cfg, seed), not on ``n_jobs``.
        n_jobs: Worker processes (1 renders in this process).
        progress: Show a tqdm progress bar.

    Returns:
        The output folder.

    Raises:
        ParameterError: a config value ``PhantomConfig.from_dict`` refuses (its key under
            ``ingestion.phantom``), ``n_jobs`` < 1, or a seed outside ``[0, 2**32 - 1]`` or
            not an integer; before anything is written.
    """
    check_config(cfg, PIPELINE_KEY)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ParameterError("n_jobs", f"expected an integer >= 1, got {n_jobs!r}")
    seed = check_seed(seed, "seed")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    records = sorted(build_cohort(cfg, int(seed)), key=lambda r: r.index)
    rows: list[ImageRow] = []
    with atomic_dir(out_dir) as tmp:
        with contextlib.ExitStack() as stack:
            truth = _GroundTruthWriter(cfg, tmp, stack)
            for result in _rendered(cfg, records, int(seed), tmp, n_jobs, progress):
                truth.add(result)
                rows.append(result.row())
        _write_tables(cfg, rows, truth, int(seed), tmp)
    logger.info(
        "Phantom: %d images written to %s in %.1f s (n_jobs=%d)",
        len(rows),
        out_dir,
        time.perf_counter() - start,
        n_jobs,
    )
    return out_dir
