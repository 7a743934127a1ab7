"""Runtimes: one small base class, one subclass per task and format."""
