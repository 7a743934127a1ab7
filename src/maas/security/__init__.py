"""Authentication and the rest of the trust layer."""
