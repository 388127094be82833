"""Pure HTML building blocks of the study report: tables, embedded PNG figures, the page.

Everything a page shows goes through ``html.escape`` (cell values, column names, titles,
captions, notes); figures are embedded as ``data:image/png;base64`` URIs and the style
sheet is inline, so the page is one file that renders without a network.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from cxr_spurious.errors import ContractError, check_integer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;color:#1d232b;background:#f6f7f9;line-height:1.45}
header{background:#1f3b57;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:24px}header p{margin:0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #d8dde3;padding:8px 32px;font-size:14px}
nav a{margin-right:14px;color:#1f5b8f;text-decoration:none}
main{max-width:1200px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;margin:18px 0;
padding:12px 20px 16px}
section h2{margin:4px 0 6px;font-size:19px}section h3{font-size:15px;margin:14px 0 4px}
p.read{margin:0 0 10px;color:#3d4a57;font-style:italic}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:13px;color:#55606b}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 8px}
th,td{border:1px solid #d8dde3;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f4}td.text,th.text{text-align:left}
p.note,li.note{color:#6b4e16}
p.written{margin:2px 0 4px;font-size:13px;color:#55606b}
footer{color:#6b7580;font-size:12px;text-align:center;padding:12px}
"""


@dataclass(frozen=True)
class Section:
    """One section of the page: an anchor id, a title, how to read it, and its HTML body."""

    key: str
    title: str
    how_to_read: str
    body: str


def png_data_uri(png: bytes, *, name: str) -> str:
    """``data:image/png;base64,...`` of a PNG file's bytes.

    Raises:
        ContractError: ``png`` is not PNG data, naming ``name`` (the figure's dataset).
    """
    if not isinstance(png, bytes | bytearray) or not bytes(png).startswith(PNG_SIGNATURE):
        raise ContractError(f"report figure '{name}' is not a PNG image (expected PNG bytes)")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def figure_html(png: bytes, *, name: str, caption: str = "") -> str:
    """An embedded figure: ``<figure><img src="data:..."><figcaption>``."""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img src="{png_data_uri(png, name=name)}" alt="{html.escape(name, quote=True)}">'
        f"{cap}</figure>"
    )


def _fmt(value: object, digits: int, fixed: bool = False) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral) and not fixed:
        return str(int(value))  # a count, 0 included ("0", not "0.00")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "" if math.isnan(value) else str(value)
        if not fixed and float(value).is_integer() and abs(value) >= 1:
            return str(int(value))
        return f"{value:.{digits}f}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


#: The most decimals a confidence bound gets so that a bound other than 0 does not print as 0.
BOUND_MAX_DIGITS = 6


def _bound(value: object, digits: int, fixed: bool) -> str:
    """A confidence bound as text: like ``_fmt``, but a bound other than 0 never reads as 0.

    A lower bound of 0.004 rounded to ``0.00`` reads as an interval that reaches 0, beside a
    p-value below 0.05; it gets the decimals that show it is not 0 (``0.004``; ``-0.004``
    rather than ``-0.00``), up to ``BOUND_MAX_DIGITS``; a smaller one prints as ``2.0e-07``.
    """
    text = _fmt(value, digits, fixed)
    if not isinstance(value, int | float) or isinstance(value, bool) or not text:
        return text
    v = float(value)
    if not math.isfinite(v) or v == 0.0:
        return text
    for d in range(digits, BOUND_MAX_DIGITS + 1):
        if round(v, d) != 0.0:
            return f"{v:.{d}f}" if d > digits else text
    return f"{v:.1e}"


def _ci(est: object, lo: object, hi: object, digits: int, fixed: bool = False) -> str:
    e = _fmt(est, digits, fixed)
    if not e:
        return ""
    lo_s, hi_s = _bound(lo, digits, fixed), _bound(hi, digits, fixed)
    return f"{e} [{lo_s}, {hi_s}]" if lo_s and hi_s else e


def with_cis(table: pd.DataFrame, digits: int = 2, *, fixed: bool = False) -> pd.DataFrame:
    """Each estimate with its interval in one text column: ``0.66 [0.60, 0.70]``.

    Columns ``x``, ``x_lo``, ``x_hi`` become one column ``x``, and so do ``estimate``,
    ``lo``, ``hi``; the bootstrap's bookkeeping columns ``*_dropped`` are left out. A
    permutation test's p-value (``p_no_gap``, its adjusted ``p_no_gap_adj``,
    ``*_p_no_gap``) prints as ``p_text`` does (``0.012``, ``< 0.001``; empty where
    undefined). Other columns are kept as they are.
    Whole numbers print without decimals (counts) unless ``fixed`` (every number with
    ``digits`` decimals: ``1.00 [1.00, 1.00]``).
    """
    out = table.copy()
    cols = list(out.columns)
    triples = [(c, f"{c}_lo", f"{c}_hi") for c in cols if f"{c}_lo" in cols and f"{c}_hi" in cols]
    if {"estimate", "lo", "hi"} <= set(cols):
        triples.append(("estimate", "lo", "hi"))
    for est, lo, hi in triples:
        out[est] = [_ci(e, a, b, digits, fixed) for e, a, b in zip(out[est], out[lo], out[hi])]
    for col in cols:
        if col in ("p_no_gap", "p_no_gap_adj") or str(col).endswith("_p_no_gap"):
            out[col] = [
                p_text(float(v), equals="") if pd.notna(v) and math.isfinite(float(v)) else ""
                for v in out[col]
            ]
    drop = {c for _, lo, hi in triples for c in (lo, hi)} | {
        c for c in cols if str(c).endswith("_dropped")
    }
    return out[[c for c in out.columns if c not in drop]]


#: The smallest p-value printed as a number; a smaller one prints as ``< 0.001``.
P_FLOOR = 0.001


#: Significance levels a reader compares a p-value with: its text never rounds up to one.
P_LEVELS = (0.01, 0.05, 0.1)


def p_text(p: float, equals: str = "= ") -> str:
    """A finite p-value as table text: ``= 0.123`` (``equals`` first), or ``< 0.001``.

    Three decimals, with more where three would round the value up onto a level of
    ``P_LEVELS`` (0.0496 is ``= 0.0496``, not ``= 0.050``, which reads as not below 0.05);
    ``< 0.05`` where even six decimals would.
    """
    if p < P_FLOOR:
        return f"< {P_FLOOR:g}"
    for digits in range(3, 7):
        shown = round(p, digits)
        crossed = [level for level in P_LEVELS if p < level <= shown]
        if not crossed:
            return f"{equals}{p:.{digits}f}"
    return f"< {crossed[0]:g}"


def check_row_limit(value: object, key: str = "max_rows") -> int:
    """A table's row limit as an ``int``: an integer >= 1 (an integral float is accepted).

    ``DataFrame.head`` reads a negative limit as "all but the last rows", so ``-1`` would
    show 3 of 4 rows under the note "First -1 of 4 rows"; it is refused instead.

    Raises:
        ParameterError: naming ``key`` (``report.max_table_rows`` for the report's parameter).
    """
    return check_integer(value, key, low=1)


def cut_note(shown: int, total: int, source: str | None = None) -> str:
    """The note under a table cut at ``shown`` of ``total`` rows: where the full table is
    (``source``: the file the table comes from), else that the rest is not shown."""
    if source:
        return f"First {shown} of {total} rows; the full table is {source}."
    return f"First {shown} of {total} rows; the rest is not shown; raise report.max_table_rows."


def table_html(
    table: pd.DataFrame, *, digits: int = 2, max_rows: int = 60, source: str | None = None
) -> str:
    """An escaped HTML table (numbers rounded to ``digits``), cut at ``max_rows`` with a note.

    Args:
        table: The table.
        digits: Decimals of the numbers shown.
        max_rows: Longest table shown in full; a longer one shows its first ``max_rows``.
        source: Where the full table is (a file, or the per-model files), named in the
            note under a cut table (``cut_note``); without it the note says that the rest
            is not shown.

    Raises:
        ParameterError: ``max_rows`` is not an integer >= 1 (``check_row_limit``).
    """
    max_rows = check_row_limit(max_rows)
    shown = table.head(max_rows)
    head = "".join(
        f'<th class="{"text" if not pd.api.types.is_numeric_dtype(shown[c]) else "num"}">'
        f"{html.escape(str(c))}</th>"
        for c in shown.columns
    )
    rows = []
    for rec in shown.itertuples(index=False):
        cells = "".join(
            f'<td class="{"num" if isinstance(v, int | float) else "text"}">'
            f"{html.escape(_fmt(v, digits))}</td>"
            for v in rec
        )
        rows.append(f"<tr>{cells}</tr>")
    note = ""
    if len(table) > max_rows:
        note = paragraph(cut_note(max_rows, len(table), source), "note")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


def paragraph(text: str, cls: str = "") -> str:
    """An escaped ``<p>``."""
    attr = f' class="{html.escape(cls, quote=True)}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"


def heading(text: str) -> str:
    """An escaped ``<h3>``."""
    return f"<h3>{html.escape(text)}</h3>"


def render_page(
    title: str, subtitle: str, sections: Sequence[Section], notes: Sequence[str] = ()
) -> str:
    """The whole self-contained page: header, contents, sections, then the omitted ones.

    Args:
        title: Page title.
        subtitle: One line under it.
        sections: The sections, in order (bodies are already HTML).
        notes: One line per section left out (e.g. an optional table that does not exist),
            listed under "Not in this report".

    Returns:
        The HTML document (UTF-8 text).

    Raises:
        ContractError: two sections share a key.
    """
    keys = [s.key for s in sections]
    if len(set(keys)) != len(keys):
        raise ContractError(f"report sections must have unique keys, got {keys}")
    nav = "".join(
        f'<a href="#{html.escape(s.key, quote=True)}">{html.escape(s.title)}</a>' for s in sections
    )
    body = "".join(
        f'<section id="{html.escape(s.key, quote=True)}"><h2>{html.escape(s.title)}</h2>'
        f'<p class="read">{html.escape(s.how_to_read)}</p>{s.body}</section>'
        for s in sections
    )
    if notes:
        items = "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes)
        body += f'<section id="omitted"><h2>Not in this report</h2><ul>{items}</ul></section>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        "<footer>One self-contained file: figures are embedded, nothing is fetched.</footer>"
        "</body></html>\n"
    )
