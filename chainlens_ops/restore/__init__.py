"""Restores: point in time from a base backup plus archived WAL, and logical."""
