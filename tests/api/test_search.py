"""Full-text search (issue #19, docs/api.md "Search"): ``GET /api/v1/search/?q=`` and the
selector behind it, on whichever database the run uses (SQLite FTS5 or PostgreSQL tsvector)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from chat.models import ChatMessage, ChatSession, ChatTurn
from chat.runtime.persistence import assistant_message_save
from chat.search import search_index_ensure, snippet_parse
from chat.selectors import message_search_for_user
from chat.services import message_append, session_create

pytestmark = pytest.mark.django_db

URL = "/api/v1/search/"


def _marked(hit: dict) -> list[str]:
    """The highlighted parts of a hit's snippet."""
    chars = list(hit["snippet"])
    return ["".join(chars[s:e]) for s, e in hit["highlights"]]


def _search(api, q: str, **params) -> list[dict]:
    resp = api.get(URL, {"q": q, **params})
    assert resp.status_code == 200, resp.content[:300]
    return resp.json()["results"]


def test_finds_messages_with_highlighted_snippets_and_result_shape(api, user):
    session = session_create(owner=user, title="Gardening")
    message_append(session=session, role="user", text="How do I grow tomatoes on a balcony?")
    reply = message_append(
        session=session,
        role="assistant",
        text="Tomatoes need six hours of sun. Water the tomato plants deeply twice a week.",
    )
    results = _search(api, "tomato")
    assert len(results) == 2
    hit = next(r for r in results if r["message"]["id"] == reply.pk)
    assert hit["session"] == {"id": str(session.pk), "title": "Gardening", "archived": False}
    assert hit["message"] == {"id": reply.pk, "sequence": reply.sequence, "role": "assistant"}
    assert set(hit) == {"session", "message", "snippet", "highlights"}
    assert "Tomatoes need six hours" in hit["snippet"]
    assert [m.lower() for m in _marked(hit)] == ["tomatoes", "tomato"]  # stemmed: one word


def test_ranking_puts_the_better_match_first(api, user):
    session = session_create(owner=user, title="notes")
    weak = message_append(
        session=session,
        role="user",
        text="A long message about many things: cooking, travel, music, books, films, and once "
        "the word kubernetes, then gardening, painting, running, cycling and chess.",
    )
    strong = message_append(
        session=session, role="assistant", text="Kubernetes: kubernetes pods, kubernetes services."
    )
    results = _search(api, "kubernetes")
    assert [r["message"]["id"] for r in results] == [strong.pk, weak.pk]


def test_all_words_must_match_and_the_last_is_a_prefix(api, user):
    session = session_create(owner=user)
    both = message_append(session=session, role="user", text="postgres replication lag")
    message_append(session=session, role="user", text="postgres vacuum")
    assert [r["message"]["id"] for r in _search(api, "postgres replic")] == [both.pk]
    assert [r["message"]["id"] for r in _search(api, "REPLICATION, Postgres!")] == [both.pk]


def test_title_matches_come_first_without_a_message(api, user):
    titled = session_create(owner=user, title="Quarterly budget review")
    other = session_create(owner=user, title="misc")
    msg = message_append(session=other, role="user", text="the budget for next year")
    results = _search(api, "budget")
    assert results[0]["session"]["id"] == str(titled.pk) and results[0]["message"] is None
    assert results[0]["snippet"] == "Quarterly budget review" and _marked(results[0]) == ["budget"]
    assert results[1]["message"]["id"] == msg.pk


def test_title_renamed_is_found_by_its_new_title_only(api, user):
    session = session_create(owner=user, title="old name")
    ChatSession.objects.filter(pk=session.pk).update(title="zephyr project")
    assert _search(api, "old name") == []
    assert _search(api, "zephyr")[0]["session"]["id"] == str(session.pk)
    session.delete()
    assert _search(api, "zephyr") == []


def test_only_normal_user_and_assistant_messages(api, user):
    session = session_create(owner=user)
    message_append(session=session, role="user", text="needle in user")
    message_append(session=session, role="assistant", text="needle in assistant")
    message_append(session=session, role="tool", text="needle in tool")
    message_append(session=session, role="system", text="needle system", kind=ChatMessage.Kind.SYSTEM)
    message_append(session=session, role="assistant", text="needle error", kind=ChatMessage.Kind.ERROR)
    roles = sorted(r["message"]["role"] for r in _search(api, "needle"))
    assert roles == ["assistant", "user"]


def test_never_another_users_chats(api, user, other_user, client_for):
    mine = session_create(owner=user, title="shared word orchid")
    message_append(session=mine, role="user", text="orchid care")
    theirs = session_create(owner=other_user, title="orchid secrets")
    message_append(session=theirs, role="user", text="orchid private text")
    results = _search(api, "orchid")
    assert {r["session"]["id"] for r in results} == {str(mine.pk)}
    assert "private" not in str(results)
    other = client_for(other_user)
    assert {r["session"]["id"] for r in _search(other, "orchid")} == {str(theirs.pk)}


def test_message_rewritten_by_the_turns_writer_is_found_by_its_new_text(api, user):
    session = session_create(owner=user)
    turn = ChatTurn.objects.create(session=session, backend="api", model="m")
    pk = assistant_message_save(
        session=session, turn=turn, message_pk=None, parts=[], text="draft zebra", metadata={}
    )
    assert [r["message"]["id"] for r in _search(api, "zebra")] == [pk]
    assistant_message_save(
        session=session, turn=turn, message_pk=pk, parts=[], text="final giraffe", metadata={}
    )
    assert _search(api, "zebra") == []
    assert [r["message"]["id"] for r in _search(api, "giraffe")] == [pk]
    ChatMessage.objects.filter(pk=pk).delete()
    assert _search(api, "giraffe") == []


def test_archived_chats_are_included_and_flagged(api, user):
    session = session_create(owner=user, title="archived one")
    message_append(session=session, role="user", text="walrus facts")
    ChatSession.objects.filter(pk=session.pk).update(archived=True)
    [hit] = _search(api, "walrus")
    assert hit["session"]["archived"] is True


def test_snippet_is_plain_text_never_markup(api, user):
    session = session_create(owner=user, title="<b>bold</b>")
    message_append(session=session, role="user", text='payload <img src=x onerror="alert(1)"> here')
    [hit] = _search(api, "payload")
    assert "<img src=x onerror=" in hit["snippet"]  # as text: the client renders it escaped
    assert _marked(hit) == ["payload"]
    assert "<mark>" not in hit["snippet"]


@pytest.mark.parametrize(
    "q",
    [
        '"',
        "AND",
        "*",
        "OR NOT",
        "NEAR(a b)",
        "a:b",
        "'",
        "\\",
        "-x",
        "((",
        "^",
        "%",
        "_",
        "col:x*",
        "' OR 1=1 --",
        "\x00",
        "   ",
        "é!",
        "tomato & | ! :*",
        "a" * 200,
    ],
)
def test_hostile_queries_never_fail(api, user, q):
    session = session_create(owner=user, title="AND OR NOT")
    message_append(session=session, role="user", text="AND NEAR col tomato é")
    resp = api.get(URL, {"q": q})
    if "\x00" in q:
        assert resp.status_code in (200, 400)
    else:
        assert resp.status_code == 200, resp.content[:300]
        assert isinstance(resp.json()["results"], list)


def test_words_that_are_fts_operators_match_as_words(api, user):
    session = session_create(owner=user)
    hit = message_append(session=session, role="user", text="rock and roll or not")
    assert [r["message"]["id"] for r in _search(api, "AND roll")] == [hit.pk]
    assert [r["message"]["id"] for r in _search(api, "NOT")] in ([hit.pk], [])  # a stop word on PG


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "x" * 201},
        {"q": "x", "limit": "0"},
        {"q": "x", "limit": "51"},
        {"q": "x", "limit": "a"},
    ],
)
def test_bad_parameters_are_400_invalid_request(api, params):
    resp = api.get(URL, params)
    assert resp.status_code == 400, resp.content
    assert resp.json()["error"]["code"] == "invalid_request"


def test_needs_credentials():
    assert APIClient().get(URL, {"q": "x"}).status_code == 401


def test_limit_and_bounded_query_count(api, user):
    for i in range(8):
        session = session_create(owner=user, title=f"lemon chat {i}")
        for j in range(6):
            message_append(session=session, role="user", text=f"lemon message {i} {j}")
    api.get(URL, {"q": "lemon"})  # the key's first use records itself (one UPDATE)
    with CaptureQueriesContext(connection) as ctx:
        results = _search(api, "lemon", limit=30)
    assert len(results) == 30
    assert sum(r["message"] is None for r in results) == 5  # at most 5 title hits
    assert len(ctx.captured_queries) <= 4, [q["sql"][:120] for q in ctx.captured_queries]
    with CaptureQueriesContext(connection) as ctx:
        assert len(_search(api, "lemon", limit=3)) == 3
    assert len(ctx.captured_queries) <= 3
    assert len(_search(api, "lemon")) == 20  # the default limit


def test_selector_without_words_or_user_runs_no_query(user):
    with CaptureQueriesContext(connection) as ctx:
        assert message_search_for_user(user=user, query='"*"', limit=5) == []
    assert ctx.captured_queries == []


def test_snippet_parse_offsets_are_code_points():
    text, marks = snippet_parse("🍅 \x02tomato\x03 and \x02x")
    assert text == "🍅 tomato and x"
    assert marks == [[2, 8], [13, 14]]
    assert snippet_parse("\x03a\x02\x03b") == ("ab", [])
    assert snippet_parse("List\x01T> \x02x\x03") == ("List<T> x", [[8, 9]])  # PostgreSQL's "<" stand-in


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's FTS5 triggers")
def test_sqlite_triggers_a_table_rebuild_dropped_come_back_after_migrate(user):
    """Django alters a SQLite table by rebuilding it, which drops its triggers: the post_migrate
    receiver puts them back and re-indexes what was written meanwhile."""
    session = session_create(owner=user)
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER chat_message_fts_ai")
        cursor.execute("DROP TRIGGER chat_session_fts_au")
    message_append(session=session, role="user", text="orphaned marmalade")
    ChatSession.objects.filter(pk=session.pk).update(title="renamed quince")
    assert message_search_for_user(user=user, query="marmalade") == []
    search_index_ensure(using="default")
    assert [h["message"]["role"] for h in message_search_for_user(user=user, query="marmalade")] == ["user"]
    assert message_search_for_user(user=user, query="quince")[0]["message"] is None
    message_append(session=session, role="assistant", text="more marmalade")
    assert len(message_search_for_user(user=user, query="marmalade")) == 2
