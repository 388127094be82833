"""PhantomConfig: defaults, overrides, validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.phantom import PhantomConfig
from cxr_spurious.tasks import PHANTOM_TASKS


def test_defaults_match_the_default_study() -> None:
    cfg = PhantomConfig.from_dict({})
    assert cfg.n_images == 1900 and cfg.image_size == 256
    assert cfg.tube.p_given_ptx == {"train": 0.9, "val": 0.9, "test": 0.5}
    assert cfg.tube.p_given_no_ptx == {"train": 0.1, "val": 0.1, "test": 0.5}
    assert set(cfg.prevalence) == set(PHANTOM_TASKS)
    assert cfg.counterfactuals.splits == ("test",) and cfg.human_benchmark.splits == ("test",)


def test_tiny_is_small_and_overridable() -> None:
    cfg = PhantomConfig.tiny(image_size=32)
    assert (cfg.n_images, cfg.image_size) == (24, 32)


def test_partial_nested_override_merges_fixed_vocabularies() -> None:
    cfg = PhantomConfig.from_dict(
        {
            "tube": {"p_given_ptx": {"test": 0.7}, "side": "random"},
            "prevalence": {"Pneumothorax": 0.3},
        }
    )
    assert cfg.tube.p_given_ptx == {"train": 0.9, "val": 0.9, "test": 0.7}
    assert cfg.tube.side == "random"
    assert cfg.prevalence["Pneumothorax"] == 0.3 and cfg.prevalence["Lung Lesion"] == 0.2


def test_user_named_groups_replace_defaults() -> None:
    cfg = PhantomConfig.from_dict(
        {"sites": {"X": {"share": 0.25}, "Y": {"share": 0.75, "marker": "R"}}}
    )
    assert set(cfg.sites) == {"X", "Y"}
    assert cfg.sites["Y"].marker == "R" and cfg.sites["X"].noise == 1.0


def test_round_trip_through_to_dict() -> None:
    cfg = PhantomConfig.from_dict(
        {"n_images": 50, "demographics": {"lesion_contrast_multiplier": {"race": {"Black": 0.6}}}}
    )
    again = PhantomConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"n_imgs": 3}, "phantom.n_imgs"),
        ({"tube": {"p_given": 0.3}}, "phantom.tube.p_given"),
        ({"tube": {"p_given_ptx": {"training": 0.3}}}, "phantom.tube.p_given_ptx.training"),
        ({"tube": {"p_given_ptx": {"train": 1.3}}}, "phantom.tube.p_given_ptx.train"),
        ({"tube": {"side": "left"}}, "phantom.tube.side"),
        ({"prevalence": {"Edema": 0.2}}, "phantom.prevalence.Edema"),
        ({"n_images": "many"}, "phantom.n_images"),
        ({"n_images": 0}, "phantom.n_images"),
        ({"image_size": 12.5}, "phantom.image_size"),
        ({"split_fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}, "phantom.split_fractions"),
        ({"demographics": {"sex": {"M": 0.5, "X": 0.5}}}, "phantom.demographics.sex"),
        (
            {"demographics": {"prevalence_multiplier": {"site": {"Z": 2.0}}}},
            "phantom.demographics.prevalence_multiplier.site.Z",
        ),
        (
            {"demographics": {"prevalence_multiplier": {"height": {"tall": 2.0}}}},
            "phantom.demographics.prevalence_multiplier.height",
        ),
        (
            {"sites": {"A": {"share": 1.0, "marker_corner": "middle"}}},
            "phantom.sites.A.marker_corner",
        ),
        ({"sites": {"A": {"share": 1.0, "colour": 3}}}, "phantom.sites.A.colour"),
        # a site's share under its own key (was "phantom.sites (share).A"), the sum on sites
        ({"sites": {"A": {"share": 1.5}}}, "phantom.sites.A.share"),
        ({"sites": {"A": {"share": -0.2}, "B": {"share": 1.2}}}, "phantom.sites.A.share"),
        ({"sites": {"A": {"share": 0.5}, "B": {"share": 0.2}}}, "phantom.sites"),
        ({"sites": {}}, "phantom.sites"),
        ({"counterfactuals": {"variants": ["no_heart"]}}, "phantom.counterfactuals.variants"),
        ({"counterfactuals": {"renders": ["no_heart"]}}, "phantom.counterfactuals.renders"),
        ({"human_benchmark": {"splits": ["holdout"]}}, "phantom.human_benchmark.splits"),
        ({"appearance": {"noise": [0.2, 0.1]}}, "phantom.appearance.noise"),
        (
            {"findings": {"max_instances": {"Lung Lesion": 0}}},
            "phantom.findings.max_instances.Lung Lesion",
        ),
        ({"counterfactuals": True}, "phantom.counterfactuals"),
        # Values the generator cannot honour (audit s21): refused up front.
        ({"findings": {"min_thickness_at_96": 10.5}}, "phantom.findings.min_thickness_at_96"),
        ({"findings": {"min_thickness_at_96": 16.0}}, "phantom.findings.min_thickness_at_96"),
        # an integer key given NaN or inf: a ParameterError, not int()'s ValueError
        ({"n_images": float("nan")}, "phantom.n_images"),
        ({"n_images": float("inf")}, "phantom.n_images"),
        ({"demographics": {"age_min": float("nan")}}, "phantom.demographics.age_min"),
        ({"sites": {"A": {"share": 1.0, "marker": " "}}}, "phantom.sites.A.marker"),
        ({"sites": {"A": {"share": 1.0, "marker": "   "}}}, "phantom.sites.A.marker"),
        ({"artefacts": {"marker_port": {"text": " "}}}, "phantom.artefacts.marker_port.text"),
        (
            {"findings": {"max_instances": {"Pneumothorax": 2}}},
            "phantom.findings.max_instances.Pneumothorax",
        ),
        (
            {"findings": {"max_instances": {"Cardiomegaly": 3}}},
            "phantom.findings.max_instances.Cardiomegaly",
        ),
        ({"demographics": {"age_mean": -500.0}}, "phantom.demographics.age_mean"),
        ({"demographics": {"age_mean": 5000.0}}, "phantom.demographics.age_mean"),
        ({"demographics": {"age_mean": 17.5}}, "phantom.demographics.age_mean"),
        ({"demographics": {"age_min": 30, "age_mean": 25.0}}, "phantom.demographics.age_mean"),
    ],
)
def test_bad_settings_raise_parameter_error_naming_the_key(params: dict, key: str) -> None:
    with pytest.raises(ParameterError) as info:
        PhantomConfig.from_dict(params)
    assert info.value.key == key
    assert key in str(info.value)


def test_the_old_counterfactuals_variants_key_names_its_new_name() -> None:
    renamed = r"renamed to phantom\.counterfactuals\.renders"
    with pytest.raises(ParameterError, match=renamed) as info:
        PhantomConfig.from_dict({"counterfactuals": {"variants": ["no_tube"]}})
    assert info.value.key == "phantom.counterfactuals.variants"
    cfg = PhantomConfig.from_dict({"counterfactuals": {"renders": ["no_tube"]}})
    assert cfg.counterfactuals.renders == ("no_tube",)


def test_values_at_the_edges_of_the_new_checks_are_accepted() -> None:
    cfg = PhantomConfig.from_dict(
        {
            "findings": {
                "min_thickness_at_96": 10.0,  # the measured bound (findings docstring)
                "max_instances": {"Pneumothorax": 1, "Cardiomegaly": 1, "Pleural Effusion": 8},
            },
            "sites": {"A": {"share": 1.0, "marker": " L "}},
            "demographics": {"age_mean": 18.0, "age_min": 18, "age_max": 90},
        }
    )
    assert cfg.findings.min_thickness_at_96 == 10.0
    assert cfg.findings.max_instances["Pleural Effusion"] == 8
    assert PhantomConfig.from_dict({"demographics": {"age_mean": 90.0}}).demographics.age_mean == 90


def test_single_instance_refusals_say_why() -> None:
    with pytest.raises(ParameterError, match=r"must be 1 \(one pneumothorax on the record's ptx"):
        PhantomConfig.from_dict({"findings": {"max_instances": {"Pneumothorax": 2}}})
    with pytest.raises(ParameterError, match="must be 1 .*one enlarged heart.*got 3"):
        PhantomConfig.from_dict({"findings": {"max_instances": {"Cardiomegaly": 3}}})


def test_the_shipped_phantom_parameters_still_validate() -> None:
    conf = Path(__file__).resolve().parents[2] / "conf" / "base"
    ingestion = yaml.safe_load((conf / "parameters_ingestion.yml").read_text())
    sweep = yaml.safe_load((conf / "parameters_sweep.yml").read_text())
    for params in (ingestion["ingestion"]["phantom"], sweep["sweep"]["ingestion"]["phantom"]):
        PhantomConfig.from_dict(params, key="ingestion.phantom")
