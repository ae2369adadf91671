"""JSON logs: one parseable object per line, whatever the client put in the path or the app in a message."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from dockyard.asgi import AccessLogMiddleware
from dockyard.config import Settings
from dockyard.observability.logs import JsonFormatter
from dockyard.server import configure_logging

HOSTILE_PATHS = [
    "/v2/a/manifests/v1",
    '/v2/x\n{"time": "forged", "level": "error"}',
    '/a\r\x1b[2J\x00\x7f\\"',
    "/caf\u00e9\u2028",
    "/\ud800",
]


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"gone"})


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_access_log_lines_are_json(path: str) -> None:
    stream = io.StringIO()
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": ("10.0.0.5", 1234)}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    anyio.run(AccessLogMiddleware(answer, stream, log_format="json"), scope, receive, send)
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert text.isascii()
    record = json.loads(text)
    assert record["path"] == path
    assert {k: record[k] for k in ("level", "logger", "client", "method", "status", "bytes")} == {
        "level": "info",
        "logger": "dockyard.access",
        "client": "10.0.0.5",
        "method": "GET",
        "status": 404,
        "bytes": 4,
    }
    assert record["time"].endswith("Z")
    assert isinstance(record["ms"], float)


def test_app_log_records_are_json_lines_with_their_exception(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    try:
        log = logging.getLogger("dockyard.test")
        log.warning("bad name %r\nsecond line \x1b[31m", "x\ny")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging(Settings())
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["message"] == "bad name 'x\\ny'\nsecond line \x1b[31m"
    assert records[0]["level"] == "warning"
    assert records[0]["logger"] == "dockyard.test"
    assert records[1]["message"] == "failed"
    assert "ValueError: boom" in records[1]["exception"]
    assert len(lines) == 2


def test_formatter_escapes_control_characters() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\u2028b\x00c", None, None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert line.isascii()
    assert json.loads(line)["message"] == "a\u2028b\x00c"


def test_the_last_access_lines_are_written_even_when_shutdown_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from dockyard.app import build, create_app
    from dockyard.db import Database
    from dockyard.migrations import upgrade

    logged = Settings.model_validate(
        {"data_dir": tmp_path, "admin_password": "x" * 16, "access_log": True, "log_format": "json"}
    )
    migrated = Database(logged.database_url, pool_size=1)
    upgrade(migrated)
    migrated.dispose()
    parts = build(logged)

    def failing_dispose() -> None:
        raise RuntimeError("dispose failed")

    app = create_app(logged, parts, background_jobs=False)
    client = TestClient(app).__enter__()
    assert client.get("/v2/").status_code == 401
    monkeypatch.setattr(parts.db, "dispose", failing_dispose)
    with pytest.raises(RuntimeError, match="dispose failed"):
        client.__exit__(None, None, None)
    monkeypatch.undo()
    parts.db.dispose()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = [(r["path"], r["status"]) for r in records if r.get("logger") == "dockyard.access"]
    assert access == [("/v2/", 401)]
