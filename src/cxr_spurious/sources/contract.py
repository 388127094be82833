"""The manifest contract: the one table every source adapter produces.

One row per image. Columns:

=============  ========  ===========================================================
column         dtype     meaning
=============  ========  ===========================================================
image_id       str       CheXlocalize-style id (``patient00001_study1_view1_frontal``)
patient_id     str       patient identifier; splits never share a patient
study_id       str       study identifier (unique across patients)
source         str       adapter name (``phantom``, ``chexlocalize``, ...)
split          str       ``train`` / ``val`` / ``test``
path           str       path (or fsspec URL) of the image file, as the adapter found it
view           str       ``PA`` / ``AP`` / ``Lateral`` / ... (NaN if unknown)
width, height  int       original image size in pixels
<task>         float     one column per pathology: 1 / 0 / NaN (= unknown)
sex            str       ``M`` / ``F`` (NaN if unknown)
age_years      float     age in years (NaN if unknown)
race           str       NaN if unknown
insurance      str       NaN if unknown
site           str       acquisition site / hospital (NaN if unknown)
tube           float     chest tube present 1 / 0 / NaN
=============  ========  ===========================================================

Extra columns (e.g. ``body_part``) are allowed. Pathology columns are named in
``manifest.attrs["tasks"]`` (kept through parquet) or passed explicitly.

Also here, because every stage that reads a manifest shares them: the header of the
``attributes.csv`` file that carries the attributes next to CheXpert-style labels (written
by the phantom, read by the CheXlocalize adapter), the ``age_bin`` attribute derived from
``age_years``, and ``align_table``, which puts a per-image table in manifest order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError

ID_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "source",
    "split",
    "path",
    "view",
)
SIZE_COLUMNS: tuple[str, ...] = ("width", "height")
REQUIRED_COLUMNS: tuple[str, ...] = (*ID_COLUMNS, *SIZE_COLUMNS)
ATTRIBUTE_COLUMNS: tuple[str, ...] = ("sex", "age_years", "race", "insurance", "site", "tube")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_STRING_ATTRIBUTES = ("sex", "race", "insurance", "site")

# Header of attributes.csv: ids, split and the attribute columns, in this order.
ATTRIBUTE_HEADER: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "split",
    *ATTRIBUTE_COLUMNS,
)

# The derived attribute ``age_bin`` and the default lower edges of its bins.
AGE_BIN = "age_bin"
DEFAULT_AGE_EDGES: tuple[float, ...] = (0.0, 20.0, 40.0, 60.0, 80.0)


def manifest_tasks(manifest: pd.DataFrame, tasks: Sequence[str] | None = None) -> list[str]:
    """Pathology columns of a manifest: ``tasks`` if given, else ``attrs['tasks']``.

    Raises:
        ContractError: neither is available, or a named task column is missing.
    """
    names = list(tasks) if tasks is not None else list(manifest.attrs.get("tasks", []))
    if not names:
        raise ContractError(
            "manifest does not name its pathology columns (attrs['tasks'] is empty)"
        )
    missing = [t for t in names if t not in manifest.columns]
    if missing:
        raise ContractError(
            f"manifest lacks pathology column(s) {missing}; it has {list(manifest.columns)}"
        )
    return names


def normalise_manifest(manifest: pd.DataFrame, tasks: Sequence[str], source: str) -> pd.DataFrame:
    """Put a manifest in canonical form: column order, dtypes, missing attributes as NaN.

    Args:
        manifest: Table with at least the required columns.
        tasks: Pathology column names.
        source: Adapter name, written to ``source`` when absent.

    Returns:
        A new DataFrame with required, task, attribute and extra columns in that order and
        ``attrs['tasks']`` set.
    """
    df = manifest.copy()
    if "source" not in df.columns:
        df["source"] = source
    for col in ATTRIBUTE_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in ("image_id", "patient_id", "study_id", "source", "split", "path"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    df["view"] = (
        df["view"].astype(object).where(df["view"].notna(), np.nan)
        if "view" in df.columns
        else np.nan
    )
    for col in SIZE_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col]).astype("int64")
    for task in tasks:
        df[task] = pd.to_numeric(df[task], errors="raise").astype("float64")
    df["age_years"] = pd.to_numeric(df["age_years"], errors="coerce").astype("float64")
    df["tube"] = pd.to_numeric(df["tube"], errors="coerce").astype("float64")
    for col in _STRING_ATTRIBUTES:
        df[col] = df[col].astype(object).where(df[col].notna(), np.nan)
    extras = [c for c in df.columns if c not in (*REQUIRED_COLUMNS, *tasks, *ATTRIBUTE_COLUMNS)]
    df = df[[*REQUIRED_COLUMNS, *tasks, *ATTRIBUTE_COLUMNS, *extras]].reset_index(drop=True)
    df.attrs["tasks"] = list(tasks)
    return df


def validate_manifest(
    manifest: pd.DataFrame, tasks: Iterable[str] | None = None, *, name: str = "manifest"
) -> pd.DataFrame:
    """Check a manifest against the contract; return it unchanged if it conforms.

    Checks: required and attribute columns present; ``image_id`` unique and non-empty;
    ``split`` in train/val/test; no patient in two splits; sizes positive integers;
    pathology values in {0, 1, NaN}; ``tube`` in {0, 1, NaN}; ``age_years`` >= 0 or NaN.

    Raises:
        ContractError: naming the column, the offending rows (first few) and what was expected.
    """
    task_list = manifest_tasks(manifest, list(tasks) if tasks is not None else None)
    missing = [c for c in (*REQUIRED_COLUMNS, *ATTRIBUTE_COLUMNS) if c not in manifest.columns]
    if missing:
        raise ContractError(
            f"{name}: missing column(s) {missing}; "
            f"the contract requires {list(REQUIRED_COLUMNS + ATTRIBUTE_COLUMNS)}"
        )
    if manifest.empty:
        raise ContractError(f"{name}: has no rows")
    missing_id = _missing_text(manifest["image_id"])
    if missing_id.any():
        raise ContractError(
            f"{name}: image_id missing or empty at rows "
            f"{[int(i) for i in np.flatnonzero(missing_id)[:5]]}"
        )
    ids = manifest["image_id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise ContractError(f"{name}: image_id must be unique; duplicated: {list(dup[:5])}")
    bad_split = ~manifest["split"].isin(SPLITS)
    if bad_split.any():
        rows = manifest.loc[bad_split, ["image_id", "split"]].head(5).to_dict("records")
        raise ContractError(f"{name}: split must be one of {SPLITS}; got {rows}")
    no_patient = _missing_text(manifest["patient_id"])
    if no_patient.any():
        raise ContractError(
            f"{name}: patient_id missing or empty for image_id {list(ids[no_patient][:5])}; "
            "every image needs its patient (splits and bootstraps are by patient)"
        )
    splits_per_patient = manifest.groupby("patient_id")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        pid = leaking.index[0]
        found = sorted(manifest.loc[manifest["patient_id"] == pid, "split"].unique())
        raise ContractError(
            f"{name}: patient '{pid}' appears in several splits {found}; "
            f"splits must be patient-disjoint ({len(leaking)} such patients)"
        )
    for col in SIZE_COLUMNS:
        values = pd.to_numeric(manifest[col], errors="coerce")
        bad = values.isna() | (values <= 0) | (values != np.floor(values))
        if bad.any():
            raise ContractError(
                f"{name}: column '{col}' must be a positive integer; "
                f"bad rows for image_id {list(ids[bad][:5])}"
            )
    for col in (*task_list, "tube"):
        values = pd.to_numeric(manifest[col], errors="coerce")
        bad = ~(values.isna() | values.isin([0.0, 1.0])) | (values.isna() & manifest[col].notna())
        if bad.any():
            raise ContractError(
                f"{name}: column '{col}' must hold 1 / 0 / NaN; "
                f"bad values {list(manifest.loc[bad, col].head(5))} "
                f"for image_id {list(ids[bad][:5])}"
            )
    ages = pd.to_numeric(manifest["age_years"], errors="coerce")
    if (ages < 0).any():
        raise ContractError(
            f"{name}: age_years must be >= 0 or NaN; bad for image_id {list(ids[ages < 0][:5])}"
        )
    return manifest


def _missing_text(column: pd.Series) -> np.ndarray:
    """Rows whose value is missing (None / NaN) or an empty or blank string."""
    missing = column.isna().to_numpy()
    text = column.astype(str).str.strip()
    return missing | (text == "").to_numpy()


def assign_patient_splits(
    patients: Sequence[str] | pd.Series,
    fractions: dict[str, float],
    seed: int,
) -> dict[str, str]:
    """Assign each patient to a split, at random with the given proportions.

    Args:
        patients: Patient ids (duplicates allowed).
        fractions: ``{"train": 0.6, "val": 0.15, "test": 0.25}``; must sum to 1.
        seed: Seed for the shuffle.

    Returns:
        ``{patient_id: split}``.
    """
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ParameterError(
            "split_fractions", f"unknown split(s) {sorted(unknown)}; expected keys from {SPLITS}"
        )
    total = float(sum(fractions.values()))
    if not np.isclose(total, 1.0) or any(v < 0 for v in fractions.values()):
        raise ParameterError(
            "split_fractions", f"fractions must be >= 0 and sum to 1, got {fractions}"
        )
    unique = np.array(sorted(set(map(str, patients))))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    names = [s for s in SPLITS if s in fractions]
    bounds = np.round(np.cumsum([fractions[s] for s in names]) * len(unique)).astype(int)
    out: dict[str, str] = {}
    start = 0
    for split, end in zip(names, bounds):
        for pid in unique[start:end]:
            out[str(pid)] = split
        start = end
    return out


def patient_ids(image_ids: Iterable[object], manifest: pd.DataFrame, *, table: str) -> np.ndarray:
    """The manifest's ``patient_id`` of each CXR, as strings: the bootstrap's cluster.

    Args:
        image_ids: CXR ids of the rows of ``table``.
        manifest: The manifest (``image_id``, ``patient_id``; the first row of an id counts).
        table: What the rows are, for the error (e.g. ``"the localization table"``).

    Raises:
        ContractError: the manifest lacks ``image_id`` / ``patient_id``, or some CXRs of
            ``table`` (naming how many and the first three).
    """
    lacking = [c for c in ("image_id", "patient_id") if c not in manifest.columns]
    if lacking:
        raise ContractError(
            f"manifest has no {' or '.join(lacking)} column; {table} needs each CXR's patient "
            "(the bootstrap resamples patients)"
        )
    dedup = manifest.drop_duplicates("image_id")
    lookup = pd.Series(
        dedup["patient_id"].astype(str).to_numpy(), index=dedup["image_id"].astype(str).to_numpy()
    )
    ids = pd.Series(list(image_ids), dtype=object).astype(str)
    patients = ids.map(lookup)
    missing = sorted(set(ids[patients.isna()]))
    if missing:
        raise ContractError(
            f"manifest has no patient_id for {len(missing)} CXR(s) of {table}, e.g. "
            f"{missing[:3]}; every CXR of {table} must be a manifest row (the bootstrap "
            "resamples patients)"
        )
    return patients.to_numpy(dtype=object).astype(str)


def age_bin_labels(edges: Sequence[float], *, key: str = "age_bins") -> list[str]:
    """Labels of the age bins defined by increasing lower edges (last bin open-ended).

    Args:
        edges: Lower edges, e.g. ``[0, 20, 40, 60, 80]``.
        key: The parameter the edges come from, named in the error.

    Returns:
        ``["0-20", "20-40", "40-60", "60-80", "80+"]`` for the default edges.
    """
    e = _check_edges(edges, key)
    names = [f"{_edge(a)}-{_edge(b)}" for a, b in zip(e[:-1], e[1:])]
    return [*names, f"{_edge(e[-1])}+"]


def bin_ages(
    ages: pd.Series | np.ndarray,
    edges: Sequence[float] = DEFAULT_AGE_EDGES,
    *,
    key: str = "age_bins",
) -> pd.Series:
    """Map ages in years to bin labels; ages below the first edge or NaN map to NaN.

    Args:
        ages: Ages in years.
        edges: Increasing lower edges; bins are ``[a, b)`` and the last is ``[last, inf)``.
        key: The parameter the edges come from (e.g. ``debiasing.age_bins``), named in the
            error.

    Returns:
        A Series of bin labels (object dtype, NaN where unknown).

    Raises:
        ParameterError: (on ``key``) the edges are empty or not increasing.
    """
    e = _check_edges(edges, key)
    values = pd.to_numeric(pd.Series(ages), errors="coerce").to_numpy(dtype=float)
    labels = np.array(age_bin_labels(e, key=key), dtype=object)
    idx = np.searchsorted(np.asarray(e), values, side="right") - 1
    out = np.full(values.shape, np.nan, dtype=object)
    ok = np.isfinite(values) & (idx >= 0)
    out[ok] = labels[idx[ok]]
    return pd.Series(out, index=getattr(ages, "index", None), dtype=object)


def _check_edges(edges: Sequence[float], key: str) -> list[float]:
    try:
        e = [float(x) for x in edges]
    except (TypeError, ValueError):
        e = []
    if not e or any(b <= a for a, b in zip(e[:-1], e[1:])) or not all(map(np.isfinite, e)):
        raise ParameterError(
            key, f"must be a non-empty increasing list of finite lower edges, got {edges!r}"
        )
    return e


def _edge(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def align_table(
    manifest: pd.DataFrame, table: pd.DataFrame, *, name: str, split: str | None = None
) -> pd.DataFrame:
    """Rows of ``table`` in manifest order (optionally only the rows of one split).

    Args:
        manifest: The manifest (``image_id``, ``split``).
        table: A per-image table with an ``image_id`` column.
        name: Dataset name for error messages.
        split: Restrict the required ids to this split (``None``: all rows).

    Returns:
        ``table`` reindexed on the manifest ids (index = manifest index of those rows).

    Raises:
        ContractError: duplicated ids in ``table`` or manifest ids missing from it.
    """
    if "image_id" not in table.columns:
        raise ContractError(f"{name}: no image_id column; got {list(table.columns)[:8]}")
    ids = table["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ContractError(f"{name}: image_id must be unique; duplicated {list(dup.unique()[:5])}")
    wanted = manifest if split is None else manifest[manifest["split"] == split]
    want_ids = wanted["image_id"].astype(str)
    missing = ~want_ids.isin(ids)
    if missing.any():
        raise ContractError(
            f"{name} is misaligned with the manifest: {int(missing.sum())} of {len(want_ids)} "
            f"{split or 'manifest'} image_id(s) are absent, e.g. {list(want_ids[missing][:3])}"
        )
    out = table.assign(image_id=ids).set_index("image_id").loc[want_ids.to_numpy()]
    out.index = wanted.index
    return out
