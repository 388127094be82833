"""The check of a seed parameter (``localization.seed``, ...): the one place it is done."""

from __future__ import annotations

from cxr_spurious.errors import check_integer

#: numpy's ``default_rng`` / ``RandomState`` take seeds in ``[0, 2**32 - 1]`` (the legacy
#: generator of the reference-layout files refuses anything larger).
MAX_SEED = 2**32 - 1


def check_seed(value: object, key: str = "seed") -> int:
    """A seed as an ``int`` in ``[0, 2**32 - 1]``.

    Accepts an integer, or a float with an integral value (``--params`` may parse ``1e3`` as
    ``1000.0``); refuses booleans, fractions, strings and anything else.

    Raises:
        ParameterError: naming ``key``, the value and the range expected (``check_integer``).
    """
    return check_integer(value, key, low=0, high=MAX_SEED)
