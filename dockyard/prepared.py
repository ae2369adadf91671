"""Hot statements compiled once per dialect and run on the driver's cursor.

SQLAlchemy's per-execution machinery (cache key, execution context, result object) costs
several times an indexed lookup or a one-row insert. The statements every push and pull runs
are module constants with ``bindparam``s: ``first``, ``rows``, ``scalar`` and ``execute``
compile each once per dialect and run it on the connection's own driver cursor, inside the
caller's transaction, with the same bind and result conversions SQLAlchemy applies
(SQLite datetimes, booleans, JSON). Driver errors are raised as SQLAlchemy raises them
(``sa.exc.DBAPIError`` and its subclasses, with disconnect handling), and cursor event
listeners still see every statement (the tests count statements with them).

Only statements built once may be passed: plans are cached by the statement object, and a
statement whose compiled form needs execution-time work (Python-side column defaults) is refused
when it is first planned. ``IN`` lists (``bindparam(..., expanding=True)``) are rendered per call.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.crud import REQUIRED

#: Plans beyond this many are compiled per call instead of kept (a guard against a caller
#: passing statements built at run time, which would otherwise grow the cache without end).
PLAN_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # the statement's parameters, in order for positional drivers (SQLite)
    positional: bool
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]
    defaults: Mapping[str, Any]  # values bound in the statement itself
    row: Any  # a namedtuple class, or None for statements that return no rows
    results: tuple[Callable[[Any], Any] | None, ...] | None
    expanding: Any = None  # the compiled statement, when an IN list is rendered per call


_plans: dict[tuple[sa.Executable, str, str, tuple[str, ...]], _Plan] = {}


def _plan(dialect: Dialect, statement: sa.Executable, keys: tuple[str, ...]) -> _Plan:
    cache_key = (statement, dialect.name, dialect.driver, keys)
    plan = _plans.get(cache_key)
    if plan is not None:
        return plan
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if compiled.insert_prefetch or compiled.update_prefetch:
        raise ValueError(f"a prepared statement must be given every column it writes: {compiled.string}")
    bound = compiled.construct_params(_check=False)
    defaults = {
        name: value
        for name, value in bound.items()
        if name not in keys and not _is_required(value, compiled.binds.get(name))
    }
    columns = compiled._result_columns
    row = None
    results = None
    if columns:
        row = namedtuple("Row", [c.keyname for c in columns], rename=True)  # type: ignore[misc]
        processors = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
        results = processors if any(processors) else None
    plan = _Plan(
        compiled.string,
        tuple(compiled.positiontup) if dialect.positional else tuple(bound),
        bool(dialect.positional),
        tuple(compiled._bind_processors.items()),
        defaults,
        row,
        results,
        compiled if "POSTCOMPILE" in compiled.string else None,
    )
    if len(_plans) < PLAN_LIMIT:
        _plans[cache_key] = plan
    return plan


def _is_required(value: Any, bind: Any) -> bool:
    """A parameter the caller must give: a column to write, or a ``bindparam`` without a value."""
    return value is REQUIRED or bool(getattr(bind, "required", False))


def _expanded(plan: _Plan, params: Mapping[str, Any]) -> tuple[str, Any]:
    """The statement and arguments of a plan whose IN lists are rendered for these values."""
    state = plan.expanding.construct_expanded_state(params)
    values = dict(state.parameters)
    for name, process in (*plan.binds, *state.processors.items()):
        if name in values:
            values[name] = process(values[name])
    if plan.positional:
        return state.statement, tuple(values[name] for name in state.positiontup)
    return state.statement, values


def _arguments(plan: _Plan, params: Mapping[str, Any]) -> Any:
    values = {**plan.defaults, **params} if plan.defaults else dict(params)
    for name, process in plan.binds:
        values[name] = process(values[name])
    if plan.positional:
        return tuple(values[name] for name in plan.names)
    return {name: values[name] for name in plan.names}


def pipelined(conn: Connection) -> bool:
    """Whether the connection's driver is in pipeline mode (psycopg: statements are sent without
    waiting for each answer; see ``Database.run_write(pipelined=True)``)."""
    pgconn = getattr(conn.connection.dbapi_connection, "pgconn", None)
    return bool(pgconn is not None and pgconn.pipeline_status)


def wait_for_answers(driver: Any) -> None:
    """Read every answer a driver in pipeline mode still has due (raising the first error)."""
    with driver.pipeline():  # leaving a nested block syncs
        pass


# psycopg, in pipeline mode, flushes every statement to the server as it is executed (a poll and a
# send each, the thread giving up the interpreter lock around the poll) and syncs after the BEGIN
# it issues by itself (a round trip). The functions below put statements in libpq's output buffer
# instead: they leave together with the next statement that waits for an answer, or the COMMIT.
# They use psycopg's cursor and pipeline internals (the steps of ``Cursor.execute`` minus its
# flush), checked by the tests against the pinned psycopg versions.


def _hand_over(driver: Any) -> None:
    """Give libpq the commands psycopg has queued (into its output buffer: nothing is sent)."""
    queue = driver._pipeline.command_queue
    while queue:
        queue.popleft()()


def _without_waiting(steps: Any) -> None:
    for _ in steps:
        raise RuntimeError("psycopg would have waited for the server while queueing a statement")


def _queue_steps(cursor: Any, sql: str, arguments: Any) -> Any:
    yield from cursor._start_query(sql)
    query = cursor._convert_query(sql, arguments)
    yield from cursor._maybe_prepare_gen(query)
    cursor._last_query = sql
    yield from cursor._conn._prepared.maintain_gen(cursor._conn)


def _queue(cursor: Any, sql: str, arguments: Any) -> None:
    """``cursor.execute`` in pipeline mode, minus the flush: the statement waits in libpq's buffer."""
    driver = cursor._conn
    with driver.lock:
        _without_waiting(_queue_steps(cursor, sql, arguments))
        _hand_over(driver)


def queue_command(driver: Any, command: bytes) -> None:
    """Queue a statement without parameters (BEGIN, COMMIT) in a pipeline, as psycopg queues its
    own, into libpq's buffer: its answer is read, and its error raised, with the next sync."""
    pipeline = driver._pipeline
    with driver.lock:
        pipeline.command_queue.append(functools.partial(driver.pgconn.send_query_params, command, None))
        pipeline.result_queue.append(None)
        _hand_over(driver)


def _executed(conn: Connection, sql: str, arguments: Any, *, queued: bool, many: bool = False) -> Any:
    """A cursor of the connection's driver that has run ``sql`` (or, ``queued``: the connection is
    in pipeline mode, queued it): listeners told; an error raised as SQLAlchemy raises it, the
    cursor closed."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn._has_events or conn.engine._has_events:
            conn.dispatch.before_cursor_execute(conn, cursor, sql, arguments, None, many)
        if queued:
            for each in arguments if many else (arguments,):
                _queue(cursor, sql, each)
        elif many:
            cursor.executemany(sql, arguments)
        else:
            cursor.execute(sql, arguments)
    except conn.dialect.loaded_dbapi.Error as exc:
        try:
            conn._handle_dbapi_exception(exc, sql, arguments, cursor, None)
        finally:
            cursor.close()
    return cursor


def _on_cursor(
    conn: Connection,
    sql: str,
    arguments: Any,
    *,
    many: bool = False,
    limit: int = 0,
    returns_rows: bool = True,
    later: bool = False,
) -> tuple[list[Any], int]:
    """Run ``sql`` on a cursor of the connection's driver: listeners told, errors raised as
    SQLAlchemy raises them. The rows it returns (at most ``limit`` if given) and its row count.

    In pipeline mode a statement is only sent: fetching rows waits for the answers so far, as
    does a row count, unless ``later`` (the caller needs neither: its answer, or its error, comes
    with the next statement that waits, or the commit)."""
    driver: Any = conn.connection.dbapi_connection
    queued = pipelined(conn)
    cursor = _executed(conn, sql, arguments, queued=queued, many=many)
    try:
        if many:
            return [], -1 if queued else cursor.rowcount
        if queued:
            if returns_rows:
                return (cursor.fetchmany(limit) if limit else cursor.fetchall()), cursor.rowcount
            if later:
                return [], -1
            wait_for_answers(driver)
            return [], cursor.rowcount
        if cursor.description is None:
            return [], cursor.rowcount
        return (cursor.fetchmany(limit) if limit else cursor.fetchall()), cursor.rowcount
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, sql, arguments, cursor, None)
    finally:
        cursor.close()


def _statement(
    conn: Connection, statement: sa.Executable, params: Mapping[str, Any]
) -> tuple[_Plan, str, Any]:
    plan = _plan(conn.dialect, statement, tuple(sorted(params)))
    if plan.expanding is None:
        return plan, plan.sql, _arguments(plan, params)
    sql, arguments = _expanded(plan, params)
    return plan, sql, arguments


def _converted(plan: _Plan, fetched: list[Any]) -> list[Any]:
    if plan.row is None:
        return fetched
    make = plan.row._make
    if plan.results is None:
        return [make(r) for r in fetched]
    processors = plan.results
    return [make([p(v) if p else v for p, v in zip(processors, r, strict=True)]) for r in fetched]


def _run(
    conn: Connection, statement: sa.Executable, params: Mapping[str, Any], limit: int = 0, later: bool = False
) -> tuple[list[Any], int]:
    plan, sql, arguments = _statement(conn, statement, params)
    fetched, count = _on_cursor(
        conn, sql, arguments, limit=limit, returns_rows=plan.row is not None, later=later
    )
    return _converted(plan, fetched), count


class Sent:
    """A statement ``send`` has sent; its rows are read when first asked for."""

    __slots__ = ("_arguments", "_conn", "_cursor", "_plan", "_rows", "_sql")

    def __init__(self, conn: Connection, plan: _Plan, sql: str, arguments: Any, cursor: Any) -> None:
        self._conn, self._plan, self._sql, self._arguments = conn, plan, sql, arguments
        self._cursor = cursor
        self._rows: list[Any] = []

    @classmethod
    def answered(cls, rows: list[Any]) -> Sent:
        """A statement already run (no pipeline): its rows."""
        sent = cls.__new__(cls)
        sent._cursor, sent._rows = None, rows
        return sent

    def rows(self) -> list[Any]:
        """Every row the statement returned (waiting for its answer, and those sent before it)."""
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            conn = self._conn
            try:
                self._rows = _converted(self._plan, cursor.fetchall())
            except conn.dialect.loaded_dbapi.Error as exc:
                conn._handle_dbapi_exception(exc, self._sql, self._arguments, cursor, None)
            finally:
                cursor.close()
        return self._rows

    def first(self) -> Any:
        """The first row, or None."""
        found = self.rows()
        return found[0] if found else None


def send(conn: Connection, statement: sa.Executable, params: Mapping[str, Any]) -> Sent:
    """Send a statement that returns rows without waiting for them, in pipeline mode: statements
    sent one after another travel together, and the first ``Sent.rows`` waits for all their answers
    at once (one round trip instead of one each). Without pipeline mode it runs at once."""
    plan, sql, arguments = _statement(conn, statement, params)
    if plan.row is None:
        raise ValueError(f"send is for statements that return rows: {sql}")
    if not pipelined(conn):
        return Sent.answered(_converted(plan, _on_cursor(conn, sql, arguments)[0]))
    return Sent(conn, plan, sql, arguments, _executed(conn, sql, arguments, queued=True))


def rows(conn: Connection, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> list[Any]:
    """Every row ``statement`` returns (named tuples, converted as SQLAlchemy converts them)."""
    return _run(conn, statement, params or {})[0]


def first(conn: Connection, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> Any:
    """The first row ``statement`` returns, or None."""
    found = _run(conn, statement, params or {}, limit=1)[0]
    return found[0] if found else None


def scalar(conn: Connection, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> Any:
    """The first column of the first row, or None."""
    found = _run(conn, statement, params or {}, limit=1)[0]
    return found[0][0] if found else None


def execute(conn: Connection, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> int:
    """Run a statement that returns no rows; the number of rows it changed."""
    return _run(conn, statement, params or {})[1]


def execute_later(conn: Connection, statement: sa.Executable, params: Mapping[str, Any]) -> None:
    """``execute`` for a statement whose row count the caller does not need: in pipeline mode it
    is sent without waiting (its error, if any, is raised by the next statement that waits, or
    by the commit)."""
    _run(conn, statement, params, later=True)


def execute_many(conn: Connection, statement: sa.Executable, rows: list[Mapping[str, Any]]) -> None:
    """Run a statement once per parameter set (the driver's ``executemany``); rows it returns are dropped."""
    if not rows:
        return
    plan = _plan(conn.dialect, statement, tuple(sorted(rows[0])))
    if plan.expanding is not None:
        raise ValueError(f"execute_many cannot expand IN lists: {plan.sql}")
    _on_cursor(conn, plan.sql, [_arguments(plan, params) for params in rows], many=True)
