"""``chexcurate synth``: a seeded, long-tailed, chest-X-ray-like image-report set (issue 6).

``findings`` holds the catalogue, ``images`` draws, ``reports`` writes the text, ``dicom`` the DICOM files
and ``generate`` plans and writes a whole set. ``workers.synthetic`` is a different thing: embeddings only.
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
