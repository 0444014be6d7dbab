"""The unit tier: pure logic, no root, no PostgreSQL, no network, no installed copy.

Tests here import the work tree's `chainlens_ops` directly and must not start clusters,
run the CLI as `postgres` or open sockets beyond the process.
"""
