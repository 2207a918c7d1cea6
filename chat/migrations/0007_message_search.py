# Full-text search over messages and chat titles (issue #19, docs/api.md "Search").
#
# PostgreSQL: chat_chatmessage.search_vector, a stored generated column
# to_tsvector('english', text) with a GIN index (outside the model state: chat.selectors reads it
# by name), and a GIN expression index on the title, the expression chat.selectors builds with
# SearchVector("title", config="english"). Both are always current, whoever writes the row (the
# turn's writer updates its assistant message with .update()).
# SQLite: FTS5 tables kept in sync by triggers: chat_message_fts (external content on
# chat_chatmessage, rowid = id) and chat_session_fts (session_id, title). Nothing here changes the
# model state. chat.search re-creates the triggers after a migration that rebuilt a table
# (SQLite drops a table's triggers when Django remakes it).

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import migrations

SEARCH_CONFIG = "english"

SQLITE_CREATE = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS chat_message_fts USING fts5("
    "text, content='chat_chatmessage', content_rowid='id', tokenize='porter unicode61')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS chat_session_fts USING fts5("
    "session_id UNINDEXED, title, tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS chat_message_fts_ai AFTER INSERT ON chat_chatmessage BEGIN "
    "INSERT INTO chat_message_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS chat_message_fts_ad AFTER DELETE ON chat_chatmessage BEGIN "
    "INSERT INTO chat_message_fts(chat_message_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS chat_message_fts_au AFTER UPDATE OF text ON chat_chatmessage BEGIN "
    "INSERT INTO chat_message_fts(chat_message_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO chat_message_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS chat_session_fts_ai AFTER INSERT ON chat_chatsession BEGIN "
    "INSERT INTO chat_session_fts(session_id, title) VALUES (new.id, new.title); END",
    "CREATE TRIGGER IF NOT EXISTS chat_session_fts_ad AFTER DELETE ON chat_chatsession BEGIN "
    "DELETE FROM chat_session_fts WHERE session_id = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS chat_session_fts_au AFTER UPDATE OF title ON chat_chatsession BEGIN "
    "DELETE FROM chat_session_fts WHERE session_id = old.id; "
    "INSERT INTO chat_session_fts(session_id, title) VALUES (new.id, new.title); END",
    "INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')",
    "DELETE FROM chat_session_fts",
    "INSERT INTO chat_session_fts(session_id, title) SELECT id, title FROM chat_chatsession",
]

SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS chat_message_fts_ai",
    "DROP TRIGGER IF EXISTS chat_message_fts_ad",
    "DROP TRIGGER IF EXISTS chat_message_fts_au",
    "DROP TRIGGER IF EXISTS chat_session_fts_ai",
    "DROP TRIGGER IF EXISTS chat_session_fts_ad",
    "DROP TRIGGER IF EXISTS chat_session_fts_au",
    "DROP TABLE IF EXISTS chat_message_fts",
    "DROP TABLE IF EXISTS chat_session_fts",
]


# Messages: a stored generated tsvector column (ranking reads it instead of parsing every
# matching row's text again) with a GIN index; PostgreSQL keeps it current on every write.
POSTGRES_CREATE = [
    "ALTER TABLE chat_chatmessage ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
    f"(to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(text, ''))) STORED",
    "CREATE INDEX chat_message_search_vector ON chat_chatmessage USING gin (search_vector)",
]
POSTGRES_DROP = [
    "DROP INDEX IF EXISTS chat_message_search_vector",
    "ALTER TABLE chat_chatmessage DROP COLUMN IF EXISTS search_vector",
]


def title_index(apps):
    # Titles: an expression index (short texts: ranking them from the text costs little).
    session = apps.get_model("chat", "ChatSession")
    return session, GinIndex(SearchVector("title", config=SEARCH_CONFIG), name="chat_session_title_search")


def search_create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in POSTGRES_CREATE:
            schema_editor.execute(statement, params=None)
        schema_editor.add_index(*title_index(apps))
    elif vendor == "sqlite":
        for statement in SQLITE_CREATE:
            schema_editor.execute(statement, params=None)


def search_drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.remove_index(*title_index(apps))
        for statement in POSTGRES_DROP:
            schema_editor.execute(statement, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_mcp_servers"),
    ]

    operations = [
        migrations.RunPython(search_create, search_drop, elidable=False),
    ]
