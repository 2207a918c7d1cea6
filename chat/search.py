"""Full-text search over the caller's own chats (issue #19, docs/api.md "Search"): the query
words, the snippet markers, and the SQLite index's upkeep. The reads are in chat.selectors:
one selector, ``message_search_for_user``, with the same result shape on both databases:

* PostgreSQL: a ``to_tsquery`` built from the query's words matched against
  chat_chatmessage.search_vector (a stored generated column ``to_tsvector('english', text)``
  with a GIN index) and ``to_tsvector('english', title)`` (a GIN expression index), both of
  migration 0007 and always current whoever writes the row; ranked with ``ts_rank``, snippets
  from ``ts_headline``.
* SQLite: the FTS5 tables of migration 0007 (``chat_message_fts``: external content on
  chat_chatmessage; ``chat_session_fts``: chat titles), kept in sync by triggers, ranked with
  ``bm25``, snippets from ``snippet()`` / ``highlight()``.

The query is never SQL: it is cut into words (letters and digits), each passed as a quoted
term (FTS5) or quoted lexeme (tsquery) in a bound parameter; all words must match, the last
one as a prefix (search as you type). A query without words matches nothing.

Results: chats whose title matches first (at most ``TITLE_HITS_MAX``), then user and assistant
messages of kind ``normal``, best first; archived chats are included (flagged).
"""

from __future__ import annotations

import re
from typing import Any

from django.db import connections

from chat.models import ChatMessage

SEARCH_CONFIG = "english"  # the text search configuration of migration 0007's indexes
MESSAGE_VECTOR_COLUMN = "search_vector"  # PostgreSQL: chat_chatmessage's generated tsvector
SEARCH_LIMIT_DEFAULT = 20
SEARCH_LIMIT_MAX = 50
SEARCH_QUERY_MAX_LENGTH = 200
SEARCH_WORDS_MAX = 16
TITLE_HITS_MAX = 5
SNIPPET_WORDS = 16  # words around the match in a message snippet
MARK_START = "\x02"  # highlight markers in the database's snippet, turned into offsets here
MARK_END = "\x03"
# PostgreSQL's parser takes ``<name …>`` for an HTML tag, which ts_headline drops: the selector
# hands it the text with "<" swapped for this stand-in, swapped back by ``snippet_parse``.
LT_STANDIN = "\x01"
SEARCH_ROLES = (ChatMessage.Role.USER, ChatMessage.Role.ASSISTANT)

# SQLite: the triggers of migration 0007 (re-created by ``search_index_ensure`` when a table
# rebuild dropped them).
SQLITE_TRIGGERS = {
    "chat_message_fts_ai": "CREATE TRIGGER IF NOT EXISTS chat_message_fts_ai AFTER INSERT ON "
    "chat_chatmessage BEGIN INSERT INTO chat_message_fts(rowid, text) VALUES (new.id, new.text); END",
    "chat_message_fts_ad": "CREATE TRIGGER IF NOT EXISTS chat_message_fts_ad AFTER DELETE ON "
    "chat_chatmessage BEGIN INSERT INTO chat_message_fts(chat_message_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
    "chat_message_fts_au": "CREATE TRIGGER IF NOT EXISTS chat_message_fts_au AFTER UPDATE OF text ON "
    "chat_chatmessage BEGIN INSERT INTO chat_message_fts(chat_message_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); INSERT INTO chat_message_fts(rowid, text) "
    "VALUES (new.id, new.text); END",
    "chat_session_fts_ai": "CREATE TRIGGER IF NOT EXISTS chat_session_fts_ai AFTER INSERT ON "
    "chat_chatsession BEGIN INSERT INTO chat_session_fts(session_id, title) "
    "VALUES (new.id, new.title); END",
    "chat_session_fts_ad": "CREATE TRIGGER IF NOT EXISTS chat_session_fts_ad AFTER DELETE ON "
    "chat_chatsession BEGIN DELETE FROM chat_session_fts WHERE session_id = old.id; END",
    "chat_session_fts_au": "CREATE TRIGGER IF NOT EXISTS chat_session_fts_au AFTER UPDATE OF title ON "
    "chat_chatsession BEGIN DELETE FROM chat_session_fts WHERE session_id = old.id; "
    "INSERT INTO chat_session_fts(session_id, title) VALUES (new.id, new.title); END",
}

_WORD = re.compile(r"[^\W_]+")


def search_query_split(query: str) -> list[str]:
    """The words of a query (letters and digits only: nothing else reaches the database)."""
    return _WORD.findall(query)[:SEARCH_WORDS_MAX]


def snippet_parse(marked: str) -> tuple[str, list[list[int]]]:
    """A snippet with MARK_START/MARK_END markers -> (plain text, ``[start, end)`` offsets in
    code points). Stray markers are dropped; an unclosed highlight ends with the text."""
    marked = marked.replace(LT_STANDIN, "<")
    out: list[str] = []
    highlights: list[list[int]] = []
    length = 0
    start: int | None = None
    for piece in re.split(f"([{MARK_START}{MARK_END}])", marked):
        if piece == MARK_START:
            start = length if start is None else start
        elif piece == MARK_END:
            if start is not None and length > start:
                highlights.append([start, length])
            start = None
        else:
            out.append(piece)
            length += len(piece)
    if start is not None and length > start:
        highlights.append([start, length])
    return "".join(out), highlights


def search_index_ensure(*, using: str = "default", **kwargs: Any) -> None:
    """SQLite: re-create the search triggers a table rebuild dropped (Django remakes a table to
    alter it, and SQLite drops the old table's triggers) and rebuild the index they missed.
    A ``post_migrate`` receiver; nothing to do on PostgreSQL (expression indexes)."""
    conn = connections[using]
    if conn.vendor != "sqlite":
        return
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name IN "
            "('chat_chatmessage', 'chat_chatsession', 'chat_message_fts', 'chat_session_fts')"
        )
        present = {name for (name,) in cursor.fetchall()}
        if not {"chat_message_fts", "chat_session_fts"} <= present:
            return  # before migration 0007 (or after unapplying it)
        missing = [name for name in SQLITE_TRIGGERS if name not in present]
        if not missing:
            return
        for name in missing:
            cursor.execute(SQLITE_TRIGGERS[name])
        cursor.execute("INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')")
        cursor.execute("DELETE FROM chat_session_fts")
        cursor.execute(
            "INSERT INTO chat_session_fts(session_id, title) SELECT id, title FROM chat_chatsession"
        )
