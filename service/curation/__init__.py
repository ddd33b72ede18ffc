"""The CheXficient curation engine: pure, vectorised functions over numpy arrays (no I/O, no globals).

A leaf: it imports nothing of the project (docs/DESIGN.md).

Notation follows the paper (docs/ENGINE.md): features f_i, prototypes p_k, assignment c_i, distance d_i.
"""

from .backend import Backend, CpuBackend, TorchBackend, default_backend
from .budget import compute_fraction
from .config import CentralSampler, CurationConfig, PrototypeMode
from .dedup import (
    DuplicatePairs,
    SweepPoint,
    dedup_against_memory,
    dedup_keep,
    duplicate_pairs,
    epsilon_sweep,
    patient_codes,
)
from .features import curation_features, stored_unit_rows, unit_rows
from .hierarchy import Hierarchy, balanced_sample, hierarchical_kmeans
from .kmeans import init_prototypes
from .offline import OfflineCuration, curate_offline, offline_assignment
from .selection import BAND_LABELS, Band, Selection, assign_rows, select_batch
from .target import CapPlan, TargetTally, plan_caps, select_toward, wanted_rows
from .update import sinkhorn, update_prototypes
from .validate import check_prototypes

__all__ = [
    "BAND_LABELS",
    "Backend",
    "Band",
    "CapPlan",
    "assign_rows",
    "DuplicatePairs",
    "Hierarchy",
    "SweepPoint",
    "TargetTally",
    "balanced_sample",
    "dedup_against_memory",
    "dedup_keep",
    "duplicate_pairs",
    "epsilon_sweep",
    "hierarchical_kmeans",
    "plan_caps",
    "select_toward",
    "wanted_rows",
    "CentralSampler",
    "PrototypeMode",
    "patient_codes",
    "CurationConfig",
    "CpuBackend",
    "OfflineCuration",
    "Selection",
    "TorchBackend",
    "check_prototypes",
    "compute_fraction",
    "curate_offline",
    "offline_assignment",
    "curation_features",
    "default_backend",
    "init_prototypes",
    "select_batch",
    "sinkhorn",
    "stored_unit_rows",
    "unit_rows",
    "update_prototypes",
]
