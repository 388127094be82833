"""Generator settings of a sweep phantom for the tests: originals without any artefact
(tube probabilities 0, the default sites with their markers off), every image also
rendered ``with_<kind>`` for each artefact kind."""

from __future__ import annotations

import dataclasses

from cxr_spurious.phantom import ARTEFACT_KINDS, PhantomConfig

NO_TUBE = {"train": 0.0, "val": 0.0, "test": 0.0}
SITES_WITHOUT_MARKERS = {
    name: {**dataclasses.asdict(site), "marker_prob": 0.0}
    for name, site in PhantomConfig().sites.items()
}
BASE = {"tube": {"p_given_ptx": NO_TUBE, "p_given_no_ptx": NO_TUBE}, "sites": SITES_WITHOUT_MARKERS}
SWEEP = {**BASE, "artefacts": {"kinds": list(ARTEFACT_KINDS)}}
