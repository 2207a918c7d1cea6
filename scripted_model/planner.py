"""Reply planning: a Messages API request body becomes a :class:`Plan` (the blocks, their
pieces, the stop reason, the faults to inject), rendered later by ``scripted_model.stream``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from scripted_model.directives import (
    CONTEXT_RE,
    Directive,
    content_blocks_list,
    find_directive,
    is_side_request,
    newest_user_message,
    output_schema,
    request_chars,
    size_limit,
    spoken_text,
    tool_result_text,
    tool_results,
    user_texts,
)

MODEL_BANNER = "Offline scripted model"


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


def mcp_block(tool_id: str, command: str) -> PlannedBlock:
    """``/mcp <server>__<tool> <json args>``: a ``mcp__<server>__<tool>`` call with those
    arguments (``{}`` when they are missing or not a JSON object)."""
    target, _, raw = command.partition(" ")
    name = target if target.startswith("mcp__") else f"mcp__{target}"
    try:
        tool_input = json.loads(raw) if raw.strip() else {}
    except ValueError:
        tool_input = {}
    if not isinstance(tool_input, dict):
        tool_input = {}
    return PlannedBlock(
        "tool_use", pieces=_split_json(tool_input), tool_id=tool_id, tool_name=name, tool_input=tool_input
    )


def plan_block(tool_id: str, command: str, revision: str = "") -> PlannedBlock:
    """An ``ExitPlanMode`` call (plan mode, docs/scripted_model.md ``/plan``)."""
    plan = f"## Plan\n\n1. Check the working directory.\n2. Run `{command}`."
    if revision:
        plan = f"{plan}\n\nRevised after your feedback: {revision}"
    tool_input = {"plan": plan}
    return PlannedBlock(
        "tool_use",
        pieces=_split_json(tool_input),
        tool_id=tool_id,
        tool_name="ExitPlanMode",
        tool_input=tool_input,
    )


def plan_command(body: dict[str, Any]) -> str:
    """The command of the conversation's newest ``/plan <command>`` (the Claude Code CLI may
    rewrite the ``ExitPlanMode`` input it sends back, so the user's text is the source)."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        directive = find_directive([CONTEXT_RE.sub(" ", t) for t in user_texts(message)])
        if directive is not None and directive.name == "plan" and directive.command:
            return directive.command
    return "ls"


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
        for j, block in enumerate(content_blocks_list(message.get("content"))):
            kind = block.get("type")
            if kind == "thinking":
                valid = block.get("signature") == thinking_signature(str(block.get("thinking", "")))
                newest.append(
                    {
                        "type": kind,
                        "thinking": block.get("thinking"),
                        "signature": block.get("signature"),
                        "valid": valid,
                    }
                )
                if not valid:
                    return ApiError(
                        400,
                        "invalid_request_error",
                        f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block",
                    ), newest
            elif kind == "redacted_thinking":
                valid = redacted_valid(block.get("data"))
                newest.append({"type": kind, "data": block.get("data"), "valid": valid})
                if not valid:
                    return ApiError(
                        400,
                        "invalid_request_error",
                        f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block",
                    ), newest
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
        texts = [CONTEXT_RE.sub(" ", t) for t in user_texts(message)]
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
            b.get("type") == "server_tool_use" and "_pause_" in str(b.get("id"))
            for b in content_blocks_list(last.get("content"))
        ):
            # ``pause_turn`` continuation: the client sent the paused turn back as the last message.
            text = "The search finished after the pause: the scripted model answers offline."
            return Plan("pause_continue", [text_block(split_words(text))])
        results = tool_results(message)
        if results and "_plan_" in str(results[0].get("tool_use_id", "")):
            return self._after_plan(results[0], body)
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
        if (
            directive.name == "ctx-exceeded"
            and directive.numbers
            and request_chars(body) <= directive.numbers[0]
        ):
            return Plan("echo", [text_block(split_words(echo_text(said)))])
        return self._for_directive(directive, said)

    def _after_plan(self, result: dict[str, Any], body: dict[str, Any]) -> Plan:
        """``/plan``: an approved plan is carried out (a Bash call); a rejected one is revised."""
        command = plan_command(body)
        if result.get("is_error"):
            block = plan_block(self._tool_id("plan"), command, revision=tool_result_text(result)[:300])
            intro = text_block(split_words("I revised the plan.", 2))
            return Plan("plan_revised", [intro, block], stop_reason="tool_use")
        block = tool_use_block(self._tool_id("bash"), command, f"Run {command[:60]}")
        intro = text_block(split_words("The plan is approved; running it.", 2))
        return Plan("plan_run", [intro, block], stop_reason="tool_use")

    def _after_tools(
        self, results: list[dict[str, Any]], returned: list[dict[str, Any]] | None = None
    ) -> Plan:
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
        if d.name == "mcp":
            intro = text_block(["I'll use ", "that tool."])
            return Plan("mcp", [intro, mcp_block(self._tool_id("mcp"), d.command)], stop_reason="tool_use")
        if d.name == "plan":
            command = d.command.strip() or "ls"
            intro = text_block(split_words("Here is my plan.", 2))
            return Plan("plan", [intro, plan_block(self._tool_id("plan"), command)], stop_reason="tool_use")
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
            blocks = [
                PlannedBlock("thinking", pieces=thoughts, signature=thinking_signature("".join(thoughts)))
            ]
            if d.name == "redacted-think":
                nonce = f"{next(self._ids):06d}"
                blocks.append(
                    PlannedBlock(
                        "redacted_thinking", raw={"type": "redacted_thinking", "data": redacted_data(nonce)}
                    )
                )
            word = "signed" if d.name == "signed-think" else "redacted"
            blocks.append(tool_use_block(self._tool_id("think"), f"echo {word}", f"Echo {word}"))
            return Plan(d.name, blocks, stop_reason="tool_use")
        if d.name == "websearch":
            return Plan(
                "websearch",
                self._search_blocks("websearch") + [self._cited_answer()],
                usage_extra=_SEARCH_USAGE,
            )
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
            unknown = (
                "future_event",
                {"type": "future_event", "detail": "an event type newer than the client"},
            )
            return Plan(
                "future",
                [text_block(["Known text ", "before the future."]), future],
                unknown_events=[unknown],
            )
        if d.name == "midstream-error":
            words = split_words("This answer starts streaming and then the server", 2)
            return Plan(
                "midstream_error",
                [text_block(words)],
                error_after=3,
                stream_error=ApiError(529, "overloaded_error", "Overloaded"),
            )
        if d.name == "maxtokens-tool":
            block = tool_use_block(self._tool_id("bash"), "echo never-runs-cut", "Run echo never-runs-cut")
            block.pieces = block.pieces[:1]  # the output limit cuts the input JSON
            block.tool_input = {}
            intro = text_block(["I'll run a ", "command."])
            return Plan("maxtokens_tool", [intro, block], stop_reason="max_tokens")
        if d.name == "pause":
            intro = text_block(["Let me search ", "for that."])
            return Plan(
                "pause",
                [intro, *self._search_blocks("pause")],
                stop_reason="pause_turn",
                usage_extra=_SEARCH_USAGE,
            )
        if d.name == "refusal":
            return Plan(
                "refusal", [text_block(["I can help with ", "many things, but"])], stop_reason="refusal"
            )
        if d.name == "ctx-exceeded":
            return Plan("ctx_exceeded", [], stop_reason="model_context_window_exceeded")
        return None

    def _search_blocks(self, kind: str) -> list[PlannedBlock]:
        tool_id = f"srvtoolu_{kind}_{next(self._ids):06d}"
        query = {"query": "scripted model offline"}
        use = PlannedBlock(
            "server_tool_use",
            pieces=_split_json(query, 2),
            tool_id=tool_id,
            tool_name="web_search",
            tool_input=query,
        )
        result = PlannedBlock(
            "web_search_tool_result",
            raw={
                "type": "web_search_tool_result",
                "tool_use_id": tool_id,
                "content": [dict(r) for r in _SEARCH_RESULTS],
            },
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
