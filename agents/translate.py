"""Anthropic Messages API stream events → UI-message-stream chunks, written once for both backends.

Both backends see the same raw stream events: the ``api`` backend reads them from the anthropic
client's server-sent events (``json.loads`` of each ``data:``), the ``sdk`` backend inside the
claude-agent-sdk's ``StreamEvent`` messages (``include_partial_messages=True``).
``StreamTranslator.feed(event)`` returns the chunks for one event (``agents/events.py``):

- ``message_start`` → ``start-step`` (usage from its ``usage``; stop_reason reset);
- text blocks → ``text-start`` / ``text-delta`` / ``text-end``; ``citations_delta`` → one
  ``source-url`` / ``source-document`` per cited source and translator (``citation_source``);
- thinking blocks → ``reasoning-start`` / ``-delta`` / ``-end``; the ``signature_delta`` is kept,
  a ``redacted_thinking`` block is kept whole (both go back to the model intact, no chunk);
- ``tool_use`` and server tool (``server_tool_use``: web search…, ``providerExecuted``) blocks →
  ``tool-input-start``, ``tool-input-delta`` (the raw JSON), ``tool-input-available`` (parsed at
  ``content_block_stop``); a server tool's ``*_tool_result`` block → ``tool-output-available``
  (``providerExecuted``), kept verbatim;
- input JSON that does not parse (cut by ``max_tokens``): the call is recorded in ``cut`` and not
  shown as complete — or, with ``show_unparsed_input`` (sdk: the CLI decides), shown with
  ``{"_raw": <text>}``;
- block and event types it does not know are ignored, never fatal;
- ``message_delta`` → ``stop_reason``; its usage is cumulative and replaces ``message_start``'s
  figures (a field left out keeps its value); ``message_stop`` closes what is still open, adds the
  message's usage to ``usage`` and sets ``finished``.

``content()`` gives the current message's assistant content blocks (the api backend's tool loop
sends them back). Each tool call's start / available / output chunk is produced once per
translator. What is backend-specific (the tool loop; the SDK's whole messages, tool results,
results, errors, compaction, deferred steps) stays in ``agents/backends/``.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from agents import events
from agents.events import Chunk
from agents.turn import Usage

log = logging.getLogger(__name__)

#: ``content_block_start`` types of server tool calls (run by the API itself, shown as tool calls
#: with ``providerExecuted``); their results come as ``*_tool_result`` blocks, whole, at start.
SERVER_TOOL_BLOCKS = frozenset({"server_tool_use"})
TOOL_BLOCKS = SERVER_TOOL_BLOCKS | {"tool_use"}


def is_server_tool_result(block: dict[str, Any]) -> bool:
    return str(block.get("type", "")).endswith("_tool_result") and bool(block.get("tool_use_id"))


def server_tool_output(block: dict[str, Any]) -> Any:
    """A server tool result block as the tool part's output: search results as ``{url, title}``
    (the opaque ``encrypted_content`` left out), an error as ``{error}``, anything else as sent."""
    content = block.get("content")
    if isinstance(content, list):
        return [
            {"url": r.get("url"), "title": r.get("title")} if isinstance(r, dict) and "url" in r else r
            for r in content
        ]
    if isinstance(content, dict) and content.get("error_code"):
        return {"error": content.get("error_code")}
    return content


def citation_source(citation: Any, seen: set[str]) -> Chunk | None:
    """A ``citations_delta`` citation as a ``source-url`` / ``source-document`` chunk, once per
    source (``seen`` holds the sources already sent in this turn)."""
    if not isinstance(citation, dict):
        return None
    url = citation.get("url")
    if url:
        key = f"url:{url}"
        if key in seen:
            return None
        seen.add(key)
        return events.source_url(f"src-{len(seen)}", str(url), citation.get("title"))
    title = citation.get("document_title") or f"document {citation.get('document_index', 0)}"
    key = f"doc:{citation.get('document_index')}:{title}"
    if key in seen:
        return None
    seen.add(key)
    return events.source_document(f"src-{len(seen)}", str(title))


def new_part_id(prefix: str = "part") -> str:
    """A unique id for a text/reasoning part."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Block:
    """One content block of the message being streamed."""

    __slots__ = ("type", "ident", "name", "pieces", "signature", "citations", "whole", "tool_input", "server")

    def __init__(
        self, block_type: str, ident: str, *, name: str = "", whole: dict[str, Any] | None = None
    ) -> None:
        self.type = (
            block_type  # text | thinking | redacted_thinking | tool_use | server_tool_use | server_result
        )
        self.ident = ident  # part id (text, thinking) or tool call id
        self.name = name
        self.pieces: list[str] = []  # text, thinking or input JSON as streamed
        self.signature = ""
        self.citations: list[Any] | None = None
        self.whole = whole  # redacted_thinking / server tool result: sent back verbatim
        self.tool_input: Any = {}
        self.server = block_type in SERVER_TOOL_BLOCKS

    def as_content(self) -> dict[str, Any] | None:
        """The block as Messages API assistant content (None: nothing to send back)."""
        kind = self.type
        if kind == "text":
            text = "".join(self.pieces)
            if not text:
                return None
            out: dict[str, Any] = {"type": "text", "text": text}
            if self.citations:
                out["citations"] = list(self.citations)
            return out
        if kind == "thinking":
            return {"type": "thinking", "thinking": "".join(self.pieces), "signature": self.signature}
        if kind in ("redacted_thinking", "server_result"):
            return dict(self.whole or {})
        return {"type": kind, "id": self.ident, "name": self.name, "input": self.tool_input}


class StreamTranslator:
    """Anthropic stream events → chunks (see the module docstring). One per model call (api
    backend) or per turn (sdk backend: ``message_start`` begins each model call afresh)."""

    def __init__(self, *, sources: set[str] | None = None, show_unparsed_input: bool = False) -> None:
        self.sources = sources if sources is not None else set()  # cited sources already sent
        self.show_unparsed_input = show_unparsed_input
        self.usage = Usage()  # summed over finished messages (``flush_usage`` adds one cut short)
        self.messages = 0  # message_start events seen
        self.cut: set[str] = set()  # tool calls whose input JSON did not parse
        # per message
        self.message_id = ""
        self.stop_reason: str | None = None
        self.finished = False  # message_stop seen
        self.blocks: dict[int, Block] = {}
        self.open: dict[int, Block] = {}
        self.message_usage: dict[str, Any] = {}
        # per translator: each tool call's chunks once
        self.tool_json: dict[str, list[str]] = {}
        self.tool_names: dict[str, str] = {}
        self.tool_started: set[str] = set()
        self.tool_available: set[str] = set()
        self.tool_done: set[str] = set()

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "content_block_delta":  # the hot path: one per token batch
            block = self.open.get(event.get("index", 0))
            if block is None:
                return []
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if not text or block.type != "text":
                    return []
                block.pieces.append(text)
                return [events.text_delta(block.ident, text)]
            if delta_type == "input_json_delta":
                partial = delta.get("partial_json")
                if not partial or block.type not in TOOL_BLOCKS:
                    return []
                block.pieces.append(partial)
                if block.ident in self.tool_available:
                    return []
                return [events.tool_input_delta(block.ident, partial)]
            if delta_type == "thinking_delta":
                thinking = delta.get("thinking")
                if not thinking or block.type != "thinking":
                    return []
                block.pieces.append(thinking)
                return [events.reasoning_delta(block.ident, thinking)]
            if delta_type == "signature_delta":
                if block.type == "thinking":
                    block.signature = delta.get("signature") or ""
                return []
            if delta_type == "citations_delta" and block.type == "text":
                citation = delta.get("citation")
                if block.citations is None:
                    block.citations = []
                block.citations.append(citation)
                source = citation_source(citation, self.sources)
                return [source] if source is not None else []
            return []
        if kind == "content_block_start":
            return self._block_start(int(event.get("index", 0)), event.get("content_block") or {})
        if kind == "content_block_stop":
            return self._block_stop(int(event.get("index", 0)))
        if kind == "message_start":
            message = event.get("message") or {}
            self.message_id = str(message.get("id") or f"msg-{self.messages}")
            self.messages += 1
            self.message_usage = dict(message.get("usage") or {})
            self.stop_reason = None
            self.finished = False
            self.blocks = {}
            self.open = {}
            return [events.start_step()]
        if kind == "message_delta":
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason:
                self.stop_reason = stop_reason
            usage = event.get("usage")
            if usage:  # cumulative: replaces message_start's figures (a field left out keeps its value)
                self.message_usage.update({k: v for k, v in usage.items() if v is not None})
            return []
        if kind == "message_stop":
            out = self.close_open_blocks()
            self.flush_usage()
            self.finished = True
            return out
        return []  # ping and event types newer than this code

    def flush_usage(self) -> Usage:
        """Adds the current message's usage to ``usage`` (a call cut short counts what it
        reported) and returns the total."""
        if self.message_usage:
            self.usage.add(Usage.from_api(self.message_usage))
            self.message_usage = {}
        return self.usage

    def close_open_blocks(self) -> list[Chunk]:
        """The chunks that end every block still open (in index order)."""
        out: list[Chunk] = []
        for index in sorted(self.open):
            out += self._block_stop(index)
        return out

    # -- queries -------------------------------------------------------------------------------
    def content(self) -> list[dict[str, Any]]:
        """The current message's assistant content blocks, in order (empty text left out)."""
        out = []
        for _, block in sorted(self.blocks.items()):
            content = block.as_content()
            if content is not None:
                out.append(content)
        return out

    def message_text(self) -> str:
        """The text the current message streamed (all its text blocks)."""
        return "".join("".join(b.pieces) for _, b in sorted(self.blocks.items()) if b.type == "text")

    def tool_input(self, tool_call_id: str) -> Any:
        """A tool call's streamed input JSON, parsed (``{"_raw": text}`` when it does not parse)."""
        raw = "".join(self.tool_json.get(tool_call_id, ()))
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {"_raw": raw}

    # -- blocks --------------------------------------------------------------------------------
    def _block_start(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        block_type = block.get("type")
        if block_type == "text":
            item = self.open[index] = self.blocks[index] = Block("text", new_part_id("text"))
            if block.get("citations"):
                item.citations = list(block["citations"])
            out = [events.text_start(item.ident)]
            if block.get("text"):
                item.pieces.append(block["text"])
                out.append(events.text_delta(item.ident, block["text"]))
            return out
        if block_type == "thinking":
            item = self.open[index] = self.blocks[index] = Block("thinking", new_part_id("reasoning"))
            item.signature = block.get("signature") or ""
            out = [events.reasoning_start(item.ident)]
            if block.get("thinking"):
                item.pieces.append(block["thinking"])
                out.append(events.reasoning_delta(item.ident, block["thinking"]))
            return out
        if block_type == "redacted_thinking":
            self.blocks[index] = Block(
                "redacted_thinking", "", whole={"type": "redacted_thinking", "data": block.get("data", "")}
            )
            return []
        if block_type == "tool_use" or block_type in SERVER_TOOL_BLOCKS:
            prefix = "toolu" if block_type == "tool_use" else "srvtoolu"
            tid = str(block.get("id") or f"{prefix}-{self.message_id}-{index}")
            item = self.open[index] = self.blocks[index] = Block(
                str(block_type), tid, name=str(block.get("name") or "")
            )
            item.pieces = self.tool_json[tid] = []
            self.tool_names[tid] = item.name
            if tid in self.tool_started:
                return []
            self.tool_started.add(tid)
            return [events.tool_input_start(tid, item.name, provider_executed=item.server)]
        if is_server_tool_result(block):
            # the API ran the server tool: its whole result comes here; kept verbatim for a
            # pause_turn continuation
            self.blocks[index] = Block("server_result", "", whole=dict(block))
            tid = str(block["tool_use_id"])
            if tid not in self.tool_started or tid in self.tool_done:
                return []
            out = []
            if tid not in self.tool_available:
                self.tool_available.add(tid)
                out.append(
                    events.tool_input_available(
                        tid, self.tool_names.get(tid, ""), self.tool_input(tid), provider_executed=True
                    )
                )
            self.tool_done.add(tid)
            out.append(events.tool_output_available(tid, server_tool_output(block), provider_executed=True))
            return out
        return []  # any other (newer) block type is ignored, never fatal

    def _block_stop(self, index: int) -> list[Chunk]:
        block = self.open.pop(index, None)
        if block is None:
            return []
        if block.type == "text":
            return [events.text_end(block.ident)]
        if block.type == "thinking":
            return [events.reasoning_end(block.ident)]
        tid = block.ident  # a tool call
        raw = "".join(block.pieces)
        try:
            block.tool_input = json.loads(raw) if raw.strip() else {}
        except ValueError:
            # cut by max_tokens (or malformed): not shown as a complete call
            block.tool_input = {}
            self.cut.add(tid)
            log.warning("tool_use %s had invalid JSON input", tid)
            if not self.show_unparsed_input:
                return []
            shown: Any = {"_raw": raw}
        else:
            shown = block.tool_input
        if tid in self.tool_available:
            return []
        self.tool_available.add(tid)
        return [events.tool_input_available(tid, block.name, shown, provider_executed=block.server)]
