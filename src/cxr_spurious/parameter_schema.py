"""Parameter keys: a run's parameters may only hold keys that the project reads.

Kedro hands each node the parameters it names and ignores the rest, so a misspelt key
(``--params study.nboot=50``; the key is ``study.n_boot``) used to be accepted and to change
nothing. ``check_parameter_keys`` walks the merged parameters of a run (every environment
and ``--params`` applied) against a schema built by ``parameter_schema``: the key tree of the
shipped configuration (``conf/base`` and the environments the project ships, read by
``hooks.shipped_parameters``), adjusted where the code, not the files, decides the keys:

* ``OPEN_MAPS``: maps whose keys are data (a task's threshold, a strength label, an
  objective's settings): any key, any value;
* ``extra_keys``: keys the code reads that the shipped files leave out: every key of
  ``training.config.DEFAULTS`` in the shared ``training`` block and in each variant block
  (``training.variants.<v>``, ``comparison.training_variants.<v>``, ``sweep.training``),
  the study's variants (``variants.STUDY_MODELS``), the source adapters' options under
  ``ingestion`` (``ADAPTER_OPTIONS``) and the saliency method options;
* ``DELEGATED``: blocks another module checks in full (the phantom generator's settings,
  ``PhantomConfig.from_dict``);
* each ``objective_params`` against the keys its objective declares
  (``training.objectives.check_objective_params``), with the variant's objective;
* names that configuration files read with ``${runtime_params:NAME}`` (``chexlocalize_dir``),
  which ``--params`` also adds to the parameters.

The key trees of the shipped files come from a committed snapshot, ``parameter_keys.json``
beside this module (``snapshot_from_conf``; regenerate it with ``python -m
cxr_spurious.parameter_schema`` after adding a key the code reads), not from the files of the
run: a key misspelt *in* ``conf/base`` or a shipped environment's file would otherwise be
part of the schema, accepted and ignored. ``check_shipped_files`` refuses such a key naming
the file; a test keeps the snapshot equal to what the shipped files give.

An unknown key raises ``ParameterError`` naming its full dotted path and the closest valid
key (``difflib.get_close_matches`` among its siblings, else the same key one block down:
``sweep.seeds`` -> ``sweep.grid.seeds``, else the only key of that name anywhere); every
unknown key of the run is listed in the one message. ``hooks.ParameterKeysHook`` runs the
check when a run's context is created, before any node.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom.config import PhantomConfig
from cxr_spurious.saliency.registry import OPTION_PARAMETERS
from cxr_spurious.training.config import DEFAULTS
from cxr_spurious.training.objectives import check_objective_params
from cxr_spurious.variants import STUDY_MODELS

#: Options of the source adapters read from the ``ingestion`` block besides the shipped
#: keys (``src/cxr_spurious/sources/adapters/README.md``, "Parameters").
ADAPTER_OPTIONS: tuple[str, ...] = (
    "sex_conflict",
    "uncertainty_policy",
    "frontal_only",
    "tube_labels",
    "nih_data_entry",
    "mimic_labels",
    "mimic_iv_dir",
    "admission_rule",
)
#: Maps whose keys are data, not settings (``*`` stands for one key).
OPEN_MAPS: tuple[str, ...] = (
    "localization.fixed_thresholds",  # {task: threshold}
    "localization.prob_cutoffs",  # {task: cutoff}
    "localization.prob_cutoffs_grid_by_task",  # {task: [start, stop, step]}
    "sweep.grid.strengths",  # {label: [P(artefact | PTX), P(artefact | no PTX)]}
    "sweep.grid.extra_fractions",  # {supervision: [fractions]} (checked by sweep.grid)
    # an objective's settings: checked against its objective by ``check_parameter_keys``
    "training.objective_params",
    "training.variants.*.objective_params",
    "comparison.training_variants.*.objective_params",
    "sweep.training.objective_params",
)
# A block's own check: ``check(value, dotted key)`` raises ``ParameterError``.
Check = Callable[[Any, str], None]


def _phantom(value: Any, key: str) -> None:
    PhantomConfig.from_dict(value, key=key)


#: Blocks checked in full by their own module: ``check(value, dotted key)``.
DELEGATED: tuple[tuple[str, Check], ...] = (
    ("ingestion.phantom", _phantom),
    ("sweep.ingestion.phantom", _phantom),
)
# Blocks of training settings of one variant (``resolve_training_config``'s ``variant``).
_VARIANT_BLOCKS: tuple[str, ...] = (
    "training.variants.*",
    "comparison.training_variants.*",
    "sweep.training",
)


#: The committed key trees of the shipped parameter files (``snapshot_from_conf``).
SNAPSHOT_PATH = Path(__file__).with_name("parameter_keys.json")
#: How to regenerate ``SNAPSHOT_PATH`` (named in the error for a key it does not know).
SNAPSHOT_COMMAND = "kedro parameter-keys"


class _OpenMap:
    """Schema node of a map whose keys are data (``OPEN_MAPS``)."""

    def __repr__(self) -> str:
        return "<open map>"


OPEN = _OpenMap()


def extra_keys() -> tuple[tuple[str, frozenset[str]], ...]:
    """``(block pattern, keys)``: keys the code reads that the shipped files may leave out."""
    variant = frozenset(DEFAULTS) | {"name"}
    shared = (frozenset(DEFAULTS) - {"supervision"}) | {"variants", "only"}
    return (
        ("training", shared),
        *((block, variant) for block in _VARIANT_BLOCKS),
        ("ingestion", frozenset(ADAPTER_OPTIONS)),
        ("sweep.ingestion", frozenset(ADAPTER_OPTIONS)),
        ("saliency.method_options", frozenset(OPTION_PARAMETERS)),
        ("sweep.saliency.method_options", frozenset(OPTION_PARAMETERS)),
    )


def key_tree(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """The union of the key trees of ``configs``: a mapping becomes a dict of its keys'
    trees, any other value ``None`` (a leaf)."""
    tree: dict[str, Any] = {}
    for config in configs:
        _merge_keys(tree, config)
    return tree


def _merge_keys(tree: dict[str, Any], config: Mapping[str, Any]) -> None:
    for key, value in config.items():
        if isinstance(value, Mapping):
            node = tree.get(str(key))
            if not isinstance(node, dict):
                node = tree[str(key)] = {}
            _merge_keys(node, value)
        else:
            tree.setdefault(str(key), None)


def _blocks(tree: dict[str, Any], pattern: str) -> Iterator[dict[str, Any]]:
    """The dict nodes at ``pattern`` (dotted; ``*`` matches any one key)."""
    nodes = [tree]
    for part in pattern.split("."):
        nodes = [
            child
            for node in nodes
            for key, child in node.items()
            if isinstance(child, dict) and (part == "*" or key == part)
        ]
    yield from nodes


def _place(tree: dict[str, Any], pattern: str, value: Any) -> None:
    """Set the last key of ``pattern`` to ``value`` in every block its parent matches."""
    parent, _, last = pattern.rpartition(".")
    for block in _blocks(tree, parent) if parent else [tree]:
        block[last] = value


def parameter_schema(
    shipped: Sequence[Mapping[str, Any]], runtime_names: Iterable[str] = ()
) -> dict[str, Any]:
    """The schema ``check_parameter_keys`` walks.

    Args:
        shipped: The parameters of ``conf/base`` and of each shipped environment (each on
            its own; their keys are united).
        runtime_names: Names read by ``${runtime_params:NAME}`` in configuration files.

    Returns:
        A nested dict: a dict node is a block with a fixed key set, ``None`` a leaf (any
        value), ``OPEN`` a map with free keys, a callable a block checked by its own module.
    """
    tree = key_tree(*shipped)
    for name in runtime_names:
        node = tree
        *parents, last = str(name).split(".")
        for part in parents:
            child = node.get(part)
            node = child if isinstance(child, dict) else node.setdefault(part, {})
        node.setdefault(last, None)
    variants = tree.setdefault("training", {}).setdefault("variants", {})
    for name in STUDY_MODELS:
        variants.setdefault(name, {})
    for pattern, keys in extra_keys():
        for block in _blocks(tree, pattern):
            for key in keys:
                block.setdefault(key, None)
    for pattern in OPEN_MAPS:
        _place(tree, pattern, OPEN)
    for pattern, check in DELEGATED:
        _place(tree, pattern, check)
    return tree


def check_parameter_keys(
    params: Mapping[str, Any],
    schema: Mapping[str, Any],
    hints: Mapping[str, str] | None = None,
) -> None:
    """Refuse every parameter key the project does not read.

    Args:
        params: A run's merged parameters (``context.config_loader["parameters"]``).
        schema: ``parameter_schema(...)``.
        hints: ``{dotted key: why it is not read here}`` for keys valid elsewhere (a name
            only another environment reads), used in place of the closest-key guess.

    Raises:
        ParameterError: naming the first unknown key's dotted path and its closest valid
            key; the message lists every other unknown key of the run too. Also the errors
            of ``DELEGATED`` checks and of ``check_objective_params``.
    """
    problems: dict[str, tuple[str, str]] = {}
    _walk(params, schema, (), problems, schema, hints=hints or {})
    for key, options, name, note in _objective_settings(params):
        try:
            check_objective_params(name, options, key)
        except ParameterError as exc:
            problems.setdefault(exc.key, (exc.problem + note, ""))
    if not problems:
        return
    (first, (problem, _)), *others = problems.items()
    if others:
        listed = ", ".join(f"'{key}'" + (f" ({hint})" if hint else "") for key, (_, hint) in others)
        problem += f"{'' if problem.endswith(('?', '.', ')')) else '.'} Also to fix: {listed}"
    raise ParameterError(first, problem)


def _walk(
    value: Any,
    node: Any,
    path: tuple[str, ...],
    problems: dict[str, tuple[str, str]],
    root: Mapping[str, Any],
    *,
    hints: Mapping[str, str],
    delegate: bool = True,
) -> None:
    dotted = ".".join(path)
    if node is None or node is OPEN:
        return
    if callable(node):
        if not delegate:
            return
        try:
            node(value, dotted)
        except ParameterError as exc:
            problems.setdefault(exc.key, (exc.problem, ""))
        return
    if not isinstance(value, Mapping):
        return  # a leaf where the shipped file has a block: a value error, not a key one
    for key, sub in value.items():
        here = (*path, str(key))
        if str(key) in node:
            _walk(sub, node[str(key)], here, problems, root, hints=hints, delegate=delegate)
        else:
            problems[".".join(here)] = _unknown(here, node, root, hints)


def _unknown(
    path: tuple[str, ...],
    block: Mapping[str, Any],
    root: Mapping[str, Any],
    hints: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """``(problem, short hint)`` for the unknown key at ``path`` in ``block``."""
    told = (hints or {}).get(".".join(path))
    if told is not None:
        return f"not read in this environment: {told}", told
    hint = _known_mistake(path)
    if hint is not None:
        return hint, hint
    parent = path[:-1]
    guess = _closest(path, block, root)
    if guess is not None:
        short = f"did you mean '{guess}'?"
        return f"unknown key, which nothing reads; {short}", short
    where = f"of '{'.'.join(parent)}'" if parent else "at the top level"
    valid = ", ".join(sorted(str(k) for k in block))
    return f"unknown key, which nothing reads; valid keys {where}: {valid}", ""


def _closest(
    path: tuple[str, ...], block: Mapping[str, Any], root: Mapping[str, Any]
) -> str | None:
    """The dotted valid key closest to the unknown ``path``: a sibling; else the same (or a
    close) name one block down; else the one key of that name anywhere in ``root``."""
    parent, key = path[:-1], path[-1]
    close = difflib.get_close_matches(key, [str(k) for k in block], n=1)
    if close:
        return ".".join((*parent, close[0]))
    below = [
        (str(name), str(sub))
        for name, child in block.items()
        if isinstance(child, dict)
        for sub in child
    ]
    close = [key] if key in {sub for _, sub in below} else []
    close = close or difflib.get_close_matches(key, [sub for _, sub in below], n=1)
    if close:
        name = next(name for name, sub in below if sub == close[0])
        return ".".join((*parent, name, close[0]))
    elsewhere = [found for found in _key_paths(root) if found[-1] == key]
    return ".".join(elsewhere[0]) if len(elsewhere) == 1 else None


def _key_paths(node: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key's path in the fixed blocks of ``node``."""
    for key, child in node.items():
        yield (*path, str(key))
        if isinstance(child, dict):
            yield from _key_paths(child, (*path, str(key)))


def _known_mistake(path: tuple[str, ...]) -> str | None:
    """The message for a key that is wrong for a known reason (old name, wrong block)."""
    parent, key = path[:-1], path[-1]
    if parent[-1:] == ("method_options",) and key == "seed":
        owner = ".".join((*parent[:-1], "seed"))
        return (
            f"not a method option: the seed of SmoothGrad's noise is '{owner}' (it also draws "
            "the image subset, the overlay sample and the sanity check)"
        )
    if parent == ("training",) and key == "method":
        return "renamed to 'training.only' (a variant name, a supervision name or a list)"
    if parent == ("training",) and key == "supervision":
        return "set per variant: training.variants.<name>.supervision"
    variant_block = any(_matches(pattern, parent) for pattern in _VARIANT_BLOCKS)
    if variant_block and key == "method":
        return "renamed to 'supervision'"
    return None


def _matches(pattern: str, path: tuple[str, ...]) -> bool:
    """Whether dotted ``pattern`` (``*``: any one key) names ``path``."""
    parts = pattern.split(".")
    return len(parts) == len(path) and all(p in ("*", k) for p, k in zip(parts, path))


def _objective_settings(params: Mapping[str, Any]) -> Iterator[tuple[str, Any, str, str]]:
    """``(dotted key, objective_params, objective name, note)`` of the shared ``training``
    block and of every variant block, with what each variant inherits from the shared block
    (``note`` then names the variant)."""
    training = params.get("training")
    training = training if isinstance(training, Mapping) else {}
    shared_name = training.get("objective", DEFAULTS["objective"])
    shared_key = "training.objective_params"
    yield shared_key, training.get("objective_params"), str(shared_name), ""
    blocks: list[tuple[str, Any]] = []
    for where, owner in (
        ("training.variants", training.get("variants")),
        ("comparison.training_variants", _get(params, "comparison", "training_variants")),
    ):
        if isinstance(owner, Mapping):
            blocks += [(f"{where}.{name}", block) for name, block in owner.items()]
    blocks.append(("sweep.training", _get(params, "sweep", "training")))
    for where, block in blocks:
        if not isinstance(block, Mapping):
            continue
        name = str(block.get("objective", shared_name))
        if "objective_params" in block:
            yield f"{where}.objective_params", block["objective_params"], name, ""
        elif "objective" in block:
            note = f" (the objective of {where}, which inherits {shared_key})"
            yield shared_key, training.get("objective_params"), name, note


def _get(params: Mapping[str, Any], *keys: str) -> Any:
    node: Any = params
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _prune(tree: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``tree`` with the maps whose keys are data (``OPEN_MAPS``) and the ``DELEGATED``
    blocks cut to leaves: editing a task's threshold changes no key of the snapshot."""
    cut = [*OPEN_MAPS, *(pattern for pattern, _ in DELEGATED)]
    out: dict[str, Any] = {}
    for key, child in tree.items():
        here = (*path, key)
        if isinstance(child, dict) and not any(_matches(p, here) for p in cut):
            out[key] = _prune(child, here)
        else:
            out[key] = None
    return out


def snapshot_from_conf(conf: Path) -> dict[str, dict[str, Any]]:
    """``{environment: key tree}`` of the parameter files of ``conf/base`` and each of
    ``hooks.SHIPPED_ENVS`` present (``hooks.env_parameter_files``), data maps pruned."""
    from cxr_spurious.hooks import SHIPPED_ENVS, env_parameter_files

    return {
        env: _prune(key_tree(*(config for _, config in env_parameter_files(conf, env))))
        for env in ("base", *SHIPPED_ENVS)
        if (conf / env).is_dir()
    }


def snapshot_text(snapshot: Mapping[str, Any]) -> str:
    """The snapshot as written to ``SNAPSHOT_PATH`` (sorted keys, one key a line)."""
    return json.dumps(snapshot, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def load_snapshot(path: Path = SNAPSHOT_PATH) -> dict[str, dict[str, Any]]:
    """The committed ``{environment: key tree}`` (``snapshot_from_conf``)."""
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return {str(env): dict(tree) for env, tree in loaded.items()}


def write_snapshot(conf: Path, path: Path = SNAPSHOT_PATH) -> Path:
    """Write ``snapshot_from_conf(conf)`` to ``path`` (``SNAPSHOT_COMMAND``), whole or not
    at all (a half-written snapshot would refuse every run)."""
    from cxr_spurious.io.atomic import write_text_atomic

    write_text_atomic(path, snapshot_text(snapshot_from_conf(conf)))
    return path


def check_shipped_files(
    files: Sequence[tuple[str, Mapping[str, Any]]], schema: Mapping[str, Any]
) -> None:
    """Refuse a key of a shipped parameter file (``conf/base``, a shipped environment) that
    the schema built from the committed snapshot does not know.

    Only the keys are checked (the files are read unresolved); the values, and the blocks
    checked by their own module (``DELEGATED``), are checked on the merged parameters.

    Args:
        files: ``(name shown, parameters)`` of each file.
        schema: ``parameter_schema`` of the snapshot.

    Raises:
        ParameterError: naming the key, the closest valid key and the file.
    """
    for name, config in files:
        problems: dict[str, tuple[str, str]] = {}
        _walk(config, schema, (), problems, schema, hints={}, delegate=False)
        if problems:
            (key, (problem, _)), *others = problems.items()
            also = f" (also: {', '.join(k for k, _ in others)})" if others else ""
            raise ParameterError(
                key,
                f"{problem}{also} (written in the shipped file {name}; if the code reads "
                f"a new key there, add it to {SNAPSHOT_PATH.name}: {SNAPSHOT_COMMAND})",
            )
