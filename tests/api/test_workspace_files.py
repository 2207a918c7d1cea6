"""Workspace files over HTTP (issue #18; CONTRACT §6 "Workspace files"; docs/api.md,
docs/security.md §3 "Workspace files over HTTP").

``GET /api/v1/sessions/<id>/files/`` lists, ``GET …/files/<path>`` downloads, ``PUT`` of the same
path uploads, ``GET …/files.zip`` zips the whole workspace. Every route and every refusal: the
owner check (a foreign or unknown chat is 404), path traversal in every spelling (400
``invalid_request``), symbolic links anywhere in the path (inside or leaving the workspace, also
when one is swapped in between the check and the open), FIFOs, sockets and devices (refused
without blocking), the upload limit, the quota, the ZIP's bounds, and the content types and
headers that keep a file from ever running as a page of the app's origin. The last tests go
through a real daphne: a large file streams, an upload arrives while a turn runs, and the agent's
jailed Bash reads and changes an uploaded file.
"""

from __future__ import annotations

import hashlib
import http.client as http_client
import io
import json
import os
import socket
import stat
import threading
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from agents import workspace_files
from agents.jail import drops_privileges, jail_uid
from agents.sandbox import workspace_for, workspace_locate
from agents.workspace_files import WorkspaceFileError, workspace_file_open, workspace_file_write
from chat.api.views.files import WorkspaceFileResponse, WorkspaceZipResponse
from chat.apikeys import api_key_create
from chat.models import ChatTurn
from chat.services import session_create
from tests.agents.conftest import text_of
from tests.api.conftest import chat_body

pytestmark = pytest.mark.django_db

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
    "c0f01f0005000201ff8d2b6f3d0000000049454e44ae426082"
)
MB = 1024 * 1024


@pytest.fixture
def root(settings, tmp_path) -> Path:
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    return settings.AGENT_WORKSPACE_ROOT


@pytest.fixture
def chat(user, root):
    return session_create(owner=user, client_id="files-chat", title="files")


@pytest.fixture
def ws(chat) -> Path:
    return workspace_for(str(chat.pk))


def url(chat, path: str = "") -> str:
    return f"/api/v1/sessions/{chat.pk}/files/{path}"


def put(api, chat, path: str, data: bytes):
    return api.put(url(chat, path), data=data, content_type="application/octet-stream")


def body(response) -> bytes:
    """A streamed body (the test client closes the response once it is consumed)."""
    return b"".join(response.streaming_content)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def temp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob(f"{workspace_files.UPLOAD_PREFIX}*")]


# --- list, download, upload ---------------------------------------------------------------------


def test_a_chat_without_a_workspace_lists_empty_and_zips_empty(api, chat):
    assert not workspace_locate(str(chat.pk)).exists()
    response = api.get(url(chat))
    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": [], "truncated": False}
    assert api.get(url(chat, "anything.txt")).status_code == 404
    response = api.get(f"/api/v1/sessions/{chat.pk}/files.zip")
    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(body(response))).namelist() == []
    assert not workspace_locate(str(chat.pk)).exists(), "looking must not create the workspace"


def test_upload_list_download_roundtrip(api, chat):
    response = put(api, chat, "report/data.csv", b"a,b\n1,2\n")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["path"] == "report/data.csv" and created["size"] == 8
    assert created["modified"].endswith("Z")
    replaced = put(api, chat, "report/data.csv", b"a,b\n3,4\n5,6\n")
    assert replaced.status_code == 200 and replaced.json()["size"] == 12
    assert put(api, chat, "README", b"read me\n").status_code == 201
    assert put(api, chat, "empty.txt", b"").status_code == 201

    listing = api.get(url(chat)).json()
    assert [f["path"] for f in listing["results"]] == ["README", "empty.txt", "report/data.csv"]
    assert {f["path"]: f["size"] for f in listing["results"]}["report/data.csv"] == 12
    assert listing["count"] == 3 and listing["truncated"] is False

    response = api.get(url(chat, "report/data.csv"))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Length"] == "12"
    assert response["Content-Disposition"] == "attachment; filename=\"data.csv\"; filename*=UTF-8''data.csv"
    assert body(response) == b"a,b\n3,4\n5,6\n"
    # The chat's client id works as well as its UUID (like every session route).
    assert body(api.get(f"/api/v1/sessions/{chat.client_id}/files/README")) == b"read me\n"


def test_list_is_paginated_and_can_leave_out_hidden_files(api, chat, ws):
    for name in ("b.txt", "a.txt", ".env", "c/d.txt", ".git/config"):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(name)
    everything = api.get(url(chat)).json()
    assert [f["path"] for f in everything["results"]] == [".env", ".git/config", "a.txt", "b.txt", "c/d.txt"]
    page = api.get(url(chat) + "?page_size=2&hidden=false").json()
    assert page["count"] == 3 and [f["path"] for f in page["results"]] == ["a.txt", "b.txt"]
    assert page["next"] and "page=2" in page["next"] and page["previous"] is None
    second = api.get(page["next"]).json()
    assert [f["path"] for f in second["results"]] == ["c/d.txt"] and second["next"] is None
    past = api.get(url(chat) + "?page=9")
    assert past.status_code == 404 and error_code(past) == "not_found"
    for bad in ("page=0", "page=x", "page_size=100000", "hidden=maybe"):
        response = api.get(f"{url(chat)}?{bad}")
        assert response.status_code == 400 and error_code(response) == "invalid_request", bad


def test_list_is_bounded_and_says_when_truncated(api, chat, ws, settings):
    settings.AGENT_WORKSPACE_FILES_MAX = 5
    for i in range(12):
        (ws / f"f{i:02}.txt").write_text("x")
    listing = api.get(url(chat)).json()
    assert listing["truncated"] is True and listing["count"] <= 5
    zipped = api.get(f"/api/v1/sessions/{chat.pk}/files.zip")
    assert zipped.status_code == 413 and error_code(zipped) == "workspace_too_large"
    assert "more than 5 entries" in zipped.json()["error"]["message"]


def test_names_no_route_can_address_are_not_listed(api, chat, ws):
    (ws / "ok.txt").write_text("ok")
    os.close(os.open(os.path.join(os.fsencode(ws), b"latin1-\xe9.txt"), os.O_CREAT | os.O_WRONLY, 0o644))
    (ws / "back\\slash.txt").write_text("x")
    (ws / "line\nbreak.txt").write_text("x")
    response = api.get(url(chat))
    assert response.status_code == 200
    assert [f["path"] for f in response.json()["results"]] == ["ok.txt"]


def test_uploaded_files_belong_to_the_workspace_jail_user(api, chat, root):
    assert put(api, chat, "deep/er/note.txt", b"for the agent").status_code == 201
    ws = workspace_locate(str(chat.pk))
    paths = [ws / "deep", ws / "deep/er", ws / "deep/er/note.txt"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {"deep": 0o755, "er": 0o755, "note.txt": 0o644}
    if drops_privileges():  # the server runs as root: jailed tools run as the workspace's uid
        uid = jail_uid(ws)
        assert {(p.stat().st_uid, p.stat().st_gid) for p in paths} == {(uid, uid)}
    assert temp_leftovers(ws) == []


# --- ownership --------------------------------------------------------------------------------


def test_another_users_chat_is_a_404_like_a_missing_one(api, chat, ws, other_user, client_for):
    (ws / "secret.txt").write_text("alice's secret")
    bob = client_for(other_user)
    bobs_chat = session_create(owner=other_user, client_id="bobs", title="bob")
    for method, suffix in (
        ("get", "files/"),
        ("get", "files/secret.txt"),
        ("put", "files/secret.txt"),
        ("put", "files/new.txt"),
        ("get", "files.zip"),
    ):
        answers = []
        for ident in (chat.pk, chat.client_id, uuid.uuid4(), "missing"):
            kwargs = {"data": b"pwned", "content_type": "application/octet-stream"} if method == "put" else {}
            response = getattr(bob, method)(f"/api/v1/sessions/{ident}/{suffix}", **kwargs)
            answers.append((response.status_code, response.content))
        assert all(a == answers[0] for a in answers), (method, suffix, answers)
        assert answers[0][0] == 404 and b"secret" not in answers[0][1]
    assert (ws / "secret.txt").read_text() == "alice's secret"
    assert not (ws / "new.txt").exists()
    assert not workspace_locate(str(bobs_chat.pk)).exists()
    # Without credentials: 401, never the file.
    from rest_framework.test import APIClient

    anonymous = APIClient().get(url(chat, "secret.txt"))
    assert anonymous.status_code == 401 and b"secret" not in anonymous.content


# --- paths --------------------------------------------------------------------------------------

TRAVERSALS = [
    "../outside.txt",
    "a/../../outside.txt",
    "%2e%2e/outside.txt",
    "%2E%2E%2Foutside.txt",
    "sub/%2e%2e/%2e%2e/outside.txt",
    "./x.txt",
    "%2e/x.txt",
    "..",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "a//b.txt",
    "dir/",
    "a%00b.txt",
    "a\\..\\outside.txt",
    "a%5C..%5Coutside.txt",
    "line%0Abreak.txt",
    "tab%09.txt",
    "x" * 256,
    "/".join(["d"] * 70) + "/f.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_malformed_paths_are_400(api, chat, ws, path):
    outside = ws.parent / "outside.txt"
    for method in ("get", "put"):
        kwargs = {"data": b"escaped", "content_type": "application/octet-stream"} if method == "put" else {}
        response = getattr(api, method)(url(chat, path), **kwargs)
        assert response.status_code == 400, (method, path, response.status_code, response.content[:200])
        assert error_code(response) == "invalid_request"
        assert response.json()["error"]["message"]
    assert not outside.exists()
    assert temp_leftovers(ws.parent) == []


def test_path_parser_refuses_every_escape():
    for text in (
        "",
        "/abs",
        "a/../b",
        "..",
        ".",
        "a/./b",
        "a//b",
        "a\\b",
        "a\x00b",
        "a\x1fb",
        "a\x7fb",
        "\udcff",
    ):
        with pytest.raises(WorkspaceFileError) as info:
            workspace_files.workspace_path_parse(text)
        assert info.value.kind == "invalid", text
    assert workspace_files.workspace_path_parse("..hidden/.x/a b/ü.txt") == ("..hidden", ".x", "a b", "ü.txt")


# --- symbolic links and special files -----------------------------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "host-secret.txt").write_text("host secret")
    return directory


def test_symlinks_anywhere_in_the_path_are_refused(api, chat, ws, outside):
    (ws / "real").mkdir()
    (ws / "real" / "inside.txt").write_text("inside")
    (ws / "escape").symlink_to(outside)  # a directory link leaving the workspace
    (ws / "secret-link").symlink_to(outside / "host-secret.txt")  # a file link leaving it
    (ws / "alias").symlink_to(ws / "real")  # a link that stays inside is refused too
    (ws / "inner-link.txt").symlink_to("real/inside.txt")
    (ws / "passwd").symlink_to("/etc/passwd")
    for path in ("escape/host-secret.txt", "secret-link", "alias/inside.txt", "inner-link.txt", "passwd"):
        response = api.get(url(chat, path))
        assert response.status_code == 400, (path, response.status_code)
        assert error_code(response) == "invalid_request"
        assert "symbolic link" in response.json()["error"]["message"]
        assert b"host secret" not in response.content and b"root:" not in response.content
    for path in ("escape/planted.txt", "escape/new-dir/planted.txt", "secret-link", "alias/x.txt"):
        response = put(api, chat, path, b"planted")
        assert response.status_code == 400, (path, response.status_code)
        assert "symbolic link" in response.json()["error"]["message"]
    assert sorted(p.name for p in outside.iterdir()) == ["host-secret.txt"]
    assert (outside / "host-secret.txt").read_text() == "host secret"
    assert not (ws / "real" / "x.txt").exists()
    # Links are not listed (neither is what they point at), nor zipped.
    assert [f["path"] for f in api.get(url(chat)).json()["results"]] == ["real/inside.txt"]
    archive = zipfile.ZipFile(io.BytesIO(body(api.get(f"/api/v1/sessions/{chat.pk}/files.zip"))))
    assert [n for n in archive.namelist() if not n.startswith(("home/", "tmp/"))] == ["real/inside.txt"]


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the request blocked"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.django_db(transaction=True)  # the requests run in a watchdog thread (own connection)
def test_fifos_sockets_and_devices_are_refused_without_blocking(api, chat, ws, monkeypatch):
    os.mkfifo(ws / "pipe")
    server = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(ws)  # a socket's path must be short: bind it relative to the workspace
    server.bind("sock")
    specials = ["pipe", "sock"]
    try:
        os.mknod(ws / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        specials.append("null")
    except PermissionError:
        pass  # not root (or no CAP_MKNOD): FIFOs and sockets still cover the rule
    try:
        for name in specials:
            response = _in_thread(lambda n=name: api.get(url(chat, n)))
            assert response.status_code == 400 and error_code(response) == "invalid_request", name
            response = _in_thread(lambda n=name: put(api, chat, n, b"x"))
            assert response.status_code == 400 and error_code(response) == "invalid_request", name
        assert api.get(url(chat)).json()["results"] == []
        zipped = _in_thread(lambda: body(api.get(f"/api/v1/sessions/{chat.pk}/files.zip")))
        assert [n for n in zipfile.ZipFile(io.BytesIO(zipped)).namelist() if not n.startswith("home/")] == []
        assert stat.S_ISFIFO((ws / "pipe").lstat().st_mode)  # not replaced by the refused upload
    finally:
        server.close()


def _lying_stat(monkeypatch, target: str, regular: os.stat_result):
    """``os.stat(target, dir_fd=…)`` pretends ``target`` is a regular file: the agent swapped it
    between our look at the name and our open. Only the opened descriptor can tell."""
    real = os.stat

    def fake(path, *args, dir_fd=None, follow_symlinks=True):
        if dir_fd is not None and path == target:
            return regular
        return real(path, *args, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "stat", fake)


def test_a_fifo_swapped_in_after_the_check_is_refused_by_the_descriptor(ws, monkeypatch):
    (ws / "plain.txt").write_text("plain")
    os.mkfifo(ws / "swapped")
    _lying_stat(monkeypatch, "swapped", os.lstat(ws / "plain.txt"))
    with pytest.raises(WorkspaceFileError) as info:
        _in_thread(lambda: workspace_file_open(ws, ("swapped",)))  # O_NONBLOCK: no writer needed
    assert info.value.kind == "unsupported" and "FIFO" in info.value.message


def test_a_symlink_swapped_in_after_the_check_is_not_followed(ws, outside, monkeypatch):
    (ws / "plain.txt").write_text("plain")
    (ws / "swapped").symlink_to(outside / "host-secret.txt")
    _lying_stat(monkeypatch, "swapped", os.lstat(ws / "plain.txt"))
    with pytest.raises(WorkspaceFileError) as info:
        workspace_file_open(ws, ("swapped",))
    assert info.value.kind == "unsupported"


@pytest.mark.skipif(not drops_privileges(), reason="only a root server hands workspace entries over")
def test_preparing_a_workspace_never_follows_the_agents_links(api, chat, ws, outside):
    """The agent may replace home/.claude or tmp/ with a link to any host path; preparing the
    workspace (every turn's start, every upload) used to chown through it."""
    (ws / "home" / ".claude").symlink_to(outside)
    (ws / "tmp").rmdir()
    (ws / "tmp").symlink_to(outside)
    assert put(api, chat, "after.txt", b"x").status_code == 201
    assert (outside.stat().st_uid, (outside / "host-secret.txt").stat().st_uid) == (0, 0)
    assert (ws / "after.txt").stat().st_uid == jail_uid(ws)


def test_a_workspace_the_agent_broke_is_a_409_not_a_500(api, chat, ws):
    (ws / "tmp").rmdir()
    (ws / "tmp").write_text("not a directory any more")
    response = put(api, chat, "x.txt", b"x")
    assert response.status_code == 409 and error_code(response) == "workspace_unavailable"
    assert [f["path"] for f in api.get(url(chat)).json()["results"]] == ["tmp"]  # still listed


def test_directories_and_files_in_the_way(api, chat, ws):
    (ws / "folder").mkdir()
    (ws / "file.txt").write_text("f")
    for response in (api.get(url(chat, "folder")), put(api, chat, "folder", b"x")):
        assert response.status_code == 400 and "directory" in response.json()["error"]["message"]
    for response in (api.get(url(chat, "file.txt/x")), put(api, chat, "file.txt/x", b"x")):
        assert response.status_code == 400 and "not a directory" in response.json()["error"]["message"]
    assert api.get(url(chat, "missing/x.txt")).status_code == 404
    assert (ws / "file.txt").read_text() == "f" and (ws / "folder").is_dir()


# --- limits -------------------------------------------------------------------------------------


def test_upload_over_the_limit_is_413_and_leaves_nothing(api, chat, ws, settings):
    settings.AGENT_UPLOAD_MAX_MB = 1
    response = put(api, chat, "big.bin", b"x" * (MB + 1))
    assert response.status_code == 413 and error_code(response) == "request_too_large"
    assert "1 MB" in response.json()["error"]["message"]
    assert not (ws / "big.bin").exists() and temp_leftovers(ws) == []
    assert put(api, chat, "fits.bin", b"x" * MB).status_code == 201
    # A body longer than announced (or without a length) is counted as it arrives.
    with pytest.raises(WorkspaceFileError) as info:
        workspace_file_write(ws, ("sneaky.bin",), iter([b"x" * MB, b"x"]), max_bytes=MB, quota_bytes=100 * MB)
    assert info.value.kind == "too_large"
    assert not (ws / "sneaky.bin").exists() and temp_leftovers(ws) == []


def test_upload_over_the_quota_is_413_and_replacing_frees_the_old_size(api, chat, ws, settings):
    settings.AGENT_WORKSPACE_QUOTA_MB = 1
    assert put(api, chat, "first.bin", os.urandom(600 * 1024)).status_code == 201
    response = put(api, chat, "second.bin", os.urandom(600 * 1024))
    assert response.status_code == 413 and error_code(response) == "quota_exceeded"
    assert "quota of 1 MB" in response.json()["error"]["message"]
    assert not (ws / "second.bin").exists() and temp_leftovers(ws) == []
    # Replacing a file counts the space it gives back.
    assert put(api, chat, "first.bin", os.urandom(700 * 1024)).status_code == 200
    # Counted while writing too (no Content-Length to go by).
    with pytest.raises(WorkspaceFileError) as info:
        workspace_file_write(
            ws, ("stream.bin",), iter([b"y" * 200 * 1024] * 3), max_bytes=10 * MB, quota_bytes=MB
        )
    assert info.value.kind == "quota" and temp_leftovers(ws) == []


def test_zip_over_the_size_bound_is_413(api, chat, ws, settings):
    settings.AGENT_WORKSPACE_QUOTA_MB = 1
    with open(ws / "sparse.bin", "wb") as f:  # takes no space, but would be 2 MB in the archive
        f.truncate(2 * MB)
    response = api.get(f"/api/v1/sessions/{chat.pk}/files.zip")
    assert response.status_code == 413 and error_code(response) == "workspace_too_large"
    assert "more than the 1 MB" in response.json()["error"]["message"]


def test_zip_holds_every_regular_file(api, chat, ws):
    files = {"a.txt": b"alpha\n", "dir/sub/b.json": b'{"b": 1}', ".hidden": b"h", "pic.png": PNG}
    for name, data in files.items():
        assert put(api, chat, name, data).status_code == 201
    (ws / "link").symlink_to(ws / "a.txt")
    response = api.get(f"/api/v1/sessions/{chat.pk}/files.zip")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith(f'attachment; filename="chat-{chat.pk}.zip"')
    assert response["X-Content-Type-Options"] == "nosniff"
    archive = zipfile.ZipFile(io.BytesIO(body(response)))
    assert archive.testzip() is None
    got = {n: archive.read(n) for n in archive.namelist() if not n.startswith(("home/", "tmp/"))}
    assert got == files
    assert archive.getinfo("pic.png").compress_type == zipfile.ZIP_STORED
    assert archive.getinfo("a.txt").compress_type == zipfile.ZIP_DEFLATED


# --- types and headers --------------------------------------------------------------------------

# name, content, the download's type, the preview's type (None: no preview, 400)
TYPES = [
    (
        "page.html",
        b"<script>alert(document.cookie)</script>",
        "application/octet-stream",
        "text/plain; charset=utf-8",
    ),
    (
        "pic.svg",
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "application/octet-stream",
        "text/plain; charset=utf-8",
    ),
    ("feed.xml", b"<?xml version='1.0'?><x/>", "application/octet-stream", "text/plain; charset=utf-8"),
    ("app.js", b"alert(1)", "application/octet-stream", "text/plain; charset=utf-8"),
    (
        "page.xhtml",
        b"<html xmlns='http://www.w3.org/1999/xhtml'/>",
        "application/octet-stream",
        "text/plain; charset=utf-8",
    ),
    ("notes.txt", b"plain text\n", "text/plain", "text/plain; charset=utf-8"),
    ("data.json", b'{"a": 1}', "application/json", "text/plain; charset=utf-8"),
    ("Makefile", b"all:\n\techo hi\n", "application/octet-stream", "text/plain; charset=utf-8"),
    ("pic.png", PNG, "image/png", "image/png"),
    ("photo.jpeg", b"\xff\xd8\xff\xe0fake", "image/jpeg", "image/jpeg"),
    ("anim.gif", b"GIF89a", "image/gif", "image/gif"),
    ("img.webp", b"RIFF\x00\x00\x00\x00WEBP", "image/webp", "image/webp"),
    ("doc.pdf", b"%PDF-1.4", "application/pdf", None),
    ("blob.bin", b"\x00\x01\x02binary", "application/octet-stream", None),
    ("no-extension", b"\x00binary", "application/octet-stream", None),
    ("archive.tar.gz", b"\x1f\x8b", "application/gzip", None),
]


@pytest.mark.parametrize(("name", "content", "download_type", "preview_type"), TYPES)
def test_content_types_are_safe(api, chat, name, content, download_type, preview_type):
    assert put(api, chat, name, content).status_code == 201
    response = api.get(url(chat, name))
    assert response.status_code == 200
    assert response["Content-Type"] == download_type
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox"
    assert body(response) == content
    preview = api.get(url(chat, name) + "?inline=1")
    if preview_type is None:
        assert preview.status_code == 400 and error_code(preview) == "invalid_request"
        assert "cannot be previewed" in preview.json()["error"]["message"]
        return
    assert preview.status_code == 200
    assert preview["Content-Type"] == preview_type
    assert preview["Content-Disposition"].startswith("inline;")
    assert preview["X-Content-Type-Options"] == "nosniff"
    assert preview["Content-Security-Policy"] == "sandbox"
    assert body(preview) == content


def test_no_response_is_ever_html_or_script(api, chat):
    for name, content, *_ in TYPES:
        put(api, chat, name, content)
    for name, *_ in TYPES:
        for query in ("", "?inline=1", "?inline=true"):
            response = api.get(url(chat, name) + query)
            kind = response["Content-Type"]
            assert not any(bad in kind for bad in ("html", "svg", "xml", "javascript")), (name, query, kind)
            if response.streaming:
                body(response)


def test_inline_takes_only_its_values(api, chat):
    put(api, chat, "notes.txt", b"x")
    for value in ("yes", "2", ""):
        response = api.get(url(chat, "notes.txt") + f"?inline={value}")
        assert response.status_code == 400 and error_code(response) == "invalid_request", value
    response = api.get(url(chat, "notes.txt") + "?inline=0")
    assert response["Content-Disposition"].startswith("attachment;")
    body(response)


def test_content_disposition_names_any_file_safely(api, chat):
    name = 'résumé "final"; x=1.txt'
    assert put(api, chat, name.replace('"', "%22").replace(";", "%3B"), b"cv").status_code == 201
    listing = api.get(url(chat)).json()["results"]
    assert [f["path"] for f in listing] == [name]
    response = api.get(url(chat, "r%C3%A9sum%C3%A9%20%22final%22%3B%20x%3D1.txt"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == (
        'attachment; filename="r_sum_ _final_; x=1.txt"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22%3B%20x%3D1.txt"
    )
    assert body(response) == b"cv"


def test_any_accept_header_still_gets_the_file(api, chat):
    put(api, chat, "pic.png", PNG)
    for accept in ("image/png", "application/octet-stream", "text/html", "*/*"):
        response = api.get(url(chat, "pic.png"), HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        assert body(response) == PNG


# --- streaming ----------------------------------------------------------------------------------


async def test_files_and_zips_stream_chunk_by_chunk_over_asgi(ws):
    data = os.urandom(300 * 1024)
    (ws / "big.bin").write_bytes(data)
    handle, _ = workspace_file_open(ws, ("big.bin",))
    response = WorkspaceFileResponse(handle, content_type="application/octet-stream")
    chunks = [chunk async for chunk in response]
    response.close()
    assert len(chunks) >= 4 and max(map(len, chunks)) <= workspace_files.CHUNK_BYTES
    assert b"".join(chunks) == data

    listing = workspace_files.workspace_files_list(ws, limit=100)
    response = WorkspaceZipResponse(workspace_files.workspace_zip_stream(ws, listing.files))
    chunks = [chunk async for chunk in response]
    response.close()
    assert len(chunks) >= 4
    assert zipfile.ZipFile(io.BytesIO(b"".join(chunks))).read("big.bin") == data


# --- through a real daphne ----------------------------------------------------------------------


@pytest.fixture
def http(live_daphne, user, transactional_db):
    key = api_key_create(owner=user, name="files")[1]
    with httpx.Client(
        base_url=live_daphne.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(60, connect=5),
    ) as client:
        yield client


def _tool_outputs(chunks: list[dict]) -> list[str]:
    return [json.dumps(c.get("output")) for c in chunks if c["type"] == "tool-output-available"]


def _chat(http, chat_id: str, text: str) -> list[dict]:
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, text)) as source:
        assert source.response.status_code == 200
        return [json.loads(e.data) for e in source.iter_sse() if e.data != "[DONE]"]


@pytest.mark.django_db(transaction=True)
def test_through_daphne_large_files_stream_and_the_agent_works_on_uploads(http):
    chat_id = f"daphne-files-{uuid.uuid4().hex[:8]}"
    assert http.post("/api/v1/sessions/", json={"client_id": chat_id}).status_code == 201
    base = f"/api/v1/sessions/{chat_id}/files"
    data = os.urandom(5 * MB)
    response = http.put(f"{base}/big.bin", content=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    with http.stream("GET", f"{base}/big.bin") as download:
        assert download.status_code == 200 and download.headers["content-length"] == str(len(data))
        digest = hashlib.sha256()
        for part in download.iter_bytes():
            digest.update(part)
    assert digest.digest() == hashlib.sha256(data).digest()
    # Chunked upload (no Content-Length): counted as it arrives.
    response = http.put(f"{base}/chunked.txt", content=iter([b"one ", b"two"]))
    assert response.status_code == 201 and response.json()["size"] == 7

    # The agent's (jailed) Bash reads the upload and changes it.
    assert http.put(f"{base}/uploaded.txt", content=b"from the user\n").status_code == 201
    chunks = _chat(http, chat_id, "/tool bash cat uploaded.txt && echo from-the-agent >> uploaded.txt")
    outputs = " ".join(_tool_outputs(chunks))
    assert "from the user" in outputs and "ermission denied" not in outputs, chunks
    assert http.get(f"{base}/uploaded.txt").content == b"from the user\nfrom-the-agent\n"
    # And a file the agent wrote is listed and downloadable.
    _chat(http, chat_id, "/tool bash echo hello > note.txt")
    paths = [f["path"] for f in http.get(f"{base}/").json()["results"]]
    assert {"big.bin", "chunked.txt", "note.txt", "uploaded.txt"} <= set(paths)
    assert http.get(f"{base}/note.txt").content == b"hello\n"
    archive = zipfile.ZipFile(io.BytesIO(http.get(f"/api/v1/sessions/{chat_id}/files.zip").content))
    assert archive.read("note.txt") == b"hello\n" and archive.read("big.bin") == data


@pytest.mark.django_db(transaction=True)
def test_through_daphne_traversal_is_400_in_every_spelling(http, live_daphne):
    """The request line exactly as sent (no client-side dot-segment removal): daphne decodes the
    path once, the route sees ``..`` and refuses it."""
    chat_id = f"daphne-paths-{uuid.uuid4().hex[:8]}"
    assert http.post("/api/v1/sessions/", json={"client_id": chat_id}).status_code == 201
    host, port = live_daphne.url.removeprefix("http://").split(":")
    for raw in (
        "../x",
        "%2e%2e/x",
        "%2E%2E%2Fx",
        "a/%2e%2e/%2e%2e/x",
        "%2Fetc%2Fpasswd",
        "a%00b",
        "a%5Cb",
        "a%0Ab",
    ):
        for method in ("GET", "PUT"):
            conn = http_client.HTTPConnection(host, int(port), timeout=30)
            conn.request(
                method,
                f"/api/v1/sessions/{chat_id}/files/{raw}",
                body=b"x" if method == "PUT" else None,
                headers={"Authorization": http.headers["Authorization"]},
            )
            response = conn.getresponse()
            payload = json.loads(response.read())
            conn.close()
            assert response.status == 400, (method, raw, response.status, payload)
            assert payload["error"]["code"] == "invalid_request"


@pytest.mark.django_db(transaction=True)
def test_through_daphne_uploading_while_a_turn_runs_is_allowed(http):
    chat_id = f"daphne-busy-{uuid.uuid4().hex[:8]}"
    base = f"/api/v1/sessions/{chat_id}/files"
    with connect_sse(http, "POST", "/api/v1/chat/", json=chat_body(chat_id, "/slow 100 20")) as source:
        events = source.iter_sse()
        next(events)  # the turn runs
        response = http.put(f"{base}/during.txt", content=b"while the agent works")
        assert response.status_code == 201, response.text
        assert ChatTurn.objects.filter(session__client_id=chat_id, status=ChatTurn.Status.RUNNING).exists()
        rest = [json.loads(e.data) for e in events if e.data != "[DONE]"]
    assert rest[-1]["type"] == "finish" and "w19" in text_of(rest)
    assert http.get(f"{base}/during.txt").content == b"while the agent works"
