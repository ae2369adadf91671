"""What keeps GIL-releasing calls off the hot path: batched log lines, once-per-turn checks, request ids."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid

from dockyard.changes import OncePerTurn
from dockyard.events.services import new_request_id
from dockyard.observability.logs import BatchedLines


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_lines_without_a_loop_are_written_at_once() -> None:
    stream = CountingStream()
    lines = BatchedLines(stream)
    lines.write("one\n")
    assert stream.getvalue() == "one\n"


def test_lines_on_a_loop_wait_for_the_timer_and_come_out_in_one_write() -> None:
    stream = CountingStream()

    async def scenario() -> None:
        lines = BatchedLines(stream, seconds=0.01)
        lines.write("a\n")
        lines.write("b\n")
        assert stream.writes == []
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert stream.writes == ["a\nb\n"]


def test_no_write_is_larger_than_the_limit_and_no_line_is_cut() -> None:
    stream = CountingStream()
    lines = BatchedLines(stream, limit=10)
    lines._lines.extend(["aaaa\n", "bbbb\n", "cc\n", "dddddddddddddd\n"])  # held, as on a loop
    lines.flush()
    assert stream.writes == ["aaaa\nbbbb\n", "cc\n", "dddddddddddddd\n"]
    assert all(len(w) <= 10 or w.count("\n") == 1 for w in stream.writes)


def test_a_full_batch_is_written_without_waiting() -> None:
    stream = CountingStream()

    async def scenario() -> None:
        lines = BatchedLines(stream, seconds=60, limit=8)
        lines.write("1234\n")
        assert stream.writes == []
        lines.write("5678\n")
        assert stream.getvalue() == "1234\n5678\n"

    asyncio.run(scenario())


def test_the_check_is_asked_once_per_turn_of_the_loop_and_again_after() -> None:
    asked: list[int] = []

    def check() -> bool:
        asked.append(1)
        return False

    once = OncePerTurn(check)

    async def scenario() -> None:
        once.bind()
        assert once() is False
        assert once() is False
        assert len(asked) == 1
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert once() is False
        assert len(asked) == 2

    asyncio.run(scenario())


def test_a_stale_answer_is_never_remembered_and_other_threads_always_ask() -> None:
    answers = [True, True, False]
    asked: list[bool] = []

    def check() -> bool:
        asked.append(answers[len(asked)] if len(asked) < len(answers) else False)
        return asked[-1]

    once = OncePerTurn(check)

    async def scenario() -> None:
        once.bind()
        assert once() is True
        assert once() is True  # "ask the database" is asked again, not remembered
        assert once() is False
        assert once() is False
        assert len(asked) == 3
        thread = threading.Thread(target=once)
        thread.start()
        thread.join()
        assert len(asked) == 4  # another thread asked although this turn knows the answer

    asyncio.run(scenario())


def test_without_a_loop_every_lookup_asks() -> None:
    asked: list[int] = []
    once = OncePerTurn(lambda: bool(asked.append(1)))
    once.bind()
    once()
    once()
    assert len(asked) == 2


def test_request_ids_are_random_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
