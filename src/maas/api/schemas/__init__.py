"""Request bodies of the HTTP API (responses reuse the core's views)."""
