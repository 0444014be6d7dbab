"""The unit tier: pure logic, no root, no PostgreSQL, no network, no installed copy.

Tests here import the work tree's `chainlens_ops` directly and must not start clusters,
run the CLI as `postgres` or open sockets beyond the process.
"""

from hypothesis import settings

# Any user runs this tier, from a work tree they may not own: hypothesis keeps its example
# database in memory rather than writing `.hypothesis/` into the tree.
settings.register_profile("unit", database=None)
settings.load_profile("unit")
