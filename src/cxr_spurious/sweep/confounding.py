"""A confounding level is a choice of render per image: which images carry the artefact.

Train and val are confounded with the label (P(artefact | PTX), P(artefact | no PTX)); the
test split is independent of it (``test_p`` for both labels), so that the robust AUROC and
the counterfactual reliance are measured on a balanced test set.

Exact quotas, not coin flips: in each (split, label) group of ``n`` images exactly
``floor(p * n + 0.5)`` carry the artefact, chosen at random (seeded). Bernoulli draws would
add binomial noise to the realised confounding (with 50 images, a nominal 0.9 lands anywhere
in about [0.8, 0.98]); quotas give the nominal strength up to rounding, so no seed trains on
a weaker or stronger confounding than another.

Which images carry the artefact still changes with the seed: each seed of the sweep re-draws
the carriers of every split, so the spread across seeds covers retraining on a re-drawn
training set and scoring on a re-drawn test composition (the test images themselves are
fixed). ``test_seed`` fixes the test carriers instead (the same for every seed and cell):
the spread across seeds is then the training side's alone.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_number
from cxr_spurious.phantom import render_name  # the phantom's one spelling: with_<kind>
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.study.counterfactual import NO_LESION, ORIGINAL

__all__ = ["NO_LESION", "ORIGINAL", "assign_artefacts", "quota", "render_name"]

CONFOUNDED_SPLITS: tuple[str, ...] = ("train", "val")
TEST_SPLIT = "test"


def quota(n: int, p: float) -> int:
    """Images of a group of ``n`` that carry the artefact: ``floor(p * n + 0.5)``.

    Computed exactly, with ``p`` the decimal it is written as (``Fraction(str(p))``), so a
    half rounds up: in binary floating point ``0.7 * 45`` is 31.499999999999996, which
    rounded down (31 carriers instead of 32).
    """
    return math.floor(Fraction(str(float(p))) * int(n) + Fraction(1, 2))


def assign_artefacts(
    manifest: pd.DataFrame,
    *,
    task: str,
    p_given_ptx: float,
    p_given_no_ptx: float,
    test_p: float = 0.5,
    seed: int,
    test_seed: int | None = None,
) -> pd.Series:
    """Which images carry the artefact: a boolean Series indexed by ``image_id``.

    Args:
        manifest: ``image_id``, ``split`` (train / val / test) and the 0 / 1 ``task`` column.
        task: The label column (e.g. ``Pneumothorax``).
        p_given_ptx: Share of train and val positives with the artefact.
        p_given_no_ptx: Share of train and val negatives with the artefact.
        test_p: Share of test images with the artefact, for both labels.
        seed: Seed; the result depends on it and on the images, not on the row order.
        test_seed: Seed of the test split's carriers alone (None: drawn with ``seed``, in
            the same stream as the train and val carriers).

    Raises:
        ParameterError: a probability outside [0, 1].
        ContractError: a missing column, an unknown split or a label that is not 0 / 1.
    """
    probs = {"p_given_ptx": p_given_ptx, "p_given_no_ptx": p_given_no_ptx, "test_p": test_p}
    for key, p in probs.items():
        check_number(p, key, low=0, high=1)
    table = _checked(manifest, task).sort_values("image_id", kind="stable")
    if test_seed is not None:
        test_seed = check_seed(test_seed, "sweep.test_seed")
    rng = np.random.default_rng(seed)
    test_rng = rng if test_seed is None else np.random.default_rng(test_seed)
    out = pd.Series(False, index=pd.Index(table["image_id"], name="image_id"), name="has_artefact")
    for (split, label), group in table.groupby(["split", task], sort=True):
        p = test_p if split == TEST_SPLIT else (p_given_ptx if label == 1 else p_given_no_ptx)
        ids = group["image_id"].to_numpy()
        draw = test_rng if split == TEST_SPLIT else rng
        chosen = draw.choice(ids.size, size=quota(ids.size, float(p)), replace=False)
        out.loc[ids[chosen]] = True
    return out


def _checked(manifest: pd.DataFrame, task: str) -> pd.DataFrame:
    missing = [c for c in ("image_id", "split", task) if c not in manifest.columns]
    if missing:
        raise ContractError(f"manifest: missing column(s) {missing} for the artefact assignment")
    if manifest["image_id"].duplicated().any():
        dup = manifest.loc[manifest["image_id"].duplicated(), "image_id"].head(3).tolist()
        raise ContractError(f"manifest: image_id repeats, e.g. {dup}")
    bad_split = ~manifest["split"].isin((*CONFOUNDED_SPLITS, TEST_SPLIT))
    if bad_split.any():
        rows = manifest.loc[bad_split, ["image_id", "split"]].head(3).to_dict("records")
        raise ContractError(f"manifest: split must be train / val / test, got {rows}")
    labels = pd.to_numeric(manifest[task], errors="coerce")
    bad = ~labels.isin((0, 1))
    if bad.any():
        rows = manifest.loc[bad, ["image_id", task]].head(3).to_dict("records")
        raise ContractError(f"manifest: column '{task}' must be 0 / 1 for every image, got {rows}")
    return manifest[["image_id", "split"]].assign(**{task: labels.astype(int)})
