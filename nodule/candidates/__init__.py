"""Candidate detection: solid, subsolid, large-solid and learned detectors, merged per study.

After Setio et al. 2016. :func:`detect_candidates` runs all four on one study
(:mod:`nodule.candidates.detect`); :func:`run_batch` runs them over many studies and
writes the candidate CSV (a valid LUNA16 submission) and a per-study summary
(:mod:`nodule.candidates.batch`).
"""

from __future__ import annotations

from nodule.candidates.detect import (
    CANDIDATE_COLUMNS,
    DETECTORS,
    CandidateConfig,
    CandidateResult,
    detect_candidates,
)
from nodule.candidates.large_solid import LargeSolidConfig, detect_large_solid
from nodule.candidates.learned import LearnedConfig, detect_learned
from nodule.candidates.merge import merge_candidates
from nodule.candidates.solid import SolidConfig, detect_solid
from nodule.candidates.subsolid import SubsolidConfig, detect_subsolid

__all__ = [
    "CANDIDATE_COLUMNS",
    "DETECTORS",
    "CandidateConfig",
    "CandidateResult",
    "LargeSolidConfig",
    "LearnedConfig",
    "SolidConfig",
    "SubsolidConfig",
    "detect_candidates",
    "detect_large_solid",
    "detect_learned",
    "detect_solid",
    "detect_subsolid",
    "merge_candidates",
]
