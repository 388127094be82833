"""Fixtures shared by the Dask tests of this folder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    """Two single-threaded worker processes on loopback (one cluster per test module), and a
    client to inspect them and watch the scheduler."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit=0,
        ) as local,
        Client(local) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield local, client
