"""``stop_postgres`` returns only once the cluster's processes are gone.

``pg_ctl stop -w`` returns when ``postmaster.pid`` is removed, which the postmaster does just
before it exits: a fresh CI run once found the stopped cluster's process still running right
after ``stop``. Here a fake postmaster (a sleeping process with a child) stands in for the
cluster, and a fake ``pg_ctl`` ends it a moment after returning.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxr_spurious import tracking_server as ts

FAKE_POSTMASTER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    postmaster = subprocess.Popen(
        [sys.executable, "-c", FAKE_POSTMASTER], stdout=subprocess.PIPE, text=True
    )
    child = int(postmaster.stdout.readline())
    config = ts.ServerConfig.from_env(tmp_path, {})
    monkeypatch.setattr(ts, "postgres_running", lambda config: True)
    monkeypatch.setattr(ts, "postgres_pid", lambda config: postmaster.pid)
    monkeypatch.setattr(ts, "pg_binary", lambda name: name)
    yield config, postmaster, child
    for pid in (child, postmaster.pid):
        subprocess.run(["kill", "-KILL", str(pid)], check=False, capture_output=True)
    postmaster.wait(timeout=10)


def _end_later(postmaster: subprocess.Popen, child: int, delay: float) -> None:
    def end() -> None:
        time.sleep(delay)
        subprocess.run(["kill", "-KILL", str(child)], check=False)
        postmaster.kill()

    threading.Thread(target=end, daemon=True).start()


def test_stop_waits_for_the_postmaster_and_its_children(fake_cluster, monkeypatch) -> None:
    config, postmaster, child = fake_cluster
    assert ts._running(postmaster.pid) and ts._running(child)
    assert set(ts._children_and_self(postmaster.pid)) == {postmaster.pid, child}
    monkeypatch.setattr(ts, "_run", lambda command, what: _end_later(postmaster, child, 0.5))
    start = time.monotonic()
    assert ts.stop_postgres(config) is True
    assert time.monotonic() - start >= 0.5
    assert not ts._running(postmaster.pid) and not ts._running(child)


def test_a_cluster_process_that_outlives_the_wait_is_an_error(fake_cluster, monkeypatch) -> None:
    config, postmaster, child = fake_cluster
    monkeypatch.setattr(ts, "_run", lambda command, what: None)
    with pytest.raises(ts.TrackingServerError, match=r"still run after 0\.3 s"):
        ts.stop_postgres(config, wait_s=0.3)
