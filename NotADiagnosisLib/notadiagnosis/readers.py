"""The readers' public names in one place: CTs (:mod:`.ct_reader`) and points (:mod:`.points`).

Kept so that ``from notadiagnosis.readers import read_ct, read_points`` goes on working; new code may
import from either module directly.
"""
from __future__ import annotations

from . import ct_reader, points
from .ct_reader import *  # noqa: F401,F403 - re-exported: the public names of each module, stated there once
from .points import *  # noqa: F401,F403

__all__ = [*ct_reader.__all__, *points.__all__]
