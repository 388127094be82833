"""``kedro run --params`` with list values: the project's ``run`` reads ``[0,1]`` as one value.

Kedro 1.7 splits ``--params`` on every comma, so the README's ``sweep.grid.seeds=[0,1,2]``
stopped the run before it started. ``cli.split_params`` keeps commas inside brackets, braces
and quotes; elsewhere it reads ``--params`` exactly as Kedro's ``_split_params`` does.
"""

from __future__ import annotations

import click
import pytest
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import _split_params

from cxr_spurious.cli import run, split_params


def _kedro(value: str) -> object:
    option = next(p for p in kedro_run.params if p.name == "params")
    ctx = click.Context(kedro_run)
    return _split_params(ctx, option, value)


@pytest.mark.parametrize(
    "value",
    [
        "training.epochs=2",
        "saliency.methods=gradcam integrated_gradients,training.only=seg",
        "localization.smoothing_k=3, study.n_boot=10",
        "chexlocalize_dir=/abs/path,split=test",
        "training.lr=1e-3,training.resume=true",
    ],
)
def test_without_list_values_it_reads_as_kedro(value: str) -> None:
    assert split_params(None, None, value) == _kedro(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sweep.grid.seeds=[0,1,2,3,4]", {"sweep": {"grid": {"seeds": [0, 1, 2, 3, 4]}}}),
        (
            "sweep.grid.seeds=[0],sweep.training.epochs=1,sweep.saliency.max_images=8",
            {
                "sweep": {
                    "grid": {"seeds": [0]},
                    "training": {"epochs": 1},
                    "saliency": {"max_images": 8},
                }
            },
        ),
        ("training.only=[erm,seg]", {"training": {"only": ["erm", "seg"]}}),
        ("a.b={x: 1, y: [2,3]},c=4", {"a": {"b": {"x": 1, "y": [2, 3]}}, "c": 4}),
        ('note="a,b",c=1', {"note": "a,b", "c": 1}),
    ],
)
def test_commas_inside_a_list_or_quotes_stay_in_the_value(value: str, expected: dict) -> None:
    assert split_params(None, None, value) == expected
    if "[0]" not in value:  # a comma inside the brackets or quotes: Kedro's parser stops
        with pytest.raises(click.exceptions.UsageError):
            _kedro(value)


def test_an_item_without_a_value_is_refused() -> None:
    with pytest.raises(click.BadParameter, match=r"item `seeds\[0,1\]` must be a key and a value"):
        split_params(None, None, "seeds[0,1]")


def test_the_project_run_command_uses_it() -> None:
    (option,) = [p for p in run.params if p.name == "params"]
    assert option.callback is split_params
    kedro_option = next(p for p in kedro_run.params if p.name == "params")
    assert kedro_option.callback is _split_params  # Kedro's command is left as it was


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "report.title=Saab's study,study.n_boot=10",
            {"report": {"title": "Saab's study"}, "study": {"n_boot": 10}},
        ),
        ("a=O'Neil's,b=2", {"a": "O'Neil's", "b": 2}),
        ('a=say "hi" now,b=2', {"a": 'say "hi" now', "b": 2}),
    ],
)
def test_a_quote_inside_a_word_does_not_swallow_the_later_items(value: str, expected: dict) -> None:
    assert split_params(None, None, value) == expected
    assert _kedro(value) == expected  # no comma in a value: Kedro reads it the same


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a= 'x,y' ,b=1", {"a": "x,y", "b": 1}),  # at the start of a value, blanks before
        ("a=[p, 'q,r', s],b=1", {"a": ["p", "q,r", "s"], "b": 1}),  # of a list element
        ("a={k: 'x,y'},b=1", {"a": {"k": "x,y"}, "b": 1}),  # of a map value
        ("a=[O'Neil, x],b=2", {"a": ["O'Neil", "x"], "b": 2}),  # not inside a word
    ],
)
def test_a_quote_opens_at_the_start_of_a_value_or_element(value: str, expected: dict) -> None:
    assert split_params(None, None, value) == expected
