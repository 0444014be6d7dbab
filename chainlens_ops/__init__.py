"""chainlens-ops: operations toolkit for the ChainLens PostgreSQL databases."""

__version__ = "0.1.0"
