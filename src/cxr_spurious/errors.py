"""Project exceptions.

Every error a user can cause (a bad file, a bad parameter) raises one of these, with a
message that names the file, row or key and says what was expected. ``check_number`` and
``check_integer`` are the one check of a numeric parameter's type and range.
"""

from __future__ import annotations

import math
import numbers


class CxrSpuriousError(Exception):
    """Base class of all errors raised on purpose by this project."""


class DataFormatError(CxrSpuriousError):
    """An input file does not have the expected format or content."""

    def __init__(self, source: object, problem: str, *, where: str | None = None) -> None:
        self.source = str(source)
        self.problem = problem
        self.where = where
        location = f"{self.source}" + (f" ({where})" if where else "")
        super().__init__(f"{location}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str], dict[str, str | None]]:
        # Keyword-only ``where`` needs explicit pickling (errors cross process pools).
        return (
            self.__class__,
            (self.source, self.problem),
            {"where": self.where, "args": self.args},
        )

    def __setstate__(self, state: dict[str, object]) -> None:
        self.where = state["where"]  # type: ignore[assignment]
        self.args = state["args"]  # type: ignore[assignment]


class ParameterError(CxrSpuriousError):
    """A configuration parameter is missing, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"parameter '{key}': {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (self.__class__, (self.key, self.problem))


class ContractError(CxrSpuriousError):
    """A table or array handed between pipelines breaks the documented contract."""


class StaleOutputError(ContractError):
    """Outputs left by an earlier run no longer fit what this run reads them with (a model
    trained again since, other settings, other code): the user reruns what the message
    names, so it is reported as a mistake (one line), not as a bug."""


def unknown_name_error(
    kind: str, name: str, valid: object, key: str | None = None
) -> CxrSpuriousError:
    """Build the standard error for an unknown registry name.

    Args:
        kind: What was looked up ("architecture", "saliency method", ...).
        name: The name that was asked for.
        valid: The valid names (any iterable).
        key: The parameter key the name came from, when known.

    Returns:
        A ``ParameterError`` (with ``key``) or a ``CxrSpuriousError`` listing the valid names.
    """
    names = ", ".join(sorted(str(v) for v in valid))
    problem = f"unknown {kind} '{name}'; valid names are: {names}"
    if key is not None:
        return ParameterError(key, problem)
    return CxrSpuriousError(problem)


def check_number(
    value: object,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    unit: str = "",
    nullable: bool = False,
) -> float:
    """A numeric parameter checked against its range: the one check of a bounded number.

    Accepts an ``int``, a ``float`` or a numpy number; refuses booleans (``True`` is a ``1``
    to Python, never what a user meant), strings, NaN, infinities and values outside
    ``[low, high]`` (an open end with ``low_open`` / ``high_open``). The message states the
    kind and range expected, then the value given.

    Args:
        value: The parameter's value.
        key: Its dotted key (``training.lr``), named in the error.
        low: Lower bound, or ``None`` for none.
        high: Upper bound, or ``None`` for none.
        low_open: ``low`` itself is refused (``> low``).
        high_open: ``high`` itself is refused (``< high``).
        unit: Words put after "number" in the message ("of seconds").
        nullable: Say "or null" in the message (the caller accepts ``None`` itself).

    Returns:
        The value as a ``float``.

    Raises:
        ParameterError: naming ``key``, the range expected and the value given.
    """
    kind = f"a finite number{' ' + unit if unit else ''}"
    return _checked(value, key, kind, low, high, low_open, high_open, nullable, integer=False)


def check_integer(
    value: object,
    key: str,
    *,
    low: int | None = None,
    high: int | None = None,
    nullable: bool = False,
) -> int:
    """An integer parameter in ``[low, high]``: ``check_number`` for whole numbers.

    A float with an integral value is accepted (``--params`` parses ``1e3`` as ``1000.0``);
    a fraction, a boolean, a string or a non-finite number is refused.

    Raises:
        ParameterError: naming ``key``, the range expected and the value given.
    """
    number = _checked(value, key, "an integer", low, high, False, False, nullable, integer=True)
    return int(value) if isinstance(value, numbers.Integral) else int(number)


def _checked(
    value: object,
    key: str,
    kind: str,
    low: float | None,
    high: float | None,
    low_open: bool,
    high_open: bool,
    nullable: bool,
    *,
    integer: bool,
) -> float:
    lo, hi = _bound_text(low), _bound_text(high)
    if low is not None and high is not None:
        bounds = f" in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {lo}"
    elif high is not None:
        bounds = f" {'<' if high_open else '<='} {hi}"
    else:
        bounds = ""
    expected = f"must be {kind}{bounds}{' or null' if nullable else ''}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy bools are not Real
        raise ParameterError(key, expected)
    number = float(value)
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise ParameterError(key, expected)
    if low is not None and (number < low or (low_open and number == low)):
        raise ParameterError(key, expected)
    if high is not None and (number > high or (high_open and number == high)):
        raise ParameterError(key, expected)
    return number


def _bound_text(bound: float | None) -> str:
    """A bound as written in a message: whole numbers in full (4294967295, not 4.29e+09)."""
    if bound is None:
        return ""
    if float(bound).is_integer():
        return str(int(bound))
    return f"{bound:g}"
