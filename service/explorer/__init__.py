"""The curation explorer's domain: what the /ui pages show, as functions of a session (no web framework here).

Browser sessions, the runs overview and a run's live figures, the gallery's keyset pages, a sample's decisions
and neighbours, thumbnails, and the embedding map (docs/EXPLORER.md).
"""
