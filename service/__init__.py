"""chexcurate service: the command line now; the FastAPI data plane builds on it (SPEC §3)."""
