"""chexcurate: the curation service's domain (runs, storage, jobs, the engine) with its API and command line.

Layers and what may import what: docs/DESIGN.md.
"""
