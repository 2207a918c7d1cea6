"""The project's own small MCP server: notes kept as files in the workspace (docs/agents.md "MCP
servers").

Tools: ``add_note(title, text)``, ``list_notes()``, ``read_note(title)``. A note is the file
``notes/<slug of the title>.md`` under the current directory (the chat's workspace: both backends
start a stdio server there, inside the jail). Offline, no Django: it imports only the ``mcp``
package, so it runs wherever the interpreter, the venv and this file are visible (read-only).

    python -m agents.mcp_notes                    # stdio (what an operator registers)
    python -m agents.mcp_notes --http --port 8765 # streamable HTTP on 127.0.0.1:8765/mcp

``--dir PATH`` keeps the notes elsewhere. Test knobs: ``--slow-tool SECONDS`` makes the
``slow_note`` tool sleep that long (a server that times out), ``--start-delay SECONDS`` delays the
start, and the ``fail_note`` tool always raises (a tool that fails).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

NOTES_DIR = "notes"
MAX_NOTE_CHARS = 100_000
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def note_slug(title: str) -> str:
    """The file name stem of a note: lower case letters and digits joined by ``-``."""
    slug = _SLUG_RE.sub("-", str(title).lower()).strip("-")[:80]
    if not slug:
        raise ToolError("A note needs a title with at least one letter or digit.")
    return slug


def notes_server_build(directory: Path, *, slow_seconds: float = 0.0) -> MCPServer:
    """The notes server over ``directory`` (its ``notes/`` sub-directory holds the notes)."""
    server = MCPServer(
        "notes", instructions="Notes kept as markdown files in the workspace.", log_level="WARNING"
    )
    root = Path(directory) / NOTES_DIR

    @server.tool()
    def add_note(title: str, text: str) -> str:
        """Save a note (replacing a note of the same title). Returns where it was saved."""
        if len(text) > MAX_NOTE_CHARS:
            raise ToolError(f"A note may hold at most {MAX_NOTE_CHARS} characters.")
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{note_slug(title)}.md"
        path.write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
        return f"Saved note {title!r} as {NOTES_DIR}/{path.name}."

    @server.tool()
    def list_notes() -> str:
        """List the saved notes' titles, one a line."""
        if not root.is_dir():
            return "No notes yet."
        titles = [_note_title(path) for path in sorted(root.glob("*.md"))]
        return "\n".join(titles) if titles else "No notes yet."

    @server.tool()
    def read_note(title: str) -> str:
        """Read one note by its title."""
        path = root / f"{note_slug(title)}.md"
        if not path.is_file():
            raise ToolError(f"There is no note titled {title!r}.")
        return path.read_text(encoding="utf-8")

    @server.tool()
    def fail_note(title: str = "") -> str:
        """A tool that always fails (tests of error results)."""
        raise ToolError(f"fail_note always fails (title {title!r}).")

    @server.tool()
    def slow_note(title: str = "") -> str:
        """A tool that answers after the server's --slow-tool delay (tests of timeouts)."""
        time.sleep(slow_seconds)
        return f"slow note {title!r} done"

    return server


def _note_title(path: Path) -> str:
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return path.stem
    return first[2:].strip() if first.startswith("# ") else path.stem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.mcp_notes", description=__doc__.split("\n")[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--dir", default=".", help="where notes/ lives (default: the current directory)")
    parser.add_argument("--slow-tool", type=float, default=0.0, help="seconds slow_note sleeps")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before serving")
    args = parser.parse_args(argv)
    if args.start_delay > 0:
        time.sleep(args.start_delay)
    server = notes_server_build(Path(args.dir), slow_seconds=args.slow_tool)
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
