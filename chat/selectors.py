"""Reads. Keyword-only functions named ``<entity>_<action>``; every session read is per owner."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from agents.approval import rules_parse
from agents.mcp_config import McpServerConfig
from chat.models import ChatMessage, ChatSession, McpServer


def _storable(text: str) -> bool:
    """Whether ``text`` could be stored at all (no chat id holds a NUL or a lone surrogate; the
    database would refuse to even compare them)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def session_get_for_user(*, user: Any, chat_id: str) -> ChatSession | None:
    """The caller's session for a chat id (the UUID or the client-chosen id), or None.

    Never reveals whether another user's session with that id exists.
    """
    if not getattr(user, "is_authenticated", False) or not chat_id or not _storable(chat_id):
        return None
    qs = ChatSession.objects.filter(owner=user)
    session = qs.filter(client_id=chat_id).first()
    if session is None:
        try:
            session = qs.filter(pk=uuid.UUID(str(chat_id))).first()
        except ValueError:
            return None
    return session


def session_list_for_user(
    *, user: Any, include_archived: bool = False, search: str = ""
) -> QuerySet[ChatSession]:
    qs = ChatSession.objects.filter(owner=user)
    if not include_archived:
        qs = qs.filter(archived=False)
    if search:
        qs = qs.filter(title__icontains=search)
    return qs.order_by("-last_activity_at", "-created_at")


def message_list(
    *, session: ChatSession, after: int | None = None, before: int | None = None, limit: int | None = None
) -> list[ChatMessage]:
    """Messages by sequence. With ``before`` (and no ``after``) the newest ``limit`` before it."""
    qs = ChatMessage.objects.filter(session=session)
    if after is not None:
        qs = qs.filter(sequence__gt=after)
    if before is not None:
        qs = qs.filter(sequence__lt=before)
    if before is not None and after is None and limit:
        return list(reversed(qs.order_by("-sequence")[:limit]))
    qs = qs.order_by("sequence")
    return list(qs[:limit] if limit else qs)


def message_last_sequence(*, session_id: Any) -> int:
    """The highest sequence in use, or -1 for an empty session."""
    # Plain SQL: on every message append (a turn's start), where compiling the ORM aggregate
    # cost several times what the indexed MAX costs to run.
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT MAX({q('sequence')}) FROM {q(ChatMessage._meta.db_table)} WHERE {q('session_id')} = %s",
            [ChatSession._meta.pk.get_db_prep_value(session_id, connection)],
        )
        top = cursor.fetchone()[0]
    return -1 if top is None else int(top)


# --- Operators (admin, management commands, charts) ----------------------------------------------
# Appended by the operators issue; everything below is read-only.

import datetime as _dt  # noqa: E402

from django.db.models import Count, Exists, OuterRef, Subquery, Sum  # noqa: E402
from django.db.models.functions import Coalesce, TruncDate  # noqa: E402

from chat.models import ChatTurn, RateLimitRecord, TokenUsage, ToolRule  # noqa: E402

TRAILING_SCAN_LIMIT = 200


def turn_running_queryset() -> QuerySet[ChatTurn]:
    return ChatTurn.objects.filter(status=ChatTurn.Status.RUNNING)


def session_has_running_turn_row(*, session_id: Any) -> bool:
    """A ChatTurn row of the session is still ``running`` in the database (any process): what the
    operators' tools (admin, commands) check before touching a session; a dead worker's turn keeps
    its row running until ``expire_stream_locks``. Whether a turn is *active* has one answer, the
    runtime's (the session's lease lock is held): ``chat.runtime.turn_is_active``."""
    return turn_running_queryset().filter(session_id=session_id).exists()


def session_list_for_admin() -> QuerySet[ChatSession]:
    """Every session, annotated for the admin list (one query, no N+1): ``message_count``,
    ``has_active_turn``, ``last_kind`` (kind of the newest message) and ``owner`` joined."""
    last_kind = ChatMessage.objects.filter(session=OuterRef("pk")).order_by("-sequence").values("kind")[:1]
    message_count = (
        ChatMessage.objects.filter(session=OuterRef("pk"))
        .order_by()
        .values("session")
        .annotate(c=Count("pk"))
        .values("c")[:1]
    )
    return ChatSession.objects.select_related("owner").annotate(
        message_count=Coalesce(Subquery(message_count), 0),
        has_active_turn=Exists(turn_running_queryset().filter(session=OuterRef("pk"))),
        last_kind=Subquery(last_kind),
    )


def message_trailing_error_markers(*, session_id: Any) -> list[ChatMessage]:
    """The error markers (kind error / retryable_error) among the markers at the very end of the
    session, newest first (DESIGN lesson 6). The scan walks back over every marker — a stopped
    or system marker does not end it: it stays, the error markers before it are trailing too —
    and stops at the first normal message: a marker followed by one is not trailing."""
    found: list[ChatMessage] = []
    # The end of the chat is the end of its active path (docs/api.md "Branches").
    sql, params = message_active_path_sql(session_id=session_id)
    for message in ChatMessage.objects.filter(session_id=session_id, pk__in=RawSQL(sql, params)).order_by(
        "-sequence"
    )[:TRAILING_SCAN_LIMIT]:
        if message.kind not in ChatMessage.MARKER_KINDS:
            break
        if message.kind in ChatMessage.ERROR_KINDS:
            found.append(message)
    return found


def session_ids_with_trailing_error_marker() -> list[Any]:
    """Sessions that end with markers: the candidates whose trailing error markers
    (``message_trailing_error_markers``) may be cleared."""
    last_kind = ChatMessage.objects.filter(session=OuterRef("pk")).order_by("-sequence").values("kind")[:1]
    return list(
        ChatSession.objects.annotate(last_kind=Subquery(last_kind))
        .filter(Q(last_kind__in=ChatMessage.MARKER_KINDS) | Q(active_leaf__kind__in=ChatMessage.MARKER_KINDS))
        .values_list("pk", flat=True)
    )


def _turn_lease_cutoff(*, lease_seconds: float, now: _dt.datetime | None) -> _dt.datetime:
    return (now or timezone.now()) - _dt.timedelta(seconds=lease_seconds)


def turn_list_stale(*, lease_seconds: float, now: _dt.datetime | None = None) -> list[ChatTurn]:
    """Running turns whose heartbeat (or start, before the first heartbeat) is older than the lease."""
    cutoff = _turn_lease_cutoff(lease_seconds=lease_seconds, now=now)
    return list(
        turn_running_queryset()
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
        .select_related("session")
        .order_by("started_at")
    )


def turn_live_count_for_user(*, user_id: Any, lease_seconds: float, now: _dt.datetime | None = None) -> int:
    """How many turns of the user's sessions run in any process: status running and heartbeat
    (or start, before the first heartbeat) within the lease — exactly the running turns that
    ``turn_list_stale`` does not call dead (the per-user concurrency cap, chat.runtime.start)."""
    cutoff = _turn_lease_cutoff(lease_seconds=lease_seconds, now=now)
    return (
        turn_running_queryset()
        .filter(session__owner_id=user_id)
        .filter(Q(heartbeat_at__gte=cutoff) | Q(heartbeat_at__isnull=True, started_at__gte=cutoff))
        .count()
    )


def usage_per_day(*, since: _dt.datetime) -> list[dict[str, Any]]:
    """``[{"day": date, "tokens": int, "weighted": int, "cost": Decimal}]`` per UTC day since ``since``."""
    return list(
        TokenUsage.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=_dt.UTC))
        .values("day")
        .annotate(
            input=Sum("input_tokens"),
            output=Sum("output_tokens"),
            cache_read=Sum("cache_read_tokens"),
            cache_write=Sum("cache_write_tokens"),
            weighted=Sum("weighted_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by("day")
    )


def usage_per_model(*, since: _dt.datetime) -> list[dict[str, Any]]:
    return list(
        TokenUsage.objects.filter(created_at__gte=since)
        .values("model")
        .annotate(weighted=Sum("weighted_tokens"), cost=Sum("cost_usd"), turns=Count("pk"))
        .order_by("-weighted", "model")
    )


def usage_top_users(*, since: _dt.datetime, limit: int = 10) -> list[dict[str, Any]]:
    return list(
        TokenUsage.objects.filter(created_at__gte=since)
        .values("user_id", "user__username")
        .annotate(weighted=Sum("weighted_tokens"), cost=Sum("cost_usd"), turns=Count("pk"))
        .order_by("-weighted", "user__username")[:limit]
    )


def rate_limit_active_queryset(*, now: _dt.datetime | None = None) -> QuerySet[RateLimitRecord]:
    return RateLimitRecord.objects.filter(resets_at__gt=now or timezone.now())


def message_sequence_floor(*, session_id: Any, last: int) -> int | None:
    """The smallest sequence among the newest ``last`` messages (None when there are fewer)."""
    return (
        ChatMessage.objects.filter(session_id=session_id)
        .order_by("-sequence")
        .values_list("sequence", flat=True)[last - 1 : last]
        .first()
    )


def turn_list_recent(*, session_id: Any, limit: int = 10) -> list[ChatTurn]:
    return list(ChatTurn.objects.filter(session_id=session_id).order_by("-started_at")[:limit])


def tool_rules_for_user(*, user_id: Any) -> dict[str, str]:
    """The operator's tool rules (``AGENT_TOOL_POLICY``) with the user's own (``ToolRule``, set in
    the admin) on top: tool name or ``prefix*`` -> ``allow`` | ``ask`` | ``deny``."""
    rules = rules_parse(settings.AGENT_TOOL_POLICY)
    rules.update(rules_parse(dict(ToolRule.objects.filter(user_id=user_id).values_list("tool", "decision"))))
    return rules


def mcp_server_list_enabled() -> QuerySet[McpServer]:
    """The MCP servers users may enable per chat (``GET /api/v1/mcp-servers/``), by name."""
    return McpServer.objects.filter(enabled=True).order_by("name")


def mcp_server_find_enabled(*, names: list[str]) -> tuple[list[McpServer], list[str]]:
    """(the enabled servers named in ``names``, the names that are unknown or disabled)."""
    found = {s.name: s for s in McpServer.objects.filter(enabled=True, name__in=set(names))}
    missing = [name for name in dict.fromkeys(names) if name not in found]
    return [found[name] for name in dict.fromkeys(names) if name in found], missing


def session_mcp_names(*, session: ChatSession) -> list[str]:
    """The names of the enabled MCP servers the chat enabled (uses a prefetch when there is one)."""
    return sorted(s.name for s in session.mcp_servers.all() if s.enabled)


def session_mcp_configs(*, session: ChatSession) -> list[McpServerConfig]:
    """What the chat's next turn connects to (``TurnInput.mcp_servers``): its enabled servers."""
    return [server.config() for server in session.mcp_servers.filter(enabled=True).order_by("name")]


# --- Full-text search (issue #19; chat.search holds the index maintenance) -----------------------
# Appended by the search issue: PostgreSQL tsvector/GIN or SQLite FTS5 behind one selector.

from django.contrib.postgres.search import (  # noqa: E402
    SearchHeadline,
    SearchQuery,
    SearchRank,
    SearchVector,
    SearchVectorField,
)
from django.db.models import F, Value  # noqa: E402
from django.db.models.functions import Replace  # noqa: E402

from chat.search import (  # noqa: E402
    LT_STANDIN,
    MARK_END,
    MARK_START,
    MESSAGE_VECTOR_COLUMN,
    SEARCH_CONFIG,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
    SEARCH_ROLES,
    SNIPPET_WORDS,
    TITLE_HITS_MAX,
    search_query_split,
    snippet_parse,
)


def message_search_for_user(
    *, user: Any, query: str, limit: int = SEARCH_LIMIT_DEFAULT
) -> list[dict[str, Any]]:
    """The caller's chats and messages matching ``query``, best first (chat.search: the
    rules and how each database answers).

    Each result: ``{"session": {id, title, archived}, "message": {id, sequence, role} | None,
    "snippet": str, "highlights": [[start, end], …]}`` (``message`` is None for a title hit).
    Two queries at most, whatever the number of results."""
    words = search_query_split(query)
    limit = max(1, min(int(limit), SEARCH_LIMIT_MAX))
    if not words or not getattr(user, "is_authenticated", False):
        return []
    if connection.vendor == "sqlite":
        return _search_sqlite(user_id=user.pk, words=words, limit=limit)
    return _search_postgresql(user=user, words=words, limit=limit)


def _hit(
    *,
    session_id: Any,
    title: str,
    archived: bool,
    marked: str,
    message: dict[str, Any] | None = None,
) -> dict[str, Any]:
    snippet, highlights = snippet_parse(marked or "")
    if isinstance(session_id, str):
        session_id = uuid.UUID(session_id)
    return {
        "session": {"id": session_id, "title": title, "archived": bool(archived)},
        "message": message,
        "snippet": snippet,
        "highlights": highlights,
    }


def _session_hits(rows: Any) -> list[dict[str, Any]]:
    """Hits from title rows ``(session id, title, archived, marked)`` (both engines)."""
    return [
        _hit(session_id=session_id, title=title, archived=archived, marked=marked)
        for session_id, title, archived, marked in rows
    ]


def _message_hits(rows: Any) -> list[dict[str, Any]]:
    """Hits from message rows ``(id, sequence, role, session id, title, archived, marked)``, the
    shape both engines' message queries return."""
    return [
        _hit(
            session_id=session_id,
            title=title,
            archived=archived,
            marked=marked,
            message={"id": message_id, "sequence": sequence, "role": role},
        )
        for message_id, sequence, role, session_id, title, archived, marked in rows
    ]


def _fts5_query(words: list[str]) -> str:
    # Each word a quoted string (FTS5 syntax has no way out of one but a doubled quote, and the
    # words hold no quotes); the last one a prefix.
    return " ".join(f'"{w}"' for w in words) + "*"


def _search_sqlite(*, user_id: int, words: list[str], limit: int) -> list[dict[str, Any]]:
    match = _fts5_query(words)
    hits: list[dict[str, Any]] = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.id, s.title, s.archived, highlight(chat_session_fts, 1, char(2), char(3)) "
            "FROM chat_session_fts JOIN chat_chatsession s ON s.id = chat_session_fts.session_id "
            "WHERE chat_session_fts MATCH %s AND s.owner_id = %s "
            "ORDER BY bm25(chat_session_fts), s.last_activity_at DESC LIMIT %s",
            [match, user_id, min(TITLE_HITS_MAX, limit)],
        )
        hits += _session_hits(cursor.fetchall())
        remaining = limit - len(hits)
        if remaining <= 0:
            return hits
        cursor.execute(
            "SELECT m.id, m.sequence, m.role, s.id, s.title, s.archived, "
            f"snippet(chat_message_fts, 0, char(2), char(3), '…', {SNIPPET_WORDS}) "
            "FROM chat_message_fts JOIN chat_chatmessage m ON m.id = chat_message_fts.rowid "
            "JOIN chat_chatsession s ON s.id = m.session_id "
            "WHERE chat_message_fts MATCH %s AND s.owner_id = %s AND m.kind = %s "
            "AND m.role IN (%s, %s) "
            "ORDER BY bm25(chat_message_fts), m.id DESC LIMIT %s",
            [match, user_id, ChatMessage.Kind.NORMAL, *SEARCH_ROLES, remaining],
        )
        hits += _message_hits(cursor.fetchall())
    return hits


# --- PostgreSQL ---------------------------------------------------------------------------------


def _tsquery(words: list[str]) -> SearchQuery:
    # Quoted lexemes (the words hold no quote, backslash or operator), all required, the last
    # one a prefix; the whole string is one bound parameter of to_tsquery.
    terms = [f"'{w}'" for w in words]
    terms[-1] += ":*"
    return SearchQuery(" & ".join(terms), config=SEARCH_CONFIG, search_type="raw")


def _headline(column: str, tsquery: SearchQuery, **options: Any) -> SearchHeadline:
    """``column`` with the query's words between MARK_START and MARK_END (its ``<`` swapped for
    LT_STANDIN first, so the marks are the only markup: ``chat.search.snippet_parse``)."""
    return SearchHeadline(
        Replace(column, Value("<"), Value(LT_STANDIN)),
        tsquery,
        config=SEARCH_CONFIG,
        start_sel=MARK_START,
        stop_sel=MARK_END,
        **options,
    )


def _search_postgresql(*, user: Any, words: list[str], limit: int) -> list[dict[str, Any]]:
    tsquery = _tsquery(words)
    title_vector = SearchVector("title", config=SEARCH_CONFIG)
    sessions = (
        ChatSession.objects.annotate(search=title_vector)
        .filter(owner=user, search=tsquery)
        .annotate(
            rank=SearchRank(title_vector, tsquery),
            marked=_headline("title", tsquery, highlight_all=True),
        )
        .order_by("-rank", "-last_activity_at")
        .values_list("id", "title", "archived", "marked")[: min(TITLE_HITS_MAX, limit)]
    )
    hits = _session_hits(sessions)
    remaining = limit - len(hits)
    if remaining <= 0:
        return hits
    # The stored generated column of migration 0007 (not a model field: SQLite has none).
    quote = connection.ops.quote_name
    text_vector = RawSQL(
        f"{quote(ChatMessage._meta.db_table)}.{quote(MESSAGE_VECTOR_COLUMN)}",
        [],
        output_field=SearchVectorField(),
    )
    messages = (
        ChatMessage.objects.annotate(search=text_vector)
        .filter(search=tsquery, session__owner=user, kind=ChatMessage.Kind.NORMAL, role__in=SEARCH_ROLES)
        .annotate(
            rank=SearchRank(text_vector, tsquery),
            marked=_headline(
                "text",
                tsquery,
                max_words=SNIPPET_WORDS + 4,
                min_words=SNIPPET_WORDS // 2,
                fragment_delimiter=" … ",
                max_fragments=1,
            ),
            session_title=F("session__title"),
            session_archived=F("session__archived"),
        )
        .order_by("-rank", "-id")
        .values_list("id", "sequence", "role", "session_id", "session_title", "session_archived", "marked")[
            :remaining
        ]
    )
    return hits + _message_hits(messages)


# --- Branches (issue #19, edit and branch; docs/api.md "Branches") -------------------------------
# A chat is a tree: each message names its ``parent``. The ACTIVE PATH is the walk up ``parent``
# from the chat's leaf. The leaf is ``ChatSession.active_leaf`` (null: the newest root message)
# followed down to its newest child (by sequence), again and again: a turn in progress hangs its
# messages below the stored leaf without writing the session row (the turn's end stores the new
# leaf, in the session write it makes anyway), and a worker that died mid-turn left them there.
# Plain SQL with recursive CTEs (SQLite and PostgreSQL alike): one round trip per question.

PATH_MAX_DEPTH = 1_000_000  # a guard against a cycle (none can be made through the services)


def _branch_tables() -> tuple[str, str]:
    q = connection.ops.quote_name
    return q(ChatMessage._meta.db_table), q(ChatSession._meta.db_table)


def _down_cte(seed: str) -> str:
    """``down(id, depth)``: the message the SQL expression ``seed`` selects, then its newest child
    (by sequence), and so on down to a leaf (the last row with an id)."""
    msg, _sess = _branch_tables()
    return (
        f"down(id, depth) AS (SELECT {seed}, 0"
        " UNION ALL"
        f" SELECT (SELECT c.id FROM {msg} c WHERE c.parent_id = down.id ORDER BY c.sequence DESC LIMIT 1),"
        " down.depth + 1 FROM down"
        f" WHERE down.id IS NOT NULL AND down.depth < {PATH_MAX_DEPTH})"
    )


DOWN_LEAF = "SELECT id FROM down WHERE id IS NOT NULL ORDER BY depth DESC LIMIT 1"


def _leaf_ctes() -> str:
    """``down`` (the stored leaf, then its newest child, …) and ``leaf`` (the last of them), for
    the session given twice as the first two parameters."""
    msg, sess = _branch_tables()
    seed = (
        f"COALESCE((SELECT s.active_leaf_id FROM {sess} s WHERE s.id = %s),"
        f" (SELECT r.id FROM {msg} r WHERE r.session_id = %s AND r.parent_id IS NULL"
        " ORDER BY r.sequence DESC LIMIT 1))"
    )
    return f"{_down_cte(seed)}, leaf(id) AS ({DOWN_LEAF})"


def _up_cte(start: str) -> str:
    """``up``: the message ``start`` (an SQL expression) and its ancestors, with ``depth``."""
    msg, _sess = _branch_tables()
    return (
        "up(id, parent_id, depth) AS ("
        f" SELECT m.id, m.parent_id, 0 FROM {msg} m WHERE m.id = {start}"
        " UNION ALL"
        f" SELECT m.id, m.parent_id, up.depth + 1 FROM {msg} m JOIN up ON m.id = up.parent_id"
        f" WHERE up.depth < {PATH_MAX_DEPTH})"
    )


def _session_param(session_id: Any) -> Any:
    return ChatSession._meta.pk.get_db_prep_value(session_id, connection)


def message_active_leaf_id(*, session_id: Any) -> int | None:
    """The pk of the chat's leaf (see above), or None for a chat without messages."""
    sid = _session_param(session_id)
    with connection.cursor() as cursor:
        cursor.execute(f"WITH RECURSIVE {_leaf_ctes()} SELECT id FROM leaf", [sid, sid])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def message_active_path_sql(*, session_id: Any) -> tuple[str, list[Any]]:
    """(SQL selecting the pks of the active path, its parameters): for ``pk__in=RawSQL(...)``."""
    sid = _session_param(session_id)
    return f"WITH RECURSIVE {_leaf_ctes()}, {_up_cte('(SELECT id FROM leaf)')} SELECT id FROM up", [sid, sid]


def message_path_sql(*, message_id: int) -> tuple[str, list[Any]]:
    """(SQL selecting the pks of ``message_id`` and its ancestors, its parameters)."""
    return f"WITH RECURSIVE {_up_cte('%s')} SELECT id FROM up", [int(message_id)]


def message_active_path_queryset(*, session: ChatSession) -> QuerySet[ChatMessage]:
    """The chat's active path (every kind and role), by sequence."""
    sql, params = message_active_path_sql(session_id=session.pk)
    return ChatMessage.objects.filter(session=session, pk__in=RawSQL(sql, params)).order_by("sequence")


def message_path_queryset(*, session: ChatSession, message_id: int) -> QuerySet[ChatMessage]:
    """``message_id`` and its ancestors (every kind and role), by sequence."""
    sql, params = message_path_sql(message_id=message_id)
    return ChatMessage.objects.filter(session=session, pk__in=RawSQL(sql, params)).order_by("sequence")


def message_active_path_keys(*, session: ChatSession) -> list[tuple[int, int]]:
    """``(pk, sequence)`` of the active path, by sequence (one query: the paging of
    ``GET …/messages/`` works on it)."""
    return list(message_active_path_queryset(session=session).values_list("pk", "sequence"))


def message_siblings(*, messages: list[ChatMessage]) -> dict[int, list[int]]:
    """pk -> the pks of the messages with the same parent and role (itself included), by
    sequence: the branches at each message (one query for any number of messages)."""
    if not messages:
        return {}
    session_id = messages[0].session_id
    parents = {m.parent_id for m in messages}
    cond = Q(parent_id__in=[p for p in parents if p is not None])
    if None in parents:
        cond |= Q(parent__isnull=True)
    groups: dict[tuple[Any, str], list[int]] = {}
    for pk, parent_id, role in (
        ChatMessage.objects.filter(cond, session_id=session_id)
        .order_by("sequence")
        .values_list("pk", "parent_id", "role")
    ):
        groups.setdefault((parent_id, role), []).append(pk)
    return {m.pk: groups.get((m.parent_id, m.role), [m.pk]) for m in messages}


def message_descend_leaf(*, message_id: int) -> int:
    """The leaf reached from ``message_id`` by taking the newest child (by sequence) at each
    step (what a branch switch stores)."""
    msg, _sess = _branch_tables()
    sql = f"WITH RECURSIVE {_down_cte(f'(SELECT m.id FROM {msg} m WHERE m.id = %s)')} {DOWN_LEAF}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [int(message_id)])
        row = cursor.fetchone()
    return int(row[0]) if row else int(message_id)


def message_get_in_session(*, session: ChatSession, ref: str) -> ChatMessage | None:
    """The message of ``session`` whose pk ``ref`` spells (ASCII digits), or None."""
    if not isinstance(ref, str) or not ref.isascii() or not ref.isdigit() or len(ref) > 18:
        return None
    return ChatMessage.objects.filter(session=session, pk=int(ref)).first()


def message_find_for_branch(*, session: ChatSession, ref: str, role: str | None = None) -> ChatMessage | None:
    """The message of ``session`` that ``ref`` names: its pk (digits), or its AI SDK id
    (``ChatMessage.ui_id``: a user message's client id, an edit's id, ``msg-<turn id>`` for a
    reply). Several messages share an AI SDK id across branches (an edit keeps the id of the
    message it edits): the one on the active path wins, else the newest. ``role``: only that."""
    if not isinstance(ref, str) or not ref or not _storable(ref):
        return None
    qs = ChatMessage.objects.filter(session=session)
    if role is not None:
        qs = qs.filter(role=role)
    found = message_get_in_session(session=session, ref=ref)
    if found is not None and (role is None or found.role == role):
        return found
    cond = Q(client_message_id=ref) | Q(metadata__messageId=ref)
    if ref.startswith("msg-"):
        try:
            cond |= Q(
                turn_id=uuid.UUID(ref[4:]), role=ChatMessage.Role.ASSISTANT, kind=ChatMessage.Kind.NORMAL
            )
        except ValueError:
            pass
    candidates = list(qs.filter(cond).order_by("-sequence")[:50])
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    on_path = set(
        message_active_path_queryset(session=session)
        .filter(pk__in=[c.pk for c in candidates])
        .values_list("pk", flat=True)
    )
    return next((c for c in candidates if c.pk in on_path), candidates[0])


def session_turn_leftovers(*, session_id: Any, exclude_turn_id: Any) -> tuple[int, int | None, str | None]:
    """What a new turn of the session starts from, in one plain-SQL read (chat.runtime.start;
    two ORM queries cost more to compile than to run): how many other turns of the session are
    still marked running (a dead worker's), and the pk and kind of the chat's leaf (the end of
    its active path: the message a new user message follows)."""
    q = connection.ops.quote_name
    msg, _sess = _branch_tables()
    turn_t = q(ChatTurn._meta.db_table)
    sql = (
        f"WITH RECURSIVE {_leaf_ctes()}"
        f" SELECT (SELECT COUNT(*) FROM {turn_t} WHERE {q('session_id')} = %s AND {q('status')} = %s"
        f" AND {q('id')} <> %s),"
        " (SELECT id FROM leaf),"
        f" (SELECT k.kind FROM {msg} k WHERE k.id = (SELECT id FROM leaf))"
    )
    sid = _session_param(session_id)
    turn_pk = ChatTurn._meta.pk.get_db_prep_value(exclude_turn_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [sid, sid, sid, ChatTurn.Status.RUNNING.value, turn_pk])
        dead, leaf_id, kind = cursor.fetchone()
    return int(dead or 0), None if leaf_id is None else int(leaf_id), kind
