"""Pydantic request/response schemas, kept apart from the SQLAlchemy models."""
