"""Serving core: data plane, model manager, batching, metrics (no HTTP here)."""
