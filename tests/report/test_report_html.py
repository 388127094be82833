"""The study report's HTML: sections, embedded figures, escaping, optional sections."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from tests.report import synthetic

from cxr_spurious.errors import ContractError
from cxr_spurious.report.html import Section, png_data_uri, render_page, table_html, with_cis
from cxr_spurious.report.study import MISSING, OPTIONAL, READ, SECTIONS, build_study_report


class _Page(HTMLParser):
    """Section ids, their first paragraph (how to read), img sources, links and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self._in_read = False
        self.reads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(str(a.get("id")))
        if tag == "img":
            self.imgs.append(str(a.get("src")))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith(("#", "data:")):
                self.external.append(str(a[key]))
        self._in_read = tag == "p" and a.get("class") == "read"

    def handle_data(self, data: str) -> None:
        if self._in_read:
            self.reads.append(data)
            self._in_read = False


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def test_every_section_in_order_each_with_how_to_read_it():
    page = build_study_report(synthetic.inputs())
    parsed = _parse(page)
    assert parsed.sections == [key for key, _ in SECTIONS]
    read = {**READ, "findings": READ["findings"].format(level="95 %")}
    assert parsed.reads == [read[key] for key, _ in SECTIONS]
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "Not in this report" not in page


def test_figures_are_decodable_embedded_pngs_and_nothing_is_fetched():
    inputs = synthetic.inputs()
    parsed = _parse(build_study_report(inputs))
    # example grid, findings figure, one overlay per model, forest plot
    assert len(parsed.imgs) == 3 + len(inputs.overlays)
    for src in parsed.imgs:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    assert parsed.external == [] and parsed.scripts == 0


def test_overlays_follow_the_findings_model_order():
    page = build_study_report(synthetic.inputs())
    found = re.findall(r"<h3>(\w+)\.gradcam</h3>", page)
    assert found == list(synthetic.MODELS)


def test_one_heatmap_set_reports_without_subfolders():
    inputs = synthetic.inputs()
    inputs.localization_summary = inputs.localization_summary.head(1)  # erm.gradcam only
    iou = inputs.human_benchmark["erm.gradcam/iou_pct_decrease"]
    inputs.human_benchmark = {"iou_pct_decrease": iou}
    page = build_study_report(inputs)
    section = page.split('id="localization"')[1].split("</section>")[0]
    assert section.count('<td class="text">erm.gradcam</td><td class="text">mIoU</td>') == 2
    assert "No human benchmark" not in section


def test_missing_optional_sections_are_omitted_with_a_note():
    page = build_study_report(synthetic.inputs(optional=False))
    parsed = _parse(page)
    assert parsed.sections == [key for key, _ in SECTIONS if key not in OPTIONAL] + ["omitted"]
    for key in OPTIONAL:
        assert f'id="{key}"' not in page and f'href="#{key}"' not in page
        assert MISSING[key] in page
    # one sweep table alone still gives the section
    inputs = synthetic.inputs(optional=False)
    inputs.shortcut_detection = synthetic.shortcut_detection()
    assert 'id="sweep"' in build_study_report(inputs)


def test_text_is_escaped_everywhere():
    inputs = synthetic.inputs()
    evil = "<script>alert('x')</script> & \"q\""
    inputs.study_findings = inputs.study_findings.assign(model=[evil, "box", "seg"])
    inputs.overlays = {f"{evil}.gradcam": inputs.overlays["erm.gradcam"]}
    inputs.headline_table = inputs.headline_table.rename(columns={"task": evil})
    page = build_study_report(inputs, title=evil)
    assert "<script>" not in page and "alert('x')" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert _parse(page).scripts == 0


def test_a_figure_that_is_not_png_is_refused_naming_it():
    inputs = synthetic.inputs()
    inputs.regression_forest_plot = b"GIF89a..."
    with pytest.raises(ContractError, match="'regression_forest_plot' is not a PNG"):
        build_study_report(inputs)
    with pytest.raises(ContractError, match="'x' is not a PNG"):
        png_data_uri("not bytes", name="x")  # type: ignore[arg-type]


def test_a_table_without_a_needed_column_is_named():
    inputs = synthetic.inputs()
    inputs.dataset_report = inputs.dataset_report.drop(columns="split")
    expected = r"table 'dataset_report' lacks column\(s\) \['split'\]"
    with pytest.raises(ContractError, match=expected):
        build_study_report(inputs)


def test_with_cis_joins_estimates_and_intervals():
    table = pd.DataFrame(
        {
            "model": ["erm"],
            "auroc": [0.656],
            "auroc_lo": [0.6],
            "auroc_hi": [0.7],
            "auroc_dropped": [0.0],
            "estimate": [0.1],
            "lo": [float("nan")],
            "hi": [0.2],
            "n": [431],
        }
    )
    out = with_cis(table)
    assert list(out.columns) == ["model", "auroc", "estimate", "n"]
    assert out.loc[0, "auroc"] == "0.66 [0.60, 0.70]"
    assert out.loc[0, "estimate"] == "0.10"  # an interval with a missing end shows no interval


def test_a_bound_other_than_zero_never_prints_as_zero():
    # A difference of 0.03 [0.004, 0.06] beside p = 0.03 used to print as [0.00, 0.06]: an
    # interval that seems to reach 0 next to a p-value that says it does not.
    table = pd.DataFrame(
        {
            "d": [0.03, -0.03, 0.0, 0.02],
            "d_lo": [0.004, -0.06, 0.0, 0.0000002],
            "d_hi": [0.06, -0.0004, 0.05, 0.031],
        }
    )
    out = with_cis(table, fixed=True)["d"].tolist()
    assert out == [
        "0.03 [0.004, 0.06]",
        "-0.03 [-0.06, -0.0004]",
        "0.00 [0.00, 0.05]",  # a bound that is 0 stays 0.00
        "0.02 [2.0e-07, 0.03]",  # below half a millionth: scientific notation
    ]


def test_long_tables_are_cut_with_a_note():
    html = table_html(pd.DataFrame({"x": range(10)}), max_rows=3)
    assert html.count("<tr>") == 4 and "First 3 of 10 rows" in html


def test_page_refuses_repeated_section_keys():
    s = Section("a", "A", "read", "")
    with pytest.raises(ContractError, match="unique keys"):
        render_page("t", "s", [s, s])


def _localization_rows(page: str) -> list[list[str]]:
    """Header and cells of the first table of the localization section (unescaped text)."""
    import html

    section = page.split('id="localization"')[1].split("</table>")[0]
    return [
        [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", section)
    ]


def test_an_estimate_without_a_ci_says_why():
    import numpy as np

    from cxr_spurious.localization.summary import summary_table
    from cxr_spurious.stats.bootstrap import MIN_CI_CLUSTERS

    rng = np.random.default_rng(0)
    rows = []
    # Effusion: 3 patients, fewer than MIN_CI_CLUSTERS (5): estimates without a CI
    for task, n in (("Pneumothorax", 12), ("Effusion", 3)):
        for i in range(n):
            rows.append(
                {
                    "set": "erm.gradcam",
                    "model": "erm",
                    "method": "gradcam",
                    "task": task,
                    "image_id": f"patient{i}_study1_view1_frontal",
                    "in_gt": True,
                    "iou_tp": rng.uniform(0, 0.6),
                    "iou_full": rng.uniform(0, 0.6),
                    "hit": float(rng.integers(0, 2)),
                    "relevance_mass": rng.uniform(0, 1),
                }
            )
    summary = summary_table(pd.DataFrame(rows), n_boot=100, seed=0, by=("set", "model", "method"))
    assert MIN_CI_CLUSTERS > 3
    inputs = synthetic.inputs()
    inputs.localization_summary = summary
    head, *body = _localization_rows(build_study_report(inputs))
    assert "ci_note" in head and "skipped_map_files" not in head
    cells = {r[head.index("task")]: dict(zip(head, r)) for r in body}
    assert set(cells) == {"Effusion", "Pneumothorax", "overall"}
    effusion = cells["Effusion"]
    assert "[" not in effusion["miou_tp"]  # the estimate alone...
    assert effusion["miou_tp"] == f"{summary.set_index('task').loc['Effusion', 'miou_tp']:.2f}"
    assert effusion["ci_note"].startswith(f"no CI (finite in < {MIN_CI_CLUSTERS} patients)")
    assert "miou_tp" in effusion["ci_note"]  # ...and why
    for task in ("Pneumothorax", "overall"):
        assert "[" in cells[task]["miou_tp"] and cells[task]["ci_note"] == ""


def test_skipped_map_files_are_shown_when_there_are_any():
    inputs = synthetic.inputs()
    summary = inputs.localization_summary
    inputs.localization_summary = summary.assign(skipped_map_files=0)
    head, *_ = _localization_rows(build_study_report(inputs))
    assert "skipped_map_files" not in head and "ci_note" not in head
    inputs.localization_summary = summary.assign(skipped_map_files=[0, 2, 0])
    head, *body = _localization_rows(build_study_report(inputs))
    assert "skipped_map_files" in head
    shown = [(r[head.index("set")], r[head.index("skipped_map_files")]) for r in body]
    assert shown == [("erm.gradcam", "0"), ("box.gradcam", "2"), ("seg.gradcam", "0")]


@pytest.mark.parametrize(("level", "said"), [(0.9, "90 %"), (0.95, "95 %"), (0.975, "97.5 %")])
def test_the_findings_reading_states_the_tables_ci_level(level: float, said: str) -> None:
    inputs = synthetic.inputs()
    findings = inputs.study_findings.assign(ci_level=level)
    page = build_study_report(dataclasses.replace(inputs, study_findings=findings))
    findings_read = next(r for r in _parse(page).reads if r.startswith("One column per model"))
    assert f"the estimate with its {said} bootstrap CI" in findings_read
    other = "90 %" if said != "90 %" else "95 %"
    assert f"its {other} bootstrap CI" not in page


def test_findings_at_several_levels_are_refused() -> None:
    inputs = synthetic.inputs()
    findings = inputs.study_findings.assign(
        ci_level=[0.9] + [0.95] * (len(inputs.study_findings) - 1)
    )
    with pytest.raises(ContractError, match=r"several CI levels \[0\.9, 0\.95\]"):
        build_study_report(dataclasses.replace(inputs, study_findings=findings))


def _findings_rows(page: str) -> dict[str, list[str]]:
    """The findings table: measure -> the models' cells (unescaped text)."""
    import html

    section = page.split('id="findings"')[1].split("</table>")[0]
    rows = [
        [html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", section)
    ]
    return {row[0]: row[1:] for row in rows[1:]}


def test_findings_print_counts_whole_and_metrics_with_fixed_decimals() -> None:
    """Transposed, a model's column mixes counts and metrics: a count read "223.0" and an
    AUROC of exactly 1 read "1 [1, 1]" before."""
    inputs = synthetic.inputs()
    findings = inputs.study_findings.assign(
        reverse_auroc=1.0,
        reverse_auroc_lo=1.0,
        reverse_auroc_hi=1.0,
        gradcam_lesion_mass=0.4,
        gradcam_lesion_mass_lo=0.3,
        gradcam_lesion_mass_hi=0.5,
        gradcam_lesion_mass_n_maps=223.0,
        gradcam_lesion_mass_n_nonzero=201.0,
        test_n_boot=1000.0,
    )
    page = build_study_report(dataclasses.replace(inputs, study_findings=findings))
    rows = _findings_rows(page)
    assert rows["reverse_auroc"] == ["1.00 [1.00, 1.00]"] * len(findings)
    assert rows["gradcam_lesion_mass"] == ["0.40 [0.30, 0.50]"] * len(findings)
    assert rows["gradcam_lesion_mass_n_maps"] == ["223"] * len(findings)
    assert rows["gradcam_lesion_mass_n_nonzero"] == ["201"] * len(findings)
    assert rows["test_n_boot"] == ["1000"] * len(findings) and rows["n_test"] == ["431"] * 3


def test_findings_of_a_model_retrained_since_are_marked_stale(caplog) -> None:
    """A findings row records the training it describes (``model_digest``); a model trained
    again since (e.g. by torchrun or ``kedro run --pipeline training``) no longer matches."""
    inputs = synthetic.inputs()
    models = list(inputs.study_findings["model"])
    digests = {m: f"{i:016x}" for i, m in enumerate(models)}
    findings = inputs.study_findings.assign(model_digest=[digests[m] for m in models])
    same = dataclasses.replace(inputs, study_findings=findings, model_digests=digests)
    assert "Stale rows" not in build_study_report(same)
    retrained = {**digests, models[-1]: "f" * 16}
    with caplog.at_level("WARNING", logger="cxr_spurious.report.study"):
        page = build_study_report(dataclasses.replace(same, model_digests=retrained))
    assert f"the findings of {models[-1]} (row" in caplog.text  # on the console too
    note = page.split("Stale rows")[1].split("</p>")[0]
    assert f"{models[-1]} (row {digests[models[-1]]}, model now {'f' * 16})" in note
    assert all(m not in note for m in models[:-1])
    # rows written before the column, or models without a digest: nothing to compare
    old = dataclasses.replace(inputs, model_digests=retrained)
    assert "Stale rows" not in build_study_report(old)
    unknown = dataclasses.replace(same, model_digests={**digests, models[-1]: None})
    assert "Stale rows" not in build_study_report(unknown)


@pytest.mark.parametrize(
    ("table", "column", "current", "width", "section", "what", "rerun"),
    [
        (  # robustness_summary rows record the training they describe (model_digest)
            "robustness_summary",
            "model_digest",
            "model_digests",
            16,
            "Robustness summary",
            "the robustness summary rows (and the calibration and fairness tables",
            "kedro run --pipeline robustness",
        ),
        (  # localization_summary keeps each set's model artifact (model_fingerprint)
            "localization_summary",
            "model_fingerprint",
            "model_fingerprints",
            64,
            "Localization per heatmap set",
            "the localization rows",
            "kedro run --pipelines saliency,localization,regression,robustness,study,report",
        ),
    ],
)
def test_rows_of_a_model_retrained_since_are_marked_stale_in_their_section(
    caplog, table: str, column: str, current: str, width: int, section: str, what: str, rerun: str
) -> None:
    """A model trained again after the section's table was computed gets a note there (and
    a console warning) naming it with both values cut to 16 characters; the column itself
    is not shown."""
    inputs = synthetic.inputs()
    rows = getattr(inputs, table)
    models = list(dict.fromkeys(rows["model"]))
    values = {m: f"{i:0{width}x}" for i, m in enumerate(models)}
    rows = rows.assign(**{column: [values[m] for m in rows["model"]]})
    same = dataclasses.replace(inputs, **{table: rows, current: values})
    page = build_study_report(same)
    assert "Stale rows" not in page and column not in page
    retrained = {**values, models[0]: "e" * width}
    with caplog.at_level("WARNING", logger="cxr_spurious.report.study"):
        page = build_study_report(dataclasses.replace(same, **{current: retrained}))
    assert what in caplog.text
    note = page.split(section)[1].split("Stale rows")[1].split("</p>")[0]
    assert f"{models[0]} (row {values[models[0]][:16]}, model now {'e' * 16})" in note
    assert rerun in note
    assert all(m not in note for m in models[1:])


def test_overlays_of_a_model_retrained_since_are_marked_stale(caplog) -> None:
    """An overlay PNG records the model fingerprint of its maps (``io.png_text``); an
    overlay of an earlier training gets a note in the overlays section naming its model."""
    inputs = synthetic.inputs()
    models = list(inputs.study_findings["model"])
    prints = {m: f"{i:064x}" for i, m in enumerate(models)}

    def tagged(model: str) -> bytes:
        fig = Figure(figsize=(2, 2), dpi=40)
        fig.subplots().plot([0, 1])
        buffer = io.BytesIO()
        fig.savefig(
            buffer, format="png", metadata={"model": model, "model_fingerprint": prints[model]}
        )
        return buffer.getvalue()

    overlays = {f"{m}.gradcam": tagged(m) for m in models}
    overlays["outside.gradcam"] = synthetic.png("no fingerprint")  # nothing to compare
    same = dataclasses.replace(inputs, overlays=overlays, model_fingerprints=prints)
    assert "Stale rows" not in build_study_report(same)
    retrained = {**prints, models[1]: "e" * 64}
    with caplog.at_level("WARNING", logger="cxr_spurious.report.study"):
        page = build_study_report(dataclasses.replace(same, model_fingerprints=retrained))
    assert "the overlays of" in caplog.text
    section = page.rsplit("Saliency overlays per model", 1)[1]  # the section, not the menu
    note = section.split("Stale rows")[1].split("</p>")[0]
    assert f"{models[1]} (row {prints[models[1]][:16]}, model now {'e' * 16})" in note
    assert all(m not in note for m in models if m != models[1])


def test_the_report_node_reads_digests_and_fingerprints_from_test_metrics() -> None:
    from cxr_spurious.pipelines.report.nodes import _current, current_model_digests
    from cxr_spurious.training.provenance import model_digest

    record = {"training_config_digest": "s", "trained_on": {"data": "d"}, "model_fingerprint": "f"}
    current = current_model_digests(erm=record, box={"training_config_digest": "s"})
    assert current["model_digest"] == {
        "erm": model_digest(record),
        "box": model_digest({"training_config_digest": "s"}),
    }
    assert current["model_fingerprint"] == {"erm": "f", "box": None}
    assert _current(current, "model_fingerprint") == {"erm": "f", "box": None}
    assert _current(None, "model_digest") == {}


def test_a_count_of_zero_prints_as_a_count() -> None:
    # an integer 0 fell through to the float format: n_flagged 0 showed as "0.00"
    table = pd.DataFrame({"method": ["gradcam"], "n_models": [6], "n_flagged": [0], "r": [0.0]})
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table_html(table))
    assert cells == ["gradcam", "6", "0", "0.00"]


def test_permutation_p_values_print_as_p_values() -> None:
    """``p_no_gap`` (fairness gaps) and ``*_p_no_gap`` (the robustness summary) print as the
    report's p-values do, not as raw floats; an undefined one is empty."""
    table = pd.DataFrame(
        {
            "metric": ["fnr_gap", "fpr_gap", "equalized_odds_difference"],
            "estimate": [0.2, 0.1, 0.3],
            "lo": [0.1, 0.05, 0.2],
            "hi": [0.3, 0.2, 0.4],
            "p_no_gap": [0.0004, 0.04962, float("nan")],
            "fnr_gap_p_no_gap": [0.5, 0.012345, 1.0],
        }
    )
    out = with_cis(table)
    assert list(out["p_no_gap"]) == ["< 0.001", "0.0496", ""]
    assert list(out["fnr_gap_p_no_gap"]) == ["0.500", "0.012", "1.000"]
    assert list(out["estimate"]) == ["0.20 [0.10, 0.30]", "0.10 [0.05, 0.20]", "0.30 [0.20, 0.40]"]
