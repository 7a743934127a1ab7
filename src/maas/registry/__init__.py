"""Versioned model registry: models, immutable versions, aliases, and the blob store."""
