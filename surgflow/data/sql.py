"""The read-only boundary for user SQL (``data query`` and view filters): one SELECT as DuckDB
itself parses it, run on a connection that can reach no file it was not given."""

from __future__ import annotations

import duckdb

from surgflow.errors import BadInput


def check_read_only(sql: str) -> None:
    """BadInput unless ``sql`` is exactly one SELECT statement (as DuckDB parses it)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise BadInput(f"SQL does not parse: {one_line(e)}") from e
    if len(statements) != 1:
        raise BadInput(f"expected exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise BadInput(f"queries are read-only: only SELECT is allowed, got a statement of "
                       f"type {kind.name}")


def lock_down(con: duckdb.DuckDBPyConnection, allowed_paths: list[str] = ()) -> None:
    """No file access but ``allowed_paths``, and no way for later SQL to change that."""
    listed = ", ".join(quote(p) for p in allowed_paths)
    con.execute(f"SET allowed_paths = [{listed}]; SET enable_external_access = false;"
                " SET lock_configuration = true;")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
