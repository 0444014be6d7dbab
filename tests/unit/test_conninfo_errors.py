"""A connection string libpq refuses: the line names the mistake, never a value."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from chainlens_ops.core.errors import EXIT_CONFIG
from chainlens_ops.pg.connection import bad_conninfo


@pytest.mark.parametrize(
    ("conninfo", "expected"),
    [
        ("host=db dbnme=app password=hunter2", "unknown keyword 'dbnme': did you mean dbname?"),
        ("host=db sslmod=require password=hunter2", "did you mean sslmode?"),
        ("host=db usr=app password=hunter2", "did you mean user?"),
        ("postgresql://app:hunter2@db/app?sslmod=require", "unknown keyword 'sslmod'"),
        ("host=db qqqzzz=1 password=hunter2", "unknown keyword 'qqqzzz' ("),
        ("host=db hunter2", "has a word without '='"),
        ("host=db password='hunter2", "has an unterminated quoted value"),
    ],
)
def test_the_mistake_is_named_and_no_value_repeated(conninfo: str, expected: str) -> None:
    with pytest.raises(Exception) as parsed:
        conninfo_to_dict(conninfo)
    error = bad_conninfo(parsed.value, "the connection string for the supabase database")
    line = error.one_line()
    assert line.startswith("the connection string for the supabase database ")
    assert expected in line
    assert "hunter2" not in line
    assert error.exit_code == EXIT_CONFIG
