"""Links to a run's page in the MLflow UI (``datasets.mlflow_run.run_url``)."""

from __future__ import annotations

import pytest

from cxr_spurious.datasets.mlflow_run import run_url, url_suffix


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/#/experiments/3/runs/abc"),
        ("https://mlflow.example.org/", "https://mlflow.example.org/#/experiments/3/runs/abc"),
        ("HTTP://host:5000/", "HTTP://host:5000/#/experiments/3/runs/abc"),
        ("sqlite:///mlflow.db", None),  # a local store: no server to link to
        ("file:///tmp/mlruns", None),
        ("databricks", None),
    ],
)
def test_run_url(uri: str, expected: str | None) -> None:
    assert run_url(uri, "3", "abc") == expected
    assert url_suffix(uri, "3", "abc") == (f": {expected}" if expected else "")


@pytest.mark.parametrize(
    "uri",
    [
        "https://alice:s3cret@mlflow.example.org",
        "http://alice:s3cret@127.0.0.1:5000/",
        "https://token@mlflow.example.org",
    ],
)
def test_a_password_in_the_uri_stays_out_of_the_link(uri: str) -> None:
    link = run_url(uri, "3", "abc")
    assert link is not None and "s3cret" not in link and "alice" not in link
    assert "token" not in link
    host = "127.0.0.1:5000" if "127.0.0.1" in uri else "mlflow.example.org"
    assert link == f"{uri.split('://')[0]}://{host}/#/experiments/3/runs/abc"
