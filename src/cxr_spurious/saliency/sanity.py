"""Model-randomisation sanity check of saliency maps (Adebayo et al., NeurIPS 2018).

A saliency method that explains the *model* must give different maps when the trained
weights are replaced by random ones. The check re-initialises every layer of a copy of
the model (seeded), recomputes the maps on the same images and reports, per method and
task, the mean Spearman rank correlation between trained and random maps over images,
with a percentile bootstrap CI over patients (images when no patient is given; the
project's one bootstrap, ``cxr_spurious.stats.bootstrap``). High similarity means the maps
mostly reflect the input or the architecture, not what the model learned.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from cxr_spurious.saliency.compute import compute_maps
from cxr_spurious.saliency.registry import MethodOptions, MethodUnfitError
from cxr_spurious.stats.bootstrap import MAX_DROPPED_SHARE, MIN_CI_CLUSTERS, nanmean_cis

logger = logging.getLogger(__name__)

SANITY_COLUMNS: tuple[str, ...] = (
    "model",
    "method",
    "task",
    "n_images",
    "n_valid",
    "n_patients",
    "spearman",
    "spearman_lo",
    "spearman_hi",
    "spearman_dropped",
)


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialised (seeded; ``model`` untouched).

    Layers with ``reset_parameters`` use their own initialiser; any parameter that such a
    reset leaves unchanged is redrawn from a normal with the original tensor's standard
    deviation. The global torch RNG is forked, so its state is unchanged afterwards.

    Args:
        model: The trained model.
        seed: Seed of the re-initialisation.

    Returns:
        The randomised copy, in eval mode.
    """
    clone = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in clone.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        generator = torch.Generator().manual_seed(int(seed) + 1)
        with torch.no_grad():
            for name, p in clone.named_parameters():
                if torch.equal(p.detach().cpu(), before[name].cpu()):
                    std = float(before[name].float().std()) if p.numel() > 1 else 1.0
                    noise = torch.randn(p.shape, generator=generator) * (std if std > 0 else 1.0)
                    p.copy_(noise.to(p.device, p.dtype))
    return clone.eval()


def spearman_per_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (flattened pixels).

    Args:
        a: (n, h, w) maps.
        b: (n, h, w) maps of the same shape.

    Returns:
        (n,) correlations; NaN where either map is constant (no ranking).
    """
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {a.shape} vs {b.shape}")
    out = np.full(a.shape[0], np.nan)
    for i in range(a.shape[0]):
        x = np.asarray(a[i], dtype=np.float64).ravel()
        y = np.asarray(b[i], dtype=np.float64).ravel()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out[i] = float(spearmanr(x, y).statistic)
    return out


def summarise_similarity(
    rho: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    patients: Sequence[object] | np.ndarray | None = None,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    min_clusters: int = MIN_CI_CLUSTERS,
    label: str = "spearman",
) -> dict[str, float]:
    """Mean of the finite correlations with a percentile bootstrap CI over patients.

    Every image is resampled with its patient (all of a patient's images together); a
    replicate that draws only constant maps (NaN correlations) is undefined and counted in
    ``spearman_dropped`` (see ``cxr_spurious.stats.bootstrap.percentile_ci`` for the limit).

    Args:
        rho: (n,) correlations, NaN for constant maps.
        n_boot: Replicates.
        seed: Seed.
        level: CI level.
        patients: Patient of each image (default: each image is its own cluster).
        max_dropped_share: Largest share of undefined replicates.
        min_clusters: Fewest patients with a finite correlation for a CI (else NaN bounds).
        label: Name in error messages.
    """
    rho = np.asarray(rho, dtype=float)
    clusters = np.arange(rho.size) if patients is None else np.asarray(patients)
    if clusters.shape[0] != rho.shape[0]:
        raise ValueError(f"{clusters.shape[0]} patient labels for {rho.shape[0]} correlations")
    finite = np.isfinite(rho)
    n_patients = int(np.unique(clusters).size)
    if not finite.any():
        return {
            "n_valid": 0,
            "n_patients": n_patients,
            "spearman": float("nan"),
            "spearman_lo": float("nan"),
            "spearman_hi": float("nan"),
            "spearman_dropped": float("nan"),
        }
    res = nanmean_cis(
        {"spearman": rho},
        clusters,
        n_boot=n_boot,
        seed=seed,
        level=level,
        max_dropped_share=max_dropped_share,
        min_clusters=min_clusters,
        label=label,
    )["spearman"]
    return {
        "n_valid": int(finite.sum()),
        "n_patients": n_patients,
        "spearman": res.estimate,
        "spearman_lo": res.lo,
        "spearman_hi": res.hi,
        "spearman_dropped": float(res.n_dropped),
    }


def model_randomisation_check(
    model: nn.Module,
    images: np.ndarray,
    methods: Sequence[str],
    tasks: Sequence[str],
    *,
    model_name: str,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    options: MethodOptions | None = None,
    random_model: nn.Module | None = None,
    patients: Sequence[object] | None = None,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> pd.DataFrame:
    """Trained-vs-randomised map similarity per method and task.

    Args:
        model: The trained model.
        images: (N, S, S) images to explain.
        methods: Registry names.
        tasks: Task names.
        model_name: Variant name for the table.
        seed: Seed of the re-initialisation and of the bootstrap.
        n_boot: Bootstrap replicates.
        batch_size: Images per batch.
        device: Device spec.
        options: Method options.
        random_model: Comparison model (default: ``randomized_copy(model, seed)``); passing
            ``model`` itself gives the identity check (correlation 1).
        patients: Patient of each image, the bootstrap's cluster (default: the image).
        max_dropped_share: Largest share of undefined bootstrap replicates.

    Returns:
        One row per (method, task) with the columns of ``SANITY_COLUMNS``; a method that
        refuses the trained model or its randomised copy (``MethodUnfitError``: DeepLift
        whose attributions miss the logit change) has no rows, with a warning.
    """
    other = random_model if random_model is not None else randomized_copy(model, seed)
    rows = []
    for method in methods:
        maps: dict[str, np.ndarray] = {}
        try:
            for which, net in (("trained", model), ("randomised", other)):
                maps[which] = compute_maps(
                    net,
                    images,
                    method,
                    tasks,
                    batch_size=batch_size,
                    device=device,
                    options=options,
                    progress=False,
                )[0]
        except MethodUnfitError as exc:
            # DeepLift whose attributions miss the logit change on the trained model or on
            # its randomised copy: no maps to compare, as for a method planning skipped
            logger.warning(
                "sanity %s: saliency method '%s' left out (refused on the %s model): %s",
                model_name,
                method,
                which,
                exc,
            )
            continue
        trained, random = maps["trained"], maps["randomised"]
        for j, task in enumerate(tasks):
            rho = spearman_per_map(trained[:, j], random[:, j])
            summary = summarise_similarity(
                rho,
                n_boot=n_boot,
                seed=seed,
                patients=patients,
                max_dropped_share=max_dropped_share,
                label=f"sanity {model_name}/{method}/{task}",
            )
            rows.append(
                {
                    "model": model_name,
                    "method": method,
                    "task": task,
                    "n_images": len(images),
                    **summary,
                }
            )
            logger.info(
                "sanity %s %s %s: spearman %.3f [%.3f, %.3f] (%d/%d maps)",
                model_name,
                method,
                task,
                summary["spearman"],
                summary["spearman_lo"],
                summary["spearman_hi"],
                summary["n_valid"],
                len(images),
            )
    return pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
