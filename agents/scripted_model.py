"""The scripted model: an offline, deterministic Anthropic Messages API server.

A real HTTP/1.1 server (asyncio streams, hand-written minimal parser) that speaks
enough of the Anthropic Messages API for the real ``anthropic`` client and the
real Claude Code CLI to run against it unchanged (CONTRACT §3):

* ``POST /v1/messages``               streaming SSE or non-streaming JSON
* ``POST /v1/messages/count_tokens``  ``{"input_tokens": N}``
* anything else                       a quick 404 JSON error

The reply is decided by a directive in the newest user text (``/tool bash ls``,
``/tools 3``, ``/long 50``, ``/slow 100``, ``/stamp 10 50``, ``/error 429``,
``/toolong``, ``/drop``, ``/think``); anything else gets a short echo.
See ``docs/scripted_model.md``.

Pure Python, no Django imports: ``ScriptedModelServer(port=0).start().url``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import hashlib
import itertools
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.loopserver import LoopThreadServer

__all__ = [
    "ApiError",
    "Directive",
    "Plan",
    "PlannedBlock",
    "ReplyPlanner",
    "ScriptedModelServer",
    "UsageMeter",
    "ensure_scripted_model",
    "ensure_scripted_model_server",
    "find_directive",
    "parse_directive",
]

logger = logging.getLogger(__name__)

MODEL_BANNER = "Offline scripted model"
REQUEST_LOG_SIZE = 1000
#: SSE bytes buffered before a chunk is written (batching for ``/long``).
FLUSH_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
JSON_SEPARATORS = (",", ":")

# --------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------

_DIRECTIVE_RE = re.compile(
    r"(?:^|(?<=\s))/(toolong|tools|tool|long|slow|stamp|error|droptool|drop|signed-think|redacted-think|think|stall|flaky"
    r"|websearch|citations|future|midstream-error|maxtokens-tool|pause|refusal|ctx-exceeded)(?![\w/-])([^\n]*)",
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
_CONTEXT_RE = re.compile(r"<conversation_context>.*?</conversation_context>", re.DOTALL)


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
    numbers = tuple(int(n) for n in _INT_RE.findall(rest.split("/", 1)[0])[:2])
    return Directive(name, numbers=numbers)


# --------------------------------------------------------------------------
# Reading a Messages API request
# --------------------------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
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
    return [str(b.get("text", "")) for b in _blocks(message.get("content")) if b.get("type") == "text"]


def spoken_text(texts: Iterable[str]) -> str:
    """What the human typed: text without ``<system-reminder>`` wrappers."""
    parts = [_REMINDER_RE.sub("", t).strip() for t in texts]
    return " ".join(p for p in parts if p)


def tool_results(message: dict[str, Any] | None) -> list[dict[str, Any]]:
    if message is None:
        return []
    return [b for b in _blocks(message.get("content")) if b.get("type") == "tool_result"]


def tool_result_text(block: dict[str, Any]) -> str:
    """The text of a tool_result, without the ``<system-reminder>`` notes the CLI appends."""
    content = block.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(str(b.get("text", "")) for b in _blocks(content) if b.get("type") == "text")
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


# --------------------------------------------------------------------------
# Usage (deterministic token estimates, prompt caching)
# --------------------------------------------------------------------------


def estimate_tokens(chars: int) -> int:
    return max(1, chars // 4)


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=JSON_SEPARATORS, sort_keys=True, ensure_ascii=False)


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def prompt_units(body: dict[str, Any]) -> Iterator[Any]:
    """The prompt in cache order (tools, system, messages), one unit per block."""
    tools = body.get("tools")
    if isinstance(tools, list):
        yield from tools
    system = body.get("system")
    if isinstance(system, str):
        yield {"system": system}
    elif isinstance(system, list):
        yield from system
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                yield {"role": message.get("role")}
                yield from content
            else:
                yield {"role": message.get("role"), "content": content}


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def as_dict(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }


class UsageMeter:
    """Token estimates (chars/4) with a toy prompt cache.

    Every ``cache_control`` breakpoint defines a prefix (everything up to and
    including that block, ``cache_control`` markers ignored). The longest prefix
    seen before is a cache read; the rest up to the last breakpoint is a cache
    write; the tail after the last breakpoint is plain ``input_tokens``.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    @staticmethod
    def count(body: dict[str, Any]) -> int:
        units = prompt_units(body)
        return estimate_tokens(sum(len(_canonical(_without_cache_control(u))) for u in units))

    def measure(self, body: dict[str, Any]) -> Usage:
        digest = hashlib.sha256()
        chars = 0
        breakpoints: list[tuple[str, int]] = []
        for unit in prompt_units(body):
            text = _canonical(_without_cache_control(unit))
            digest.update(text.encode())
            chars += len(text)
            if isinstance(unit, dict) and unit.get("cache_control"):
                breakpoints.append((digest.copy().hexdigest(), chars))
        total = estimate_tokens(chars)
        if not breakpoints:
            return Usage(input_tokens=total)
        with self._lock:
            read_chars = max((c for h, c in breakpoints if h in self._seen), default=0)
            for h, _ in breakpoints:
                self._seen[h] = None
                self._seen.move_to_end(h)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        cached_chars = breakpoints[-1][1]
        read = read_chars // 4
        cached = cached_chars // 4
        return Usage(
            input_tokens=max(1, total - cached),
            cache_creation_input_tokens=cached - read,
            cache_read_input_tokens=read,
        )


# --------------------------------------------------------------------------
# Reply planning
# --------------------------------------------------------------------------


@dataclass
class ApiError:
    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PlannedBlock:
    """One content block and the pieces it is streamed in."""

    type: str  # "text" | "thinking" | "tool_use" | "server_tool_use" | any block type without deltas
    pieces: list[str] = field(default_factory=list)
    tool_id: str = ""
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)
    signature: str = ""
    #: the whole block as ``content_block_start`` sends it, for blocks whose content comes there
    #: (``redacted_thinking``, ``web_search_tool_result``, an unknown ``future_block_type``)
    raw: dict[str, Any] | None = None
    #: text blocks: piece index -> the citation sent as a ``citations_delta`` before that piece
    citations: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything needed to render one reply, streaming or not."""

    label: str
    blocks: list[PlannedBlock] = field(default_factory=list)
    stop_reason: str = "end_turn"
    interval: float = 0.0  # seconds between deltas
    stamp: bool = False  # text deltas are generated at send time: "<i>:<ns> "
    drop_after: int | None = None  # cut the connection after this many deltas
    stall_after: int | None = None  # reliability extension: go silent after this many deltas…
    stall_seconds: float = 0.0  # …for this long (``/stall MS``), then finish normally
    error: ApiError | None = None
    #: stream grammar: an ``event: error`` with this error after this many deltas, then the end
    error_after: int | None = None
    stream_error: ApiError | None = None
    #: extra ``message_delta`` usage fields (``server_tool_use``)
    usage_extra: dict[str, Any] = field(default_factory=dict)
    #: events of a type newer than any client, sent after ``message_start`` (``/future``)
    unknown_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: what the server learnt about the request (logged in the request log entry)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def delta_count(self) -> int:
        return sum(len(b.pieces) for b in self.blocks) + sum(1 for b in self.blocks if b.type == "thinking")


def text_block(pieces: list[str]) -> PlannedBlock:
    return PlannedBlock("text", pieces=pieces)


def split_words(text: str, per_piece: int = 4) -> list[str]:
    """Split ``text`` into pieces of a few words, keeping all whitespace."""
    tokens = re.findall(r"\S+\s*", text) or [text]
    return ["".join(tokens[i : i + per_piece]) for i in range(0, len(tokens), per_piece)]


def _split_json(value: dict[str, Any], pieces: int = 3) -> list[str]:
    encoded = json.dumps(value, ensure_ascii=False)
    size = max(1, -(-len(encoded) // pieces))
    return [encoded[i : i + size] for i in range(0, len(encoded), size)]


def tool_use_block(tool_id: str, command: str, description: str) -> PlannedBlock:
    tool_input = {"command": command, "description": description}
    return PlannedBlock(
        "tool_use",
        pieces=_split_json(tool_input),
        tool_id=tool_id,
        tool_name="Bash",
        tool_input=tool_input,
    )


def thinking_signature(thinking: str) -> str:
    """The signature of a scripted thinking block: base64(sha256(text)), checked when sent back."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


_REDACTED_KEY = b"scripted-model-redacted-thinking"


def redacted_data(nonce: str) -> str:
    """Opaque ``redacted_thinking.data`` the server can verify statelessly when it comes back."""
    mac = hashlib.sha256(_REDACTED_KEY + nonce.encode()).hexdigest()[:32]
    return base64.b64encode(f"{nonce}:{mac}".encode()).decode()


def redacted_valid(data: Any) -> bool:
    try:
        nonce, mac = base64.b64decode(str(data), validate=True).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError):
        return False
    return bool(nonce) and mac == hashlib.sha256(_REDACTED_KEY + nonce.encode()).hexdigest()[:32]


def check_thinking(body: dict[str, Any]) -> tuple[ApiError | None, list[dict[str, Any]]]:
    """Verify every thinking / redacted_thinking block sent back in the history, as the real
    API does (a changed block is a 400). Returns (the error, the blocks of the newest assistant
    message with a ``valid`` flag) for the request log."""
    newest: list[dict[str, Any]] = []
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        newest = []
        for j, block in enumerate(_blocks(message.get("content"))):
            kind = block.get("type")
            if kind == "thinking":
                valid = block.get("signature") == thinking_signature(str(block.get("thinking", "")))
                newest.append({"type": kind, "thinking": block.get("thinking"), "signature": block.get("signature"), "valid": valid})
                if not valid:
                    return ApiError(400, "invalid_request_error", f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"), newest
            elif kind == "redacted_thinking":
                valid = redacted_valid(block.get("data"))
                newest.append({"type": kind, "data": block.get("data"), "valid": valid})
                if not valid:
                    return ApiError(400, "invalid_request_error", f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"), newest
    return None, newest


_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Scripted invalid request (/error 400)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: (
        "billing_error",
        (
            "Your credit balance is too low to access the Anthropic API. "
            "Please go to Plans & Billing to upgrade or purchase credits."
        ),
    ),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Scripted not found (/error 404)."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (scripted)."),
    500: ("api_error", "Internal server error (scripted)."),
    529: ("overloaded_error", "Overloaded"),
}


def rate_limit_headers(retry_after: int = 1) -> dict[str, str]:
    reset = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=retry_after)
    stamp = reset.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    headers = {"retry-after": str(retry_after)}
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        headers[f"anthropic-ratelimit-{kind}-limit"] = "1000"
        headers[f"anthropic-ratelimit-{kind}-remaining"] = "0"
        headers[f"anthropic-ratelimit-{kind}-reset"] = stamp
    return headers


def error_for_status(status: int) -> ApiError:
    if not 400 <= status <= 599:
        status = 500
    kind, message = _ERRORS.get(status, ("api_error", f"Scripted error (/error {status})."))
    headers = rate_limit_headers() if status == 429 else {}
    return ApiError(status, kind, message, headers)


def echo_text(said: str) -> str:
    said = " ".join(said.split())
    if len(said) > 200:
        said = said[:200] + "…"
    return (
        f'{MODEL_BANNER}: you said "{said}". Set ANTHROPIC_API_KEY to talk to Claude. '
        "Try /tool bash ls, /tools 3, /long 50, /slow 100, /think, /error 429."
    )


def side_title(said: str) -> str:
    """A three-word title from the user text ("Hello tool bash")."""
    said = re.sub(r"</?session>", " ", said)
    words = re.findall(r"[^\W_][\w'-]*", said)[:3]
    return " ".join(words).capitalize() if words else "Offline chat"


def sample_for_schema(schema: Any, title: str) -> Any:
    """A minimal value matching a JSON schema; strings get ``title``."""
    if not isinstance(schema, dict):
        return title
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: sample_for_schema(sub, title) for name, sub in props.items()}
    return {"integer": 0, "number": 0, "boolean": False, "array": [], "null": None}.get(str(kind), title)


def side_reply_text(body: dict[str, Any], said: str) -> str:
    title = side_title(said)
    schema = output_schema(body)
    if schema is None:
        return title
    return json.dumps(sample_for_schema(schema, title), ensure_ascii=False)


class ReplyPlanner:
    """Turns a Messages API request body into a :class:`Plan`."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._flaky: dict[str, int] = {}  # ``/flaky``: requests seen per user text
        self._flaky_lock = threading.Lock()

    def _tool_id(self, kind: str, index: int = 0) -> str:
        return f"toolu_{kind}_{next(self._ids):06d}_{index}"

    def plan(self, body: dict[str, Any]) -> Plan:
        message = newest_user_message(body)
        texts = [_CONTEXT_RE.sub(" ", t) for t in user_texts(message)]
        said = spoken_text(texts)
        if is_side_request(body):
            return Plan("side", [text_block([side_reply_text(body, said)])])
        limit = size_limit(body)
        if limit is not None and request_chars(body) > limit:
            message = f"prompt is too long: {request_chars(body)} characters > {limit} maximum"
            return Plan("toolong", error=ApiError(400, "invalid_request_error", message))
        bad_thinking, returned = check_thinking(body)
        if bad_thinking is not None:
            return Plan("invalid_thinking", error=bad_thinking, notes={"thinking_returned": returned})
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        if last.get("role") == "assistant" and any(
            b.get("type") == "server_tool_use" and "_pause_" in str(b.get("id")) for b in _blocks(last.get("content"))
        ):
            # ``pause_turn`` continuation: the client sent the paused turn back as the last message.
            text = "The search finished after the pause: the scripted model answers offline."
            return Plan("pause_continue", [text_block(split_words(text))])
        results = tool_results(message)
        if results:
            plan = self._after_tools(results, returned)
            plan.notes["thinking_returned"] = returned
            return plan
        directive = find_directive(texts)
        if directive is None and _AFTER_REFUSAL_RE.search(said):
            # The Claude Code CLI answers a ``refusal`` stop by asking the model to go on.
            return Plan("after_refusal", [text_block(split_words(AFTER_REFUSAL_TEXT))])
        if directive is None:
            return Plan("echo", [text_block(split_words(echo_text(said)))])
        if directive.name == "ctx-exceeded" and directive.numbers and request_chars(body) <= directive.numbers[0]:
            return Plan("echo", [text_block(split_words(echo_text(said)))])
        return self._for_directive(directive, said)

    def _after_tools(self, results: list[dict[str, Any]], returned: list[dict[str, Any]] | None = None) -> Plan:
        outputs = [tool_result_text(r) for r in results]
        multi = len(results) > 1 or "_tools_" in str(results[0].get("tool_use_id", ""))
        if multi:
            text = f"Ran {len(results)} tools: " + " ".join(outputs)
        elif results[0].get("is_error"):
            text = f"Tool error: {outputs[0]}"
        else:
            text = f"Tool result: {outputs[0]}"
        if "_think_" in str(results[0].get("tool_use_id", "")):
            kinds = ", ".join(b["type"] for b in returned or []) or "none"
            text += f" (thinking blocks returned intact: {kinds})"
        return Plan("tool_result", [text_block(split_words(text))])

    def _for_directive(self, d: Directive, said: str) -> Plan:
        if d.name == "tool":
            description = f"Run {d.command[:60]}"
            block = tool_use_block(self._tool_id("bash"), d.command, description)
            intro = text_block(["I'll run that ", "command."])
            return Plan("tool", [intro, block], stop_reason="tool_use")
        if d.name == "tools":
            count = d.number(0, 3, lo=1, hi=64)
            batch = next(self._ids)
            blocks = [
                tool_use_block(f"toolu_tools_{batch:06d}_{i}", f"echo tool-{i}", f"Echo tool-{i}")
                for i in range(count)
            ]
            return Plan("tools", blocks, stop_reason="tool_use")
        if d.name == "long":
            count = d.number(0, 50, lo=1, hi=1_000_000)
            return Plan("long", [text_block([f"w{i} " for i in range(count)])])
        if d.name == "slow":
            interval_ms = d.number(0, 100, hi=60_000)
            count = d.number(1, 40, lo=1, hi=100_000)
            words = [f"w{i} " for i in range(count)]
            return Plan("slow", [text_block(words)], interval=interval_ms / 1000)
        if d.name == "stamp":
            count = d.number(0, 10, lo=1, hi=1_000_000)
            interval_ms = d.number(1, 50, hi=60_000)
            pieces = [""] * count
            return Plan("stamp", [text_block(pieces)], interval=interval_ms / 1000, stamp=True)
        if d.name == "error":
            return Plan("error", error=error_for_status(d.number(0, 500, hi=999)))
        if d.name == "toolong":
            message = "prompt is too long: 250000 tokens > 200000 maximum"
            return Plan("toolong", error=ApiError(400, "invalid_request_error", message))
        if d.name == "drop":
            words = split_words("This reply will be cut off in the middle of a sentence", 2)
            return Plan("drop", [text_block(words)], drop_after=3)
        # Fault directives (extension of CONTRACT §3 for the reliability tests, docs/scripted_model.md).
        if d.name == "stall":
            stall_ms = d.number(0, 30_000, hi=3_600_000)
            words = split_words("This reply stalls after its first words and then resumes much later", 2)
            return Plan("stall", [text_block(words)], stall_after=1, stall_seconds=stall_ms / 1000)
        if d.name == "droptool":
            block = tool_use_block(self._tool_id("bash"), "echo never-runs", "Run echo never-runs")
            intro = text_block(["I'll run that ", "command."])
            return Plan("droptool", [intro, block], stop_reason="tool_use", drop_after=3)
        if d.name == "flaky":
            status = d.number(0, 529, hi=999)
            failures = d.number(1, 2, hi=1000)
            with self._flaky_lock:
                seen = self._flaky[said] = self._flaky.get(said, 0) + 1
            if seen <= failures:
                return Plan("flaky", error=error_for_status(status))
            text = f"Recovered after {failures} failed attempts (status {status})."
            return Plan("flaky", [text_block(split_words(text))])
        if d.name == "think":
            thoughts = split_words(
                f"The user wrote: {said[:120]}. This is the offline scripted model, "
                "so I will show a thinking block and then answer.",
                3,
            )
            signature = base64.b64encode(hashlib.sha256("".join(thoughts).encode()).digest())
            thinking = PlannedBlock("thinking", pieces=thoughts, signature=signature.decode())
            answer = text_block(split_words("I thought about it. Here is the answer after thinking."))
            return Plan("think", [thinking, answer])
        return self._grammar(d, said) or Plan("echo", [text_block(split_words(echo_text(said)))])

    def _grammar(self, d: Directive, said: str) -> Plan | None:
        """Directives for the parts of the real stream grammar (docs/scripted_model.md)."""
        if d.name in ("signed-think", "redacted-think"):
            thoughts = split_words("I should run a command to check before answering.", 3)
            blocks = [PlannedBlock("thinking", pieces=thoughts, signature=thinking_signature("".join(thoughts)))]
            if d.name == "redacted-think":
                nonce = f"{next(self._ids):06d}"
                blocks.append(PlannedBlock("redacted_thinking", raw={"type": "redacted_thinking", "data": redacted_data(nonce)}))
            word = "signed" if d.name == "signed-think" else "redacted"
            blocks.append(tool_use_block(self._tool_id("think"), f"echo {word}", f"Echo {word}"))
            return Plan(d.name, blocks, stop_reason="tool_use")
        if d.name == "websearch":
            return Plan("websearch", self._search_blocks("websearch") + [self._cited_answer()], usage_extra=_SEARCH_USAGE)
        if d.name == "citations":
            citation = {
                "type": "char_location",
                "cited_text": "The scripted model runs offline.",
                "document_index": 0,
                "document_title": "Scripted model notes",
                "start_char_index": 0,
                "end_char_index": 32,
            }
            block = text_block(["The notes say ", "it runs offline."])
            block.citations = {1: citation}
            return Plan("citations", [block])
        if d.name == "future":
            future = PlannedBlock(
                "future_block_type",
                pieces=["something ", "new"],
                raw={"type": "future_block_type", "future_field": {"nested": True}},
            )
            unknown = ("future_event", {"type": "future_event", "detail": "an event type newer than the client"})
            return Plan("future", [text_block(["Known text ", "before the future."]), future], unknown_events=[unknown])
        if d.name == "midstream-error":
            words = split_words("This answer starts streaming and then the server", 2)
            return Plan("midstream_error", [text_block(words)], error_after=3, stream_error=ApiError(529, "overloaded_error", "Overloaded"))
        if d.name == "maxtokens-tool":
            block = tool_use_block(self._tool_id("bash"), "echo never-runs-cut", "Run echo never-runs-cut")
            block.pieces = block.pieces[:1]  # the output limit cuts the input JSON
            block.tool_input = {}
            intro = text_block(["I'll run a ", "command."])
            return Plan("maxtokens_tool", [intro, block], stop_reason="max_tokens")
        if d.name == "pause":
            intro = text_block(["Let me search ", "for that."])
            return Plan("pause", [intro, *self._search_blocks("pause")], stop_reason="pause_turn", usage_extra=_SEARCH_USAGE)
        if d.name == "refusal":
            return Plan("refusal", [text_block(["I can help with ", "many things, but"])], stop_reason="refusal")
        if d.name == "ctx-exceeded":
            return Plan("ctx_exceeded", [], stop_reason="model_context_window_exceeded")
        return None

    def _search_blocks(self, kind: str) -> list[PlannedBlock]:
        tool_id = f"srvtoolu_{kind}_{next(self._ids):06d}"
        query = {"query": "scripted model offline"}
        use = PlannedBlock("server_tool_use", pieces=_split_json(query, 2), tool_id=tool_id, tool_name="web_search", tool_input=query)
        result = PlannedBlock(
            "web_search_tool_result",
            raw={"type": "web_search_tool_result", "tool_use_id": tool_id, "content": [dict(r) for r in _SEARCH_RESULTS]},
        )
        return [use, result]

    @staticmethod
    def _cited_answer() -> PlannedBlock:
        first = _SEARCH_RESULTS[0]
        citation = {
            "type": "web_search_result_location",
            "url": first["url"],
            "title": first["title"],
            "encrypted_index": "ZW5jcnlwdGVkLWluZGV4",
            "cited_text": "The scripted model answers without the network.",
        }
        block = text_block(["According to the search, ", "the scripted model answers offline."])
        block.citations = {1: citation}
        return block


_AFTER_REFUSAL_RE = re.compile(r"stopped by a safety classifier", re.IGNORECASE)
AFTER_REFUSAL_TEXT = "I can't continue with that request."

_SEARCH_RESULTS = (
    {
        "type": "web_search_result",
        "url": "https://example.com/scripted-model",
        "title": "The scripted model",
        "encrypted_content": "c2NyaXB0ZWQtcmVzdWx0LTE=",
        "page_age": "April 30, 2025",
    },
    {
        "type": "web_search_result",
        "url": "https://example.org/offline",
        "title": "Working offline",
        "encrypted_content": "c2NyaXB0ZWQtcmVzdWx0LTI=",
        "page_age": None,
    },
)
_SEARCH_USAGE = {"server_tool_use": {"web_search_requests": 1}}


# --------------------------------------------------------------------------
# Rendering: SSE events and JSON messages
# --------------------------------------------------------------------------


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=JSON_SEPARATORS, ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()


def _delta_prefix(index: int, kind: str, key: str) -> bytes:
    return (
        f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
        f'"delta":{{"type":"{kind}","{key}":'
    ).encode()


_DELTA_KEYS = {
    "text": ("text_delta", "text"),
    "thinking": ("thinking_delta", "thinking"),
    "future_block_type": ("future_delta", "payload"),  # ``/future``: a delta type newer than the client
}
_TOOL_BLOCKS = ("tool_use", "server_tool_use")


def _block_start(block: PlannedBlock) -> dict[str, Any]:
    if block.type in _TOOL_BLOCKS:
        return {"type": block.type, "id": block.tool_id, "name": block.tool_name, "input": {}}
    if block.raw is not None:
        return dict(block.raw)
    if block.type == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if block.citations:
        return {"type": "text", "text": "", "citations": []}
    return {"type": "text", "text": ""}


def _block_final(block: PlannedBlock, pieces: list[str]) -> dict[str, Any]:
    if block.type in _TOOL_BLOCKS:
        return {
            "type": block.type,
            "id": block.tool_id,
            "name": block.tool_name,
            "input": block.tool_input,
        }
    if block.raw is not None:
        return dict(block.raw)
    if block.type == "thinking":
        return {"type": "thinking", "thinking": "".join(pieces), "signature": block.signature}
    if block.citations:
        return {"type": "text", "text": "".join(pieces), "citations": list(block.citations.values())}
    return {"type": "text", "text": "".join(pieces)}


class StampCounter:
    """Generates ``/stamp`` deltas: ``<i>:<time.time_ns() at send> ``."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> str:
        text = f"{self._next}:{time.time_ns()} "
        self._next += 1
        return text


def message_shell(message_id: str, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


class DroppedConnection(Exception):
    """The plan asked to cut the connection (``/drop``)."""


class SSEWriter:
    """Writes SSE events as HTTP/1.1 chunks, batching small events."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buffer: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)

    async def event(self, name: str, payload: dict[str, Any]) -> None:
        self.add(sse_event(name, payload))
        await self.maybe_flush()

    async def maybe_flush(self) -> None:
        if self._size >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if not self._size:
            return
        if self._writer.is_closing():
            raise ConnectionResetError("client went away")
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        self._writer.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        await self._writer.drain()

    async def finish(self) -> None:
        await self.flush()
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()


class _StreamEnded(Exception):
    """The plan ended the stream early on purpose (``event: error`` mid-stream)."""


def final_usage(plan: Plan, usage: Usage) -> dict[str, Any]:
    """The cumulative usage of ``message_delta`` (and of a non-streaming reply)."""
    return {**usage.as_dict(max(1, plan.delta_count)), **plan.usage_extra}


async def stream_plan(plan: Plan, out: SSEWriter, *, message_id: str, model: str, usage: Usage) -> None:
    """Stream ``plan`` as Anthropic SSE events into ``out``, in the real API's grammar: ``ping``
    right after ``message_start`` and between content blocks, cumulative usage in
    ``message_delta`` (replacing ``message_start``'s), ``signature_delta`` closing thinking,
    ``citations_delta`` inside text, and whatever the plan adds (unknown events, an error)."""
    await out.event(
        "message_start",
        {
            "type": "message_start",
            "message": message_shell(message_id, model, usage.as_dict(1)),
        },
    )
    await out.event("ping", {"type": "ping"})
    for name, payload in plan.unknown_events:
        await out.event(name, payload)
    stamp = StampCounter() if plan.stamp else None
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    sent = 0

    async def wait_turn() -> None:
        """Before a delta: keep the ``interval`` schedule (no wait before the first)."""
        nonlocal next_at
        if plan.interval > 0 and sent:
            next_at += plan.interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def delta_added() -> None:
        """After a delta: send it now when paced, cut the stream for ``/drop``."""
        nonlocal sent
        sent += 1
        if plan.drop_after is not None and sent >= plan.drop_after:
            await out.flush()
            raise DroppedConnection()
        if plan.error_after is not None and plan.stream_error is not None and sent >= plan.error_after:
            err = plan.stream_error
            await out.event("error", {"type": "error", "error": {"type": err.type, "message": err.message}})
            await out.finish()
            raise _StreamEnded()
        if plan.stall_after is not None and sent == plan.stall_after:
            await out.flush()
            await asyncio.sleep(plan.stall_seconds)
        if plan.interval > 0:
            await out.flush()
        else:
            await out.maybe_flush()

    try:
        for index, block in enumerate(plan.blocks):
            if index:
                await out.event("ping", {"type": "ping"})
            await out.event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": _block_start(block),
                },
            )
            if block.type in _TOOL_BLOCKS:
                for piece in block.pieces:
                    await wait_turn()
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    payload = {"type": "content_block_delta", "index": index, "delta": delta}
                    out.add(sse_event("content_block_delta", payload))
                    await delta_added()
            elif block.type in _DELTA_KEYS:
                kind, key = _DELTA_KEYS[block.type]
                prefix = _delta_prefix(index, kind, key)
                for number, piece in enumerate(block.pieces):
                    if number in block.citations:
                        delta = {"type": "citations_delta", "citation": block.citations[number]}
                        out.add(sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
                    await wait_turn()
                    text = stamp() if stamp is not None and block.type == "text" else piece
                    out.add(prefix + json.dumps(text, ensure_ascii=False).encode() + b"}}\n\n")
                    await delta_added()
                if block.type == "thinking":
                    await out.event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "signature_delta", "signature": block.signature},
                        },
                    )
            await out.event("content_block_stop", {"type": "content_block_stop", "index": index})
    except _StreamEnded:
        return
    await out.event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
            "usage": final_usage(plan, usage),
        },
    )
    await out.event("message_stop", {"type": "message_stop"})
    await out.finish()


async def render_message(plan: Plan, *, message_id: str, model: str, usage: Usage) -> dict[str, Any]:
    """The non-streaming Message for ``plan`` (delays are honoured)."""
    stamp = StampCounter() if plan.stamp else None
    content: list[dict[str, Any]] = []
    for block in plan.blocks:
        pieces: list[str] = []
        for piece in block.pieces:
            if plan.interval > 0 and (pieces or content):
                await asyncio.sleep(plan.interval)
            pieces.append(stamp() if stamp is not None and block.type == "text" else piece)
        content.append(_block_final(block, pieces))
    message = message_shell(message_id, model, final_usage(plan, usage))
    message.update(content=content, stop_reason=plan.stop_reason)
    return message


def error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


# --------------------------------------------------------------------------
# HTTP/1.1
# --------------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
_REDACTED_HEADERS = {"x-api-key", "authorization", "cookie", "proxy-authorization"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HttpRequest | None:
    """Read one request; ``None`` on a cleanly closed connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            raise HttpError(400, "bad content-length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise HttpError(413, "body too large")
        body = await reader.readexactly(length) if length else b""
    return HttpRequest(method.upper(), target, version.strip(), headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError(413, "body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: Any,
    *,
    keep_alive: bool,
    extra: dict[str, str] | None = None,
    head_only: bool = False,
) -> None:
    body = json.dumps(payload, separators=JSON_SEPARATORS, ensure_ascii=False).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "keep-alive" if keep_alive else "close",
        "server": "scripted-model",
        **(extra or {}),
    }
    writer.write(_head(status, headers) + (b"" if head_only else body))
    await writer.drain()


def _log_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k in _REDACTED_HEADERS and v else v) for k, v in headers.items()}


def _auth_hash(headers: dict[str, str]) -> str | None:
    value = headers.get("x-api-key") or ""
    if not value and headers.get("authorization", "").lower().startswith("bearer "):
        value = headers["authorization"][7:].strip()
    return hashlib.sha256(value.encode()).hexdigest() if value else None


def _abort(writer: asyncio.StreamWriter) -> None:
    """Cut the TCP connection abruptly (RST)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class ScriptedModelServer(LoopThreadServer):
    """The scripted Anthropic Messages API server (see module docstring)."""

    thread_name = "scripted-model"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        #: total number of requests ever logged (``len(requests)`` stops at the maxlen)
        self.request_count = 0
        self.planner = ReplyPlanner()
        self.usage = UsageMeter()
        self._counter = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle (start/stop/url: LoopThreadServer) ----------------------

    def serve_forever(self) -> None:
        """Serve in the foreground until Ctrl-C (starts the server if needed)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, backlog=2048, limit=MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- connections -------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except HttpError as exc:
                    body = error_body("invalid_request_error", str(exc), "req_bad")
                    await write_json(writer, exc.status, body, keep_alive=False)
                    break
                if request is None or not await self._dispatch(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, DroppedConnection):
            pass
        except Exception:  # a bug must not take the server down
            logger.exception("scripted model: request failed")
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    def _log(self, request: HttpRequest, body: Any) -> dict[str, Any]:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": _log_headers(request.headers),
            # sha256 hex of the credential sent (x-api-key, else the bearer token): lets tests
            # check which key arrived without the log holding it.
            "auth_sha256": _auth_hash(request.headers),
            "body": body,
            "time": time.time(),
        }
        self.requests.append(entry)
        self.request_count += 1
        return entry

    async def _dispatch(self, request: HttpRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection stays open."""
        try:
            body = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        entry = self._log(request, body)
        request_id = f"req_scripted_{next(self._counter):08d}"
        keep_alive = request.keep_alive
        common = {"request-id": request_id}
        route = (request.method, request.path.rstrip("/"))

        if route[1] in ("/v1/messages", "/v1/messages/count_tokens") and request.method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                entry["status"] = 400
                err = error_body("invalid_request_error", "messages: field required", request_id)
                await write_json(writer, 400, err, keep_alive=keep_alive, extra=common)
                return keep_alive
            if route[1] == "/v1/messages/count_tokens":
                entry["status"] = 200
                payload = {"input_tokens": self.usage.count(body)}
                await write_json(writer, 200, payload, keep_alive=keep_alive, extra=common)
                return keep_alive
            return await self._messages(body, entry, writer, request_id, keep_alive)

        entry["status"] = 404
        err = error_body("not_found_error", f"Not found: {request.method} {request.path}", request_id)
        await write_json(
            writer,
            404,
            err,
            keep_alive=keep_alive,
            extra=common,
            head_only=request.method == "HEAD",
        )
        return keep_alive

    async def _messages(
        self,
        body: dict[str, Any],
        entry: dict[str, Any],
        writer: asyncio.StreamWriter,
        request_id: str,
        keep_alive: bool,
    ) -> bool:
        plan = self.planner.plan(body)
        entry["directive"] = plan.label
        entry.update(plan.notes)
        common = {"request-id": request_id}
        if plan.error is not None or (plan.stream_error is not None and not body.get("stream")):
            err = plan.error or plan.stream_error
            assert err is not None
            entry["status"] = err.status
            payload = error_body(err.type, err.message, request_id)
            await write_json(
                writer,
                err.status,
                payload,
                keep_alive=keep_alive,
                extra={**common, **err.headers},
            )
            return keep_alive
        entry["status"] = 200
        model = str(body.get("model") or "scripted-model")
        message_id = f"msg_scripted_{request_id[-8:]}"
        usage = self.usage.measure(body)
        entry["usage"] = final_usage(plan, usage)
        if not body.get("stream"):
            if plan.drop_after is not None:
                _abort(writer)
                return False
            message = await render_message(plan, message_id=message_id, model=model, usage=usage)
            await write_json(writer, 200, message, keep_alive=keep_alive, extra=common)
            return keep_alive
        writer.write(
            _head(
                200,
                {
                    "content-type": "text/event-stream; charset=utf-8",
                    "cache-control": "no-cache",
                    "transfer-encoding": "chunked",
                    "connection": "keep-alive" if keep_alive else "close",
                    "server": "scripted-model",
                    **common,
                },
            )
        )
        try:
            await stream_plan(plan, SSEWriter(writer), message_id=message_id, model=model, usage=usage)
        except DroppedConnection:
            _abort(writer)
            return False
        return keep_alive


# --------------------------------------------------------------------------
# Process-wide singleton
# --------------------------------------------------------------------------

_singleton: ScriptedModelServer | None = None
_singleton_lock = threading.Lock()


def ensure_scripted_model_server() -> ScriptedModelServer:
    """Start the process-wide scripted model once (thread-safe) and return it."""
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            _singleton = ScriptedModelServer().start()
        return _singleton


def ensure_scripted_model() -> str:
    """Start the process-wide scripted model once (thread-safe); return its URL."""
    return ensure_scripted_model_server().url
