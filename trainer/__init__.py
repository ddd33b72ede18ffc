"""chexcurate trainer client: talks to the service over HTTP only (SPEC §1)."""
