"""``sweep_models`` rows for the sweep node tests, from a rule for each row's metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def cell_rows(
    strengths: dict[str, tuple[float, float]],
    supervisions: tuple[tuple[str, float], ...],
    metrics: Callable[[float, str, int, str], dict[str, float]],
    artefacts: Sequence[str] = ("tube_random",),
    seeds: int = 3,
) -> list[dict[str, object]]:
    """One row per artefact, strength, (supervision, location fraction) and seed, in that
    order: ``metrics(confounding, supervision, seed, artefact)`` gives the row's metric
    values (confounding = P(artefact | PTX) - P(artefact | no PTX))."""
    return [
        {
            "artefact": artefact,
            "strength": strength,
            "p_given_ptx": p1,
            "p_given_no_ptx": p0,
            "supervision": sup,
            "location_fraction": frac,
            "seed": seed,
            **metrics(p1 - p0, sup, seed, artefact),
        }
        for artefact in artefacts
        for strength, (p1, p0) in strengths.items()
        for sup, frac in supervisions
        for seed in range(seeds)
    ]
