"""Reading a Messages API request: the directive in the newest user text, the texts and tool
results of a message, side requests (docs/scripted_model.md, "Directives")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: compact JSON, as the real API writes it (also what ``/toolong-over`` measures)
JSON_SEPARATORS = (",", ":")


_DIRECTIVE_RE = re.compile(
    r"(?:^|(?<=\s))/(toolong|tools|tool|long|slow|stamp|error|droptool|drop|signed-think|redacted-think|think|stall|flaky"
    r"|websearch|citations|future|midstream-error|maxtokens-tool|pause|refusal|ctx-exceeded|plan|mcp)(?![\w/-])([^\n]*)",
    re.IGNORECASE | re.MULTILINE,
)
_REMINDER_RE = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_INT_RE = re.compile(r"\d+")

# Extension of CONTRACT §3 (context-size recovery tests): ``/toolong-over N`` anywhere in the
# conversation's user texts → a 400 "prompt is too long" for every (non-side) request whose
# ``system`` + ``messages`` JSON exceeds N characters; smaller requests are answered normally.
# Text inside ``<conversation_context>…</conversation_context>`` (earlier turns a backend adds as
# context) is not what the user said now: it is ignored for directives and the echo.
_TOOLONG_OVER_RE = re.compile(r"(?:^|(?<=\s))/toolong-over\s+(\d+)", re.IGNORECASE)
CONTEXT_RE = re.compile(r"<conversation_context>.*?</conversation_context>", re.DOTALL)


def size_limit(body: dict[str, Any]) -> int | None:
    """The N of the newest ``/toolong-over N`` in any user message of the request, if any."""
    limit = None
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            for text in user_texts(message):
                for match in _TOOLONG_OVER_RE.finditer(text):
                    limit = int(match.group(1))
    return limit


def request_chars(body: dict[str, Any]) -> int:
    """The size ``/toolong-over`` measures: ``system`` plus ``messages`` as compact JSON."""
    payload = {"system": body.get("system"), "messages": body.get("messages")}
    return len(json.dumps(payload, separators=JSON_SEPARATORS, ensure_ascii=False))


@dataclass(frozen=True)
class Directive:
    """One parsed directive: ``name`` plus its integer ``numbers`` or a ``command``."""

    name: str
    numbers: tuple[int, ...] = ()
    command: str = ""

    def number(self, index: int, default: int, *, lo: int = 0, hi: int = 10**7) -> int:
        value = self.numbers[index] if index < len(self.numbers) else default
        return max(lo, min(hi, value))


def parse_directive(text: str) -> Directive | None:
    """Return the first directive in ``text``, ``<system-reminder>`` sections ignored."""
    match = _DIRECTIVE_RE.search(_REMINDER_RE.sub(" ", text))
    return _make_directive(match.group(1).lower(), match.group(2)) if match else None


def find_directive(texts: list[str]) -> Directive | None:
    """The directive of a user message given its text blocks, newest block first.

    The Claude Code CLI prepends ``<system-reminder>`` blocks to the user's text
    (and they may quote slash commands, e.g. "starts with the slash command
    /tool"), so reminders are skipped; only if no directive is found outside them
    is the raw text searched (the CLI also wraps queued user messages in reminders).
    """
    for text in reversed(texts):
        directive = parse_directive(text)
        if directive is not None:
            return directive
    for text in reversed(texts):
        match = _DIRECTIVE_RE.search(text)
        if match:
            return _make_directive(match.group(1).lower(), match.group(2))
    return None


def _make_directive(name: str, rest: str) -> Directive | None:
    if name == "tool":
        command = re.sub(r"^\s*bash\b", "", rest, flags=re.IGNORECASE).strip()
        return Directive("tool", command=command) if command else None
    if name == "plan":
        return Directive("plan", command=rest.strip())
    if name == "mcp":  # ``/mcp <server>__<tool> <json args>``
        return Directive("mcp", command=rest.strip()) if rest.strip() else None
    numbers = tuple(int(n) for n in _INT_RE.findall(rest.split("/", 1)[0])[:2])
    return Directive(name, numbers=numbers)


# --------------------------------------------------------------------------
# Reading a Messages API request
# --------------------------------------------------------------------------


def content_blocks_list(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def newest_user_message(body: dict[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def user_texts(message: dict[str, Any] | None) -> list[str]:
    """Text blocks of a user message, in order."""
    if message is None:
        return []
    return [
        str(b.get("text", "")) for b in content_blocks_list(message.get("content")) if b.get("type") == "text"
    ]


def spoken_text(texts: Iterable[str]) -> str:
    """What the human typed: text without ``<system-reminder>`` wrappers."""
    parts = [_REMINDER_RE.sub("", t).strip() for t in texts]
    return " ".join(p for p in parts if p)


def tool_results(message: dict[str, Any] | None) -> list[dict[str, Any]]:
    if message is None:
        return []
    return [b for b in content_blocks_list(message.get("content")) if b.get("type") == "tool_result"]


def tool_result_text(block: dict[str, Any]) -> str:
    """The text of a tool_result, without the ``<system-reminder>`` notes the CLI appends."""
    content = block.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(
            str(b.get("text", "")) for b in content_blocks_list(content) if b.get("type") == "text"
        )
    return _REMINDER_RE.sub("", text).strip()


def system_text(body: dict[str, Any]) -> str:
    return " ".join(t for t in user_texts({"content": body.get("system")}))


_SIDE_TASK_RE = re.compile(
    r"naming a coding session|\btitle for\b|\bsession title\b|conversation topic"
    r"|summari[sz]e (?:this|the) conversation",
    re.IGNORECASE,
)


def output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a structured-output request, if any."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = fmt or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def is_side_request(body: dict[str, Any]) -> bool:
    """A request that is not the chat turn itself (e.g. the session title).

    The Claude Code CLI sends helper requests next to the main turn (the session
    title: no tools, a ``json_schema`` output format, a "naming a coding
    session" system prompt). They carry no tools and ask for structured output
    or a title/summary in the system prompt. They get a short answer (JSON
    matching the schema when one is given) and never act on a directive.
    A small ``max_tokens`` alone does not make a side request: benchmarks send
    directives with tiny limits.
    """
    if body.get("tools"):
        return False
    if output_schema(body) is not None:
        return True
    return bool(_SIDE_TASK_RE.search(system_text(body)))
