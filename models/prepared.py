"""Prepared reads: the poll path's prebuilt Core statements run on the DBAPI cursor of a kept connection.

Why: a poll request runs ONE prebuilt statement, and ``Connection.execute`` cost several times the driver's
own work for it (issue 27, a job's row: SQLite about 40 us of CPU against 10 us on the sqlite3 cursor;
PostgreSQL 155-185 us against 70-85 us with psycopg, a large part of it the ``cursor.description`` psycopg
builds anew on every execution for SQLAlchemy to read, the rest the execution context and the parameters'
construction). A ``PreparedRead`` pays those once per dialect instead of once per read.

What stays SQLAlchemy's: the SQL (the statement compiled by the dialect), the bind and result processors of
the statement's own types (so a row holds exactly the values ``conn.execute`` returns, the project's type
decorators included: ``tests/models/test_prepared.py`` compares them on both databases), and the errors
(``DBAPIError.instance``, the dialect's disconnect test; a disconnect invalidates the ``Connection``, so
``models.db.read_kept`` retries on a new one). What is skipped: the execution context, ``Result`` and its
rows (a read returns plain sequences), and the engine's statement logging (``echo``). An engine with
execution or error event listeners (tests counting statements) runs the statement through ``conn.execute``
as before, so the listeners see it. Meant for ``models.db.read_connection``'s connections (autocommit): no
transaction is begun for the read."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError

Processor = Callable[[Any], Any]
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
_REQUIRED = object()  # a bind parameter's default when the caller must give its value


class _Plan:
    """One statement compiled for one dialect: its SQL, how to build its parameters, how to read its rows."""

    __slots__ = ("sql", "positional", "binds", "processors")

    def __init__(self, stmt: AnySelect, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        if compiled.escaped_bind_names or compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError(f"not a statement to prepare (its SQL depends on its parameters): {stmt}")
        self.sql: str = compiled.string
        self.positional: bool = compiled.positional
        names = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
        # (the caller's key, the name in the SQL, the value when the caller gives none, the bind processor)
        self.binds: list[tuple[str, str, Any, Processor | None]] = []
        for name in names or ():
            bind = compiled.binds[name]
            if bind.expanding or bind.callable is not None:
                raise ValueError(f"not a statement to prepare (bind parameter {bind.key!r}): {stmt}")
            default = _REQUIRED if bind.required else bind.value
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.binds.append((bind.key, name, default, process))
        # (column index, result processor) of the columns that have one; None until the first read told the
        # columns' driver type codes (some processors depend on them: PostgreSQL's numeric types)
        self.processors: list[tuple[int, Processor]] | None = None

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters (``Compiled.construct_params``'s rules: the caller's value, else the bind's
        own), processed as the bind types say; a tuple in the SQL's order for a positional paramstyle."""
        values = []
        for key, _name, default, process in self.binds:
            value = params.get(key, default)
            if value is _REQUIRED:
                raise InvalidRequestError(f"A value is required for bind parameter {key!r}", code="cd3x")
            values.append(value if process is None else process(value))
        if self.positional:
            return tuple(values)
        return {name: value for (_key, name, *_), value in zip(self.binds, values, strict=True)}

    def learn(self, stmt: AnySelect, dialect: Dialect, description: Sequence[Sequence[Any]]) -> None:
        """The result processors, from the columns' types and the driver's type codes (as SQLAlchemy takes
        them from the first execution's ``cursor.description``)."""
        columns = list(stmt.selected_columns)
        if len(columns) != len(description):
            raise ValueError(f"{len(description)} columns read for the {len(columns)} selected: {stmt}")
        processors: list[tuple[int, Processor]] = []
        for index, (column, described) in enumerate(zip(columns, description, strict=True)):
            process = column.type.dialect_impl(dialect).result_processor(dialect, described[1])
            if process is not None:
                processors.append((index, process))
        self.processors = processors


class PreparedRead:
    """A module-level ``Select`` run as SQLAlchemy would run it, minus its per-execution machinery (see the
    module docstring). Compiled on first use per dialect; for statements whose SQL does not depend on the
    call (no expanding ``IN``, no values rendered into the SQL)."""

    def __init__(self, stmt: AnySelect) -> None:
        self.stmt = stmt
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._lock = threading.Lock()

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Every row of the statement with ``params``, each a sequence of the selected columns' values."""
        if _observed(conn):
            return conn.execute(self.stmt, dict(params)).all()
        dialect = conn.dialect
        plan = self._plan(dialect)
        args = plan.parameters(params)
        fairy = conn.connection  # (revalidates an invalidated connection, as ``conn.execute`` does)
        error_class = dialect.loaded_dbapi.Error
        dbapi_conn = fairy.dbapi_connection
        assert dbapi_conn is not None  # (None only once closed, which ``conn.connection`` refuses)
        cursor = None
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(plan.sql, args)
                found: Sequence[Sequence[Any]] = cursor.fetchall()
                if plan.processors is None:
                    plan.learn(self.stmt, dialect, cursor.description)
            finally:
                cursor.close()
        except error_class as error:
            disconnect = not conn.closed and dialect.is_disconnect(error, fairy, cursor)
            wrapped = DBAPIError.instance(
                plan.sql,
                args,
                error,
                error_class,
                hide_parameters=conn.engine.hide_parameters,
                connection_invalidated=disconnect,
                dialect=dialect,
            )
            if disconnect and not conn.invalidated:
                conn.invalidate(error)  # ``models.db._kept_connection`` replaces it
            raise wrapped from error
        except BaseException as exit_:
            # SQLAlchemy's rule for an exit exception (KeyboardInterrupt, a cancellation) mid-statement: the
            # protocol state is unknown, so the connection is not used again; any other error passes as is
            if not isinstance(exit_, Exception) and not (conn.closed or conn.invalidated):
                conn.invalidate(exit_)
            raise
        processors = plan.processors or ()  # (learnt above at the latest)
        if not processors:
            return found
        rows: list[Sequence[Any]] = []
        for row in found:
            values = list(row)
            for index, process in processors:
                values[index] = process(values[index])
            rows.append(values)
        return rows

    def _plan(self, dialect: Dialect) -> _Plan:
        """This statement compiled for ``dialect`` (one plan per dialect and driver: every engine of one
        driver is configured alike, ``models.db.make_engine``)."""
        key = (dialect.name, dialect.driver)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key)
                if plan is None:
                    plan = self._plans[key] = _Plan(self.stmt, dialect)
        return plan


def _observed(conn: Connection) -> bool:
    """Whether listeners expect to see the engine's statements (``before_cursor_execute`` and the like, or
    ``handle_error``): then a read runs through ``conn.execute``. (The engine's and the dialect's listeners,
    which include those set on ``Engine``; asking the connection's own joined dispatch costs 2 us a read.)"""
    events = conn.engine.dispatch
    return bool(
        events.before_execute
        or events.after_execute
        or events.before_cursor_execute
        or events.after_cursor_execute
        or conn.dialect.dispatch.handle_error
    )
