"""``chexcurate synth``: a seeded, long-tailed, chest-X-ray-like image-report set (docs/SYNTH.md).

``findings`` holds the catalogue, ``images`` draws, ``reports`` writes the text, ``dicom`` the DICOM files
and ``generate`` plans and writes a whole set. ``embeddings`` is a different thing: synthetic embeddings only.
"""

from .findings import CATALOGUE, Finding
from .generate import NOISE_KINDS, SynthConfig, SynthFormat, SynthSummary, generate, survives_ingest

__all__ = [
    "CATALOGUE",
    "NOISE_KINDS",
    "Finding",
    "SynthConfig",
    "SynthFormat",
    "SynthSummary",
    "generate",
    "survives_ingest",
]
