"""chexcurate trainer client: talks to the service over HTTP only (docs/DESIGN.md)."""
