"""Foundations of every layer: errors, outcomes, crash points, records, streams, atomic files."""
