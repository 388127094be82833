"""The Chest Tube mask against the pixels the tube changes (the ``no_tube`` counterfactual).

The mask is the tube's stroke dilated by ``max(1, round(size / 256))`` px (``devices.py``:
"the object's footprint plus a one-pixel margin"). Measured with
``render_image`` against the ``no_tube`` render over every tube image of 200-image phantoms
(64 px, seed 7: 96 images; 96 px, seed 1: 106 images; 256 px, seed 0: 27 of 60 images):

* the mask covers 3.5-5.7 % of the image at 64 and 96 px (2.2-3.0 % at 256 px);
* every pixel changed by at least half the image's largest change (the tube's core, 37 to
  265 pixels an image) lies inside the mask, at every size;
* every mask pixel lies within 2.2 px of a changed pixel at 64 and 96 px.

The checks below assert these with some room: the share under 8 % (an all-ones mask is
100 %, one twice too wide about 10 %), the strongest changes inside the mask with no margin
(a mask shifted by half the tube's width leaves part of the core outside), and every mask
pixel within 3 px of a change (a mask reaching elsewhere, or a whole-image one, does not).
They do not bound the weak blurred fringe outside the mask: at 256 px it spills up to 5 px
past it, a known limit of the current mask (audit finding 1, deferred).
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_SHARE = 0.08  # of the image; measured at most 0.057 at 64 and 96 px
STRONG = 0.5  # "strongest change": at least this fraction of the image's largest change
MAX_DISTANCE_TO_CHANGE = 3.0  # px from a mask pixel to the nearest change; measured <= 2.2


def assert_tube_mask_fits(mask: np.ndarray, image: np.ndarray, no_tube: np.ndarray) -> None:
    """The mask of a drawn tube is small, holds its strongest changes and none far off."""
    assert mask.any()
    share = float(mask.mean())
    assert share < MAX_SHARE, f"tube mask covers {share:.1%} of the image"
    diff = np.abs(image.astype(int) - no_tube.astype(int))
    strong = diff >= STRONG * diff.max()
    assert diff.max() > 20 and strong.any()  # the tube is visible
    outside = int((strong & (mask == 0)).sum())
    assert outside == 0, f"{outside} of {int(strong.sum())} strongest changes outside the mask"
    far = cv2.distanceTransform((diff == 0).astype(np.uint8), cv2.DIST_L2, 5)[mask > 0]
    assert far.max() <= MAX_DISTANCE_TO_CHANGE, f"a mask pixel {far.max():.1f} px from a change"
