"""Benchmark 9 — full-text search latency (issue #19): ``chat.selectors.message_search_for_user``
over 10,000 messages in 100 chats of one user, with two other users' chats as noise (the same
vocabulary, so the index holds their matches too and the owner filter has work to do).

Measures p50/p99 of the search over a fixed set of queries (a frequent word, a rare word, two
words, a prefix as typed, a title word, a word nobody wrote), each repeated, on the embedded
SQLite (FTS5) in a fresh temp file and — when DATABASE_URL names a PostgreSQL server — on
PostgreSQL (tsvector + GIN) in a private database created and dropped on that server.
Baseline in the same run: the same user's messages filtered with ``text__icontains`` (a scan),
first 20, for the single-word queries.

Run it as its own process: ``python -m bench.bench_search [--quick]``; each database runs in a
child process of its own (Django is configured once per process). The last ``BENCH_JSON=``
line holds the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stats import pct, r  # noqa: E402 - after the path setup, as a script

SEED = 19
SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "zu", "fe", "gi", "ho", "ba", "ce"]
FULL = {"chats": 100, "messages_per_chat": 100, "noise_users": 2, "noise_messages": 2000, "reps": 20}
QUICK = {"chats": 20, "messages_per_chat": 100, "noise_users": 1, "noise_messages": 500, "reps": 5}


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def sentence(rng: random.Random, vocab: list[str], n: int) -> str:
    # Zipf-like: a few words are everywhere, most are rare.
    return " ".join(vocab[min(len(vocab) - 1, int(rng.paretovariate(1.1)) - 1)] for _ in range(n)) + "."


def queries(counts: dict[str, int]) -> dict[str, str]:
    """The measured queries, picked from how many of the user's messages hold each word."""
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    total = counts[ranked[0]]

    def near(share: float) -> str:
        return min(ranked, key=lambda w: (abs(counts[w] - total * share), w))

    rare = next(w for w in reversed(ranked) if counts[w] >= 3)
    return {
        "frequent word": ranked[0],
        "mid word": near(0.1),
        "rare word": rare,
        "two words": f"{ranked[1]} {near(0.2)}",
        "prefix as typed": ranked[2][:3],
        "title word": "quarterly",
        "no hit": "zzyzxqua",
    }


# --- the child process: one database --------------------------------------------------------------


def worker(db_url: str, sizes: dict) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="copilot-bench-search-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="copilot_project.settings",
        DEBUG="true",  # the development defaults; queries are not logged (below)
        DATABASE_URL=db_url or f"sqlite:///{tmp / 'db.sqlite3'}",
        VAR_DIR=str(tmp / "var"),
        AGENT_WORKSPACE_ROOT=str(tmp / "ws"),
        AGENT_BACKEND="api",
        LOG_LEVEL="WARNING",
        CONN_MAX_AGE="0",
    )
    os.environ.pop("ENV_FILE", None)
    for k in ("REDIS_URL", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        os.environ.pop(k, None)
    try:
        return _measure(sizes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(sizes: dict) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from chat.models import ChatMessage, ChatSession
    from chat.selectors import message_search_for_user

    call_command("migrate", verbosity=0, interactive=False)
    settings.DEBUG = False  # no query log on the measured path
    rng = random.Random(SEED)
    vocab = vocabulary(rng)
    users = get_user_model()
    me = users.objects.create_user(username="bench-search", password="x" * 16)

    counts: dict[str, int] = {}

    def fill(owner, chats: int, per_chat: int, *, count: bool = False) -> int:
        t0 = time.perf_counter()
        for c in range(chats):
            title = f"{'Quarterly' if c % 10 == 0 else 'Chat'} {vocab[rng.randrange(200)]} {c}"
            session = ChatSession.objects.create(owner=owner, client_id=str(uuid.uuid4()), title=title)
            rows = []
            for i in range(per_chat):
                role = "user" if i % 2 == 0 else "assistant"
                text = sentence(rng, vocab, rng.randint(8, 40) if role == "user" else rng.randint(40, 160))
                if count:  # messages holding each word
                    for word in set(text.rstrip(".").split()):
                        counts[word] = counts.get(word, 0) + 1
                rows.append(ChatMessage(session=session, sequence=i, role=role, text=text, parts=[]))
            ChatMessage.objects.bulk_create(rows, batch_size=500)
        return round((time.perf_counter() - t0) * 1000)

    insert_ms = fill(me, sizes["chats"], sizes["messages_per_chat"], count=True)
    for n in range(sizes["noise_users"]):
        other = users.objects.create_user(username=f"bench-noise-{n}", password="x" * 16)
        fill(other, sizes["noise_messages"] // 100, 100)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE chat_chatmessage")
            cursor.execute("ANALYZE chat_chatsession")

    per_query: dict[str, dict] = {}
    all_ms: list[float] = []
    measured = queries(counts)
    for name, q in measured.items():
        message_search_for_user(user=me, query=q, limit=20)  # warm
        times = []
        hits = 0
        for _ in range(sizes["reps"]):
            t0 = time.perf_counter()
            hits = len(message_search_for_user(user=me, query=q, limit=20))
            times.append((time.perf_counter() - t0) * 1000)
        all_ms += times
        per_query[name] = {
            "query": q,
            "messages_holding_it": counts.get(q, 0),
            "hits": hits,
            "p50_ms": r(pct(times, 50)),
            "p99_ms": r(pct(times, 99)),
        }

    base_ms: list[float] = []
    for name in ("frequent word", "mid word", "rare word", "no hit"):
        q = measured[name]
        qs = ChatMessage.objects.filter(session__owner=me, text__icontains=q).values_list("id", "text")
        list(qs[:20])
        for _ in range(sizes["reps"]):
            t0 = time.perf_counter()
            list(qs[:20])
            base_ms.append((time.perf_counter() - t0) * 1000)

    return {
        "database": connection.vendor,
        "messages": ChatMessage.objects.filter(session__owner=me).count(),
        "chats": sizes["chats"],
        "noise_messages": ChatMessage.objects.exclude(session__owner=me).count(),
        "insert_ms": insert_ms,
        "queries": per_query,
        "p50_ms": r(pct(all_ms, 50)),
        "p99_ms": r(pct(all_ms, 99)),
        "baseline_icontains_p50_ms": r(pct(base_ms, 50)),
        "baseline_icontains_p99_ms": r(pct(base_ms, 99)),
    }


# --- the parent: one child per database -----------------------------------------------------------


def _child(db_url: str, quick: bool) -> dict:
    argv = [sys.executable, "-m", "bench.bench_search", "--worker", db_url or "-"]
    if quick:
        argv.append("--quick")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON=")), None)
    if line is None:
        raise RuntimeError(f"bench_search worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("BENCH_JSON=") :])


def _postgres(url: str, quick: bool) -> dict:
    """A private database on DATABASE_URL's server, dropped afterwards."""
    import psycopg

    parts = urlsplit(url)
    name = f"bench_search_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return _child(urlunsplit(parts._replace(path=f"/{name}")), quick)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(*, quick: bool = False) -> dict:
    out: dict = {"sizes": QUICK if quick else FULL, "sqlite": _child("", quick)}
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        try:
            out["postgresql"] = _postgres(url, quick)
        except Exception as exc:  # noqa: BLE001 - the SQLite figures still count
            out["postgresql"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def rows(res: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, measured, baseline, vs target, met) rows, as in bench/run.py's table."""
    out = []
    for db in ("sqlite", "postgresql"):
        x = res.get(db)
        if not x:
            continue
        if "error" in x:
            out.append((f"9 search {db}", "error", x["error"][:60], "", "NO"))
            continue
        out.append(
            (
                f"9 search {db} {x['messages']:,} msgs",
                f"p50 {x['p50_ms']} / p99 {x['p99_ms']} ms",
                f"icontains p50 {x['baseline_icontains_p50_ms']} / p99 {x['baseline_icontains_p99_ms']} ms",
                "p99 ≤100 ms (a search box's keystroke budget)",
                "yes" if x["p99_ms"] <= 100 else "NO",
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages in 20 chats, 5 repetitions")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.worker is not None:
        print("BENCH_JSON=" + json.dumps(worker("" if args.worker == "-" else args.worker, sizes)))
        return
    res = run(quick=args.quick)
    for db in ("sqlite", "postgresql"):
        x = res.get(db)
        if not x or "error" in x:
            if x:
                print(f"{db}: {x['error']}", file=sys.stderr)
            continue
        print(
            f"{db}: {x['messages']} messages in {x['chats']} chats (+{x['noise_messages']} other users'): "
            f"search p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms; icontains baseline p50 "
            f"{x['baseline_icontains_p50_ms']} ms, p99 {x['baseline_icontains_p99_ms']} ms",
            file=sys.stderr,
        )
        for name, q in x["queries"].items():
            print(
                f"  {name:16} {q['query']!r:20} in {q['messages_holding_it']:5} msgs, {q['hits']:2} hits: "
                f"p50 {q['p50_ms']} / p99 {q['p99_ms']} ms",
                file=sys.stderr,
            )
    print("BENCH_JSON=" + json.dumps(res))


if __name__ == "__main__":
    main()
