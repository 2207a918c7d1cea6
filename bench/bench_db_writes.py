"""Benchmark 4 — database writes per turn, counted in-process with Django's execute wrappers on
every connection (``connection_created`` installs the counter on each thread's connection).

Runs ``chat.runtime.turn_start`` + ``turn_listen`` for a ``/long 5000`` text turn and a
``/tools 20`` turn (``api`` backend, in-process scripted model, a fresh migrated SQLite file DB),
each as a first turn (with title generation) and as a follow-up turn in the same chat.
Baseline in the same run: the writes of a one-delta turn (``/long 1``): what any turn costs.

Targets: ≤ 6 writes for the text turn, ≤ 3 per tool call. Run it as its own process:
``python -m bench.bench_db_writes`` (it configures Django itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b(?:\s+INTO|\s+FROM)?\s+\"?(\w+)\"?", re.IGNORECASE)


class Counter_:
    def __init__(self) -> None:
        self.writes: Counter[str] = Counter()
        self.reads = 0
        self.active = False
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        if self.active:
            m = _WRITE.match(sql)
            if m:
                self.writes[f"{m.group(1).upper()} {m.group(2)}"] += 1
                self.statements.append(sql[:160])
            elif sql.lstrip()[:6].upper() == "SELECT":
                self.reads += 1
        return execute(sql, params, many, context)

    def reset(self) -> None:
        self.writes.clear()
        self.statements.clear()
        self.reads = 0


def main() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="copilot-bench-db-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="copilot_project.settings",
        DEBUG="true",
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        VAR_DIR=str(tmp / "var"),
        AGENT_WORKSPACE_ROOT=str(tmp / "ws"),
        AGENT_BACKEND="api",
        LOG_LEVEL="WARNING",
        REDIS_KEY_PREFIX="t_bench_db",
        USER_TOKEN_BUDGET_DAILY=str(10**13),
        USER_TOKEN_BUDGET_WEEKLY=str(10**14),
    )
    for k in ("REDIS_URL", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        os.environ.pop(k, None)
    try:
        return _run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run() -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.db.backends.signals import connection_created

    from chat import runtime

    call_command("migrate", verbosity=0, interactive=False)
    counter = Counter_()

    def install(sender, connection, **kwargs):
        if counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(counter)

    connection_created.connect(install, weak=False)
    connection.ensure_connection()
    install(None, connection)

    user = get_user_model().objects.create_user(username="bench-db", password="x" * 16)

    async def turn(chat_id: str, text: str) -> dict:
        counter.reset()
        counter.active = True
        t0 = time.perf_counter()
        handle = await runtime.turn_start(user=user, chat_id=chat_id, text=text)
        kinds: Counter[str] = Counter()
        last = None
        async for _seq, raw, _terminal in runtime.turn_listen(handle=handle):
            chunk = json.loads(raw)
            kinds[chunk["type"]] += 1
            last = chunk
        await runtime.turn_wait_idle(60)
        counter.active = False
        return {
            "text": text,
            "terminal": last and last["type"],
            "chunks": sum(kinds.values()),
            "text_deltas": kinds.get("text-delta", 0),
            "tool_outputs": kinds.get("tool-output-available", 0) + kinds.get("tool-output-error", 0),
            "writes": sum(counter.writes.values()),
            "reads": counter.reads,
            "by_table": dict(sorted(counter.writes.items())),
            "statements": list(counter.statements),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    async def scenario() -> dict:
        out = {}
        base_chat = str(uuid.uuid4())
        out["baseline_first"] = await turn(base_chat, "/long 1")
        out["baseline_followup"] = await turn(base_chat, "/long 1")
        text_chat = str(uuid.uuid4())
        out["text_first"] = await turn(text_chat, "/long 5000")
        out["text_followup"] = await turn(text_chat, "/long 5000")
        tools_chat = str(uuid.uuid4())
        out["tools_first"] = await turn(tools_chat, "/tools 20")
        out["tools_followup"] = await turn(tools_chat, "/tools 20")
        return out

    res = asyncio.run(scenario())

    def turn_writes(run: dict) -> int:
        """A turn's own writes: a chat's first turn also INSERTs the chat (its session row)."""
        return run["writes"] - run["by_table"].get("INSERT chat_chatsession", 0)

    text_w = max(turn_writes(res["text_first"]), turn_writes(res["text_followup"]))
    tools_w = max(turn_writes(res["tools_first"]), turn_writes(res["tools_followup"]))
    base_w = res["baseline_followup"]["writes"]
    res["summary"] = {
        "text_turn_writes": text_w,
        "text_first_turn_writes_with_chat_insert": res["text_first"]["writes"],
        "tool_turn_writes": tools_w,
        "tool_writes_per_call": round(tools_w / 20, 2),
        "tool_writes_per_call_above_baseline": round((tools_w - base_w) / 20, 2),
        "baseline_turn_writes": base_w,
        "met_text": text_w <= 6,
        "met_tools": tools_w / 20 <= 3,
    }
    return res


if __name__ == "__main__":
    result = main()
    print("BENCH_JSON=" + json.dumps(result))
