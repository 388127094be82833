"""Project exceptions.

Every error a user can cause (a bad file, a bad parameter) raises one of these, with a
message that names the file, row or key and says what was expected.
"""

from __future__ import annotations


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
