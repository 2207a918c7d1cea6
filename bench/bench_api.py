"""Benchmark 7 — history and API: p50/p99 of ``GET /api/v1/sessions/<id>/messages/?limit=100`` on a
session with 10,000 messages and of listing a user's 1,000 sessions (``GET /api/v1/sessions/``,
first page of 100 and the last page). Seeded with ``bulk_create``; Bearer API key auth.
Baselines in the same run: the same requests on a 100-message session / a 10-session user
(does the cost grow with the data?), and an authenticated 404 under /api/v1/ (the fixed cost of
auth + DRF + daphne).
"""

from __future__ import annotations

import argparse
import json
import time

from bench import harness as h
from bench.stats import pct, r

SEED = """
import json, uuid
from django.contrib.auth import get_user_model
from chat.apikeys import api_key_create
from chat.models import ChatMessage, ChatSession
U = get_user_model()
big_user = U.objects.create_user(username="bench-api-big", password="x" * 16)
small_user = U.objects.create_user(username="bench-api-small", password="x" * 16)
_, big_key = api_key_create(owner=big_user, name="bench")
_, small_key = api_key_create(owner=small_user, name="bench")
sessions = ChatSession.objects.bulk_create(
    [ChatSession(owner=big_user, client_id=str(uuid.uuid4()), title=f"Session {i}")
     for i in range(%(sessions)d)])
small_sessions = ChatSession.objects.bulk_create(
    [ChatSession(owner=small_user, client_id=str(uuid.uuid4()), title=f"Session {i}") for i in range(10)])
def fill(session, n):
    msgs = []
    for i in range(n):
        role = "user" if i %% 2 == 0 else "assistant"
        text = f"message {i} " + "lorem ipsum dolor sit amet " * 4
        msgs.append(ChatMessage(session=session, sequence=i, role=role, text=text,
                                parts=[{"type": "text", "text": text}], metadata={}))
    ChatMessage.objects.bulk_create(msgs, batch_size=2000)
big, small = sessions[0], small_sessions[0]
for s in (big, small):
    s.client_id = str(s.pk)
    s.save(update_fields=["client_id"])
fill(big, %(messages)d)
fill(small, 100)
print("SEED=" + json.dumps({"big_key": big_key, "small_key": small_key,
                            "big": str(big.pk), "small": str(small.pk)}))
"""


def _measure(client, url: str, key: str, reps: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(5):
        resp = client.get(url, headers=headers)
    status = resp.status_code
    size = len(resp.content)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        resp = client.get(url, headers=headers)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if resp.status_code != status:
            status = resp.status_code
    return {
        "status": status,
        "bytes": size,
        "p50_ms": r(pct(times, 50)),
        "p99_ms": r(pct(times, 99)),
        "items": _items(resp),
    }


def _items(resp) -> int | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        for key in ("results", "messages", "data"):
            if isinstance(body.get(key), list):
                return len(body[key])
    return len(body) if isinstance(body, list) else None


def run(stack: h.Stack, *, reps: int = 200, sessions: int = 1000, messages: int = 10000) -> dict:
    import httpx

    h.log(f"api: seeding {sessions} sessions, {messages} messages")
    out = stack.shell(SEED % {"sessions": sessions, "messages": messages})
    seed = json.loads(next(line[5:] for line in out.splitlines() if line.startswith("SEED=")))
    base = stack.http_url()
    res: dict = {"reps": reps, "sessions": sessions, "messages": messages}
    with httpx.Client(base_url=base, timeout=60) as client:
        pages = -(-sessions // 100)
        cases = {
            "messages_10k": (f"/api/v1/sessions/{seed['big']}/messages/?limit=100", seed["big_key"]),
            "messages_10k_oldest": (
                f"/api/v1/sessions/{seed['big']}/messages/?limit=100&after=-1",
                seed["big_key"],
            ),
            "sessions_1k_first_page": ("/api/v1/sessions/?page_size=100", seed["big_key"]),
            "sessions_1k_last_page": (f"/api/v1/sessions/?page_size=100&page={pages}", seed["big_key"]),
            "baseline_messages_100": (
                f"/api/v1/sessions/{seed['small']}/messages/?limit=100",
                seed["small_key"],
            ),
            "baseline_sessions_10": ("/api/v1/sessions/?page_size=100", seed["small_key"]),
            "baseline_auth_404": ("/api/v1/no-such-endpoint/", seed["small_key"]),
        }
        for name, (url, key) in cases.items():
            res[name] = _measure(client, url, key, reps)
            res[name]["url"] = url
    b_msg, b_ses = res["baseline_messages_100"], res["baseline_sessions_10"]
    res["ratio_messages_p50"] = round(res["messages_10k"]["p50_ms"] / b_msg["p50_ms"], 2)
    res["ratio_sessions_p50"] = round(res["sessions_1k_first_page"]["p50_ms"] / b_ses["p50_ms"], 2)
    h.log(
        f"api: messages p50 {res['messages_10k']['p50_ms']} ms (x{res['ratio_messages_p50']} of 100-msg), "
        f"sessions p50 {res['sessions_1k_first_page']['p50_ms']} ms "
        f"(x{res['ratio_sessions_p50']} of 10-session)"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    with h.Stack(backend="api") as stack:
        res = run(stack, reps=args.reps)
    h.save("api", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
