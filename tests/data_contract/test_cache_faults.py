"""Faults while building or reading the image cache: interrupts, leftovers, full disks, damage."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cxr_spurious.datasets.image_cache import ImageCacheDataset
from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.sources import cache as cache_mod
from cxr_spurious.sources.cache import (
    CacheSpec,
    build_cache,
    check_disk_space,
    estimate_cache_bytes,
    load_cache,
    remove_stale_builds,
    verify_cache_files,
)

REPO = Path(__file__).resolve().parents[2]

# Builds a cache of 400 images with 2 workers that take 0.7 s per image in code that cannot be
# interrupted (as a decode in C); each worker drops a marker file with its pid when it starts.
# A pool that lets its workers go on with their queued work after an interrupt (16 images,
# over 11 s) fails the 10 s bound.
BUILD_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from cxr_spurious.sources import cache

    _original = cache._row_payload


    def slow_row(args):
        marker = Path(sys.argv[1]) / f"worker.{os.getpid()}"
        if not marker.exists():
            marker.write_text("")
        # A slow decode in C code, during which Python cannot raise KeyboardInterrupt.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        time.sleep(0.7)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        return _original(args)


    if __name__ == "__main__":
        root = Path(sys.argv[1])
        image = root / "img.png"
        Image.fromarray(np.full((40, 40), 100, dtype=np.uint8)).save(image)
        n = 400
        spec = cache.CacheSpec(
            image_ids=[f"i{k}" for k in range(n)], paths=[str(image)] * n, sizes=[(40, 40)] * n,
            labels=np.zeros((n, 1)), tasks=["Lung Lesion"], objects=[], size=16, n_jobs=2,
        )
        cache._row_payload = slow_row
        cache.build_cache(spec, root / "image_cache", progress=False)
    """
)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _spec(tmp_path: Path, n: int = 6, size: int = 16) -> CacheSpec:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return CacheSpec(
        image_ids=[f"i{k}" for k in range(n)],
        paths=paths,
        sizes=[(40, 48)] * n,
        labels=np.zeros((n, 2)),
        tasks=["Lung Lesion", "Edema"],
        objects=["Chest Tube"],
        size=size,
    )


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="counts processes through /proc (Linux)"
)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_every_worker_and_removes_the_temporary_folder(
    tmp_path: Path, sig: int
) -> None:
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker.*"))) < 2:
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        assert list(tmp_path.glob(".image_cache.tmp.*")), "no temporary folder while building"
        time.sleep(0.5)
        start = time.monotonic()
        os.killpg(proc.pid, sig)
        _, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and elapsed < 10
    deadline = time.monotonic() + 5
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(proc.pid) == [], "worker processes outlived the interrupt"
    assert "InvalidStateError" not in stderr.decode()
    assert not list(tmp_path.glob(".image_cache.*")), "the temporary folder was left behind"
    assert not (tmp_path / "image_cache").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_are_removed_but_a_concurrent_build_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "image_cache"
    host = cache_mod.socket.gethostname()
    dead = tmp_path / ".image_cache.tmp.dead"
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"x" * 100)
    (dead / ".owner.json").write_text(json.dumps({"pid": _dead_pid(), "start": None, "host": host}))
    old_swap = tmp_path / f".image_cache.old.{_dead_pid()}"
    old_swap.mkdir()
    legacy = tmp_path / ".image_cache.tmp.legacy"  # an older version's folder: no owner record
    legacy.mkdir()
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    fresh_legacy = tmp_path / ".image_cache.tmp.fresh"  # just created, owner record not yet written
    fresh_legacy.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / ".image_cache.tmp.live"
        live.mkdir()
        start = cache_mod._process_start(sleeper.pid)
        (live / ".owner.json").write_text(
            json.dumps({"pid": sleeper.pid, "start": start, "host": host})
        )
        with caplog.at_level(logging.WARNING, logger="cxr_spurious.sources.cache"):
            build_cache(_spec(tmp_path), folder, progress=False)
        assert not dead.exists() and not old_swap.exists() and not legacy.exists()
        assert live.is_dir() and fresh_legacy.is_dir()
        assert str(dead) in caplog.text and "no longer runs" in caplog.text
        # The same pid now running another program (start time differs): stale.
        (live / ".owner.json").write_text(
            json.dumps({"pid": sleeper.pid, "start": "1", "host": host})
        )
        assert remove_stale_builds(folder) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert load_cache(folder).images.shape == (6, 16, 16)


def test_a_cache_the_disk_cannot_hold_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path, size=64)
    need = estimate_cache_bytes(spec)
    assert need == 6 * 64 * 64 * (1 + 2 * 2 + 1) + 6 * 2
    free = 10 * 2**20
    seen = []

    def disk_usage(path: object) -> SimpleNamespace:
        seen.append(Path(str(path)))
        return SimpleNamespace(total=free, used=0, free=free)

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", disk_usage)
    with pytest.raises(ParameterError) as info:
        build_cache(spec, tmp_path / "image_cache", progress=False)
    assert seen == [tmp_path]
    message = str(info.value)
    assert "ingestion.cache.size" in message and str(tmp_path / "image_cache") in message
    assert f"{free} bytes" in message and "lower ingestion.cache.size (now 64)" in message
    assert not list(tmp_path.glob(".image_cache*")) and not (tmp_path / "image_cache").exists()
    monkeypatch.undo()
    check_disk_space(spec, tmp_path / "image_cache")  # the real disk holds 150 KB


def test_truncated_array_is_named_downstream_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(tmp_path)
    folder = tmp_path / "image_cache"
    ds = ImageCacheDataset(path=str(folder), progress=False)
    ds.save(spec)
    expected = np.array(ds.load().images)
    assert verify_cache_files(folder) == []
    images = folder / "images.npy"
    os.truncate(images, images.stat().st_size - 100)
    with pytest.raises(
        DataFormatError, match=r"images\.npy.*truncated or damaged.*kedro run --pipeline ingestion"
    ):
        load_cache(folder)
    problems = verify_cache_files(folder)
    assert len(problems) == 1 and str(images) in problems[0]
    with caplog.at_level(logging.WARNING):
        ds.save(spec)
    assert "damaged, rebuilding" in caplog.text and str(images) in caplog.text
    np.testing.assert_array_equal(ds.load().images, expected)
    assert verify_cache_files(folder) == []


def test_same_size_damage_is_caught_by_the_sampled_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(tmp_path)
    folder = tmp_path / "image_cache"
    ds = ImageCacheDataset(path=str(folder), progress=False)
    ds.save(spec)
    masks = folder / "masks.npy"
    raw = bytearray(masks.read_bytes())
    raw[-1] ^= 0xFF
    masks.write_bytes(bytes(raw))
    assert any(str(masks) in p and "hash" in p for p in verify_cache_files(folder))
    with caplog.at_level(logging.WARNING):
        ds.save(spec)
    assert str(masks) in caplog.text
    assert verify_cache_files(folder) == []


def test_missing_array_and_old_index_are_reported(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    folder = tmp_path / "image_cache"
    build_cache(spec, folder, progress=False)
    (folder / "boxes.npy").unlink()
    with pytest.raises(DataFormatError, match=r"boxes\.npy.*is missing"):
        load_cache(folder)
    index = json.loads((folder / "index.json").read_text())
    del index["files"]
    assert "older cache format" in verify_cache_files(folder, index)[0]


def test_an_up_to_date_cache_still_gets_stale_folders_removed(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    folder = tmp_path / "image_cache"
    ds = ImageCacheDataset(path=str(folder), progress=False)
    ds.save(spec)
    stamp = (folder / "images.npy").stat().st_mtime_ns
    stale = tmp_path / ".image_cache.tmp.killed"
    stale.mkdir()
    (stale / ".owner.json").write_text(
        json.dumps({"pid": _dead_pid(), "start": None, "host": cache_mod.socket.gethostname()})
    )
    ds.save(spec)
    assert not stale.exists()
    assert (folder / "images.npy").stat().st_mtime_ns == stamp  # not rebuilt


def _die(args: object) -> None:
    os._exit(3)


def test_a_worker_that_dies_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path)
    spec.n_jobs = 2
    monkeypatch.setattr(cache_mod, "_row_payload", _die)
    with pytest.raises(cache_mod.WorkerError, match=r"died \(exit code 3\)"):
        build_cache(spec, tmp_path / "image_cache", progress=False)
    assert not list(tmp_path.glob(".image_cache*")) and not (tmp_path / "image_cache").exists()


def test_an_error_in_a_worker_reaches_the_caller(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec.n_jobs = 2
    spec.sizes[3] = (41, 48)
    with pytest.raises(
        DataFormatError, match=r"img3\.png \(i3\): image is 48x40 .* manifest says 48x41"
    ):
        build_cache(spec, tmp_path / "image_cache", progress=False)
    assert not list(tmp_path.glob(".image_cache*"))


def _sees_parent_state(item: int) -> tuple[int, bool, int]:
    return item, hasattr(cache_mod, "_PARENT_ONLY_STATE"), os.getppid()


def test_workers_do_not_inherit_the_parents_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers come from the fork server: a worker forked from the caller would share the
    caller's objects (every image's ground truth), and the caller's reads of them would copy
    the shared pages, so memory would grow with the number of images."""
    monkeypatch.setattr(cache_mod, "_PARENT_ONLY_STATE", ["ground truth"] * 1000, raising=False)
    with cache_mod._worker_pool(2) as pool:
        assert pool is not None
        results = sorted(pool.imap_unordered(_sees_parent_state, range(8)))
    assert [r[0] for r in results] == list(range(8))
    assert not any(sees for _, sees, _ in results)
    assert os.getpid() not in {ppid for _, _, ppid in results}
