"""The one statement every output of the project carries, in its short and its long form.

Stated here only, and importable without the inference runtime (``--help``, errors, Training's
figures and reports). The Slicer module shows the long form.
"""
from __future__ import annotations

_NOT_A_DIAGNOSIS = "Not a diagnosis: research use only"
_NOT_VALIDATED = "the model has not been validated on patients."

#: Short form: command-line output, CSV/JSON results, figures.
REMINDER = f"{_NOT_A_DIAGNOSIS}; {_NOT_VALIDATED}"
#: Long form: model cards, reports, the Slicer panel.
DISCLAIMER = (f"{_NOT_A_DIAGNOSIS}. The probability estimates how LIDC-IDRI radiologists would rate the nodule's "
              f"malignancy; {_NOT_VALIDATED}")
