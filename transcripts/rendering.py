"""Turn Claude Code transcript entries (JSONL lines) into a readable conversation.

Pure functions over already-scrubbed entries; the template escapes every string it prints.
The CLI's format is an internal, growing union: known shapes become conversation items, every
other entry becomes a collapsed "meta" item so nothing is silently hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Characters shown inline per text/tool payload; the JSONL download always has everything.
MAX_INLINE_CHARS = 20_000
MAX_META_CHARS = 4_000
SUBAGENT_TOOLS = {"Task", "Agent"}


@dataclass
class StoredEntry:
    seq: int
    size: int
    data: dict[str, Any]


@dataclass
class Item:
    # user | assistant | thinking | tool | tool_result | error | compact | compact_summary | system |
    # summary | meta
    kind: str
    seq: int
    size: int = 0
    timestamp: str = ""
    text: str = ""
    truncated: int = 0  # characters cut from ``text``
    label: str = ""
    # tool calls
    tool_id: str = ""
    name: str = ""
    input: str = ""
    output: str | None = None
    output_truncated: int = 0
    output_size: int = 0
    output_timestamp: str = ""
    is_error: bool = False
    subagent_anchor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _clip(text: str, limit: int = MAX_INLINE_CHARS) -> tuple[str, int]:
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return repr(value)


def _ts(entry: dict[str, Any]) -> str:
    ts = entry.get("timestamp")
    if not isinstance(ts, str):
        return ""
    return ts.replace("T", " ").rstrip("Z")[:23]


def block_text(content: Any) -> str:
    """Text of a message/tool_result ``content``: a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for block in content:
            if isinstance(block, dict):
                btype = block.get("type")
                if btype == "text":
                    pieces.append(str(block.get("text", "")))
                elif btype == "image":
                    source = block.get("source") or {}
                    pieces.append(f"[image {source.get('media_type', '')}]".replace(" ]", "]"))
                elif btype == "document":
                    pieces.append("[document]")
                elif btype == "tool_reference":
                    pieces.append(f"[tool {block.get('tool_name', '')}]")
                else:
                    pieces.append(_pretty(block))
            else:
                pieces.append(str(block))
        return "\n".join(pieces)
    if content is None:
        return ""
    return _pretty(content)


def _meta_item(entry: StoredEntry, label: str) -> Item:
    text, cut = _clip(_pretty(entry.data), MAX_META_CHARS)
    return Item(
        kind="meta",
        seq=entry.seq,
        size=entry.size,
        timestamp=_ts(entry.data),
        label=label,
        text=text,
        truncated=cut,
    )


def _agent_id(result: Any) -> str:
    if isinstance(result, dict):
        for key in ("agentId", "agent_id"):
            if isinstance(result.get(key), str) and result[key]:
                return result[key]
    return ""


def render_entries(entries: list[StoredEntry]) -> list[Item]:
    items: list[Item] = []
    tools: dict[str, Item] = {}

    for stored in entries:
        entry = stored.data
        etype = entry.get("type")
        ts = _ts(entry)
        message = entry.get("message") if isinstance(entry.get("message"), dict) else None

        if etype == "user" and message is not None:
            content = message.get("content")
            if entry.get("isCompactSummary"):
                text, cut = _clip(block_text(content))
                items.append(
                    Item(
                        kind="compact_summary",
                        seq=stored.seq,
                        size=stored.size,
                        timestamp=ts,
                        text=text,
                        truncated=cut,
                    )
                )
                continue
            blocks = (
                content
                if isinstance(content, list)
                else [{"type": "text", "text": content}]
                if isinstance(content, str)
                else []
            )
            texts: list[str] = []
            for block in blocks:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "tool_result":
                    out_text = block_text(block.get("content"))
                    out, cut = _clip(out_text)
                    tool = tools.get(str(block.get("tool_use_id", "")))
                    if tool is None:  # result without a visible call (e.g. after compaction)
                        tool = Item(
                            kind="tool_result",
                            seq=stored.seq,
                            size=stored.size,
                            timestamp=ts,
                            tool_id=str(block.get("tool_use_id", "")),
                        )
                        items.append(tool)
                    tool.output, tool.output_truncated = out, cut
                    tool.output_size = len(out_text.encode("utf-8", "replace"))
                    tool.output_timestamp = ts
                    tool.is_error = bool(block.get("is_error"))
                    agent = _agent_id(entry.get("toolUseResult"))
                    if agent and tool.name in SUBAGENT_TOOLS:
                        tool.subagent_anchor = f"subagents/agent-{agent}"
                else:
                    texts.append(block_text([block]))
            if any(t.strip() for t in texts):
                text, cut = _clip("\n".join(texts))
                kind = "meta" if entry.get("isMeta") else "user"
                items.append(
                    Item(
                        kind=kind,
                        seq=stored.seq,
                        size=stored.size,
                        timestamp=ts,
                        text=text,
                        truncated=cut,
                        label="meta user message" if kind == "meta" else "",
                    )
                )
            continue

        if etype == "assistant" and message is not None:
            content = message.get("content")
            if entry.get("isApiErrorMessage") or entry.get("error"):
                text, cut = _clip(block_text(content) or _pretty(entry.get("error")))
                items.append(
                    Item(
                        kind="error",
                        seq=stored.seq,
                        size=stored.size,
                        timestamp=ts,
                        text=text,
                        truncated=cut,
                        label=str(entry.get("error") or "API error"),
                    )
                )
                continue
            blocks = (
                content
                if isinstance(content, list)
                else [{"type": "text", "text": content}]
                if isinstance(content, str)
                else []
            )
            for block in blocks:
                if not isinstance(block, dict):
                    continue
                btype = block.get("type")
                if btype == "text":
                    text, cut = _clip(str(block.get("text", "")))
                    if text.strip():
                        items.append(
                            Item(
                                kind="assistant",
                                seq=stored.seq,
                                size=stored.size,
                                timestamp=ts,
                                text=text,
                                truncated=cut,
                                label=str(message.get("model", "")),
                            )
                        )
                elif btype in ("thinking", "redacted_thinking"):
                    raw = str(block.get("thinking", "")) if btype == "thinking" else "[redacted thinking]"
                    text, cut = _clip(raw)
                    items.append(
                        Item(
                            kind="thinking",
                            seq=stored.seq,
                            size=stored.size,
                            timestamp=ts,
                            text=text,
                            truncated=cut,
                        )
                    )
                elif btype in ("tool_use", "server_tool_use", "mcp_tool_use"):
                    tool_input, cut = _clip(_pretty(block.get("input", {})))
                    tool = Item(
                        kind="tool",
                        seq=stored.seq,
                        size=stored.size,
                        timestamp=ts,
                        tool_id=str(block.get("id", "")),
                        name=str(block.get("name", "")),
                        input=tool_input,
                        truncated=cut,
                    )
                    tools[tool.tool_id] = tool
                    items.append(tool)
                else:
                    items.append(_meta_item(stored, f"assistant block: {btype}"))
            continue

        if etype == "system":
            subtype = str(entry.get("subtype", ""))
            if subtype == "compact_boundary":
                meta = entry.get("compactMetadata") or {}
                text = str(entry.get("content", "Conversation compacted"))
                items.append(
                    Item(
                        kind="compact",
                        seq=stored.seq,
                        size=stored.size,
                        timestamp=ts,
                        text=text,
                        extra=meta if isinstance(meta, dict) else {},
                    )
                )
                continue
            level = str(entry.get("level", ""))
            text, cut = _clip(
                block_text(entry.get("content"))
                or _pretty({k: v for k, v in entry.items() if k not in ("parentUuid", "uuid", "sessionId")})
            )
            kind = "error" if level == "error" or "error" in subtype else "system"
            items.append(
                Item(
                    kind=kind,
                    seq=stored.seq,
                    size=stored.size,
                    timestamp=ts,
                    text=text,
                    truncated=cut,
                    label=subtype or "system",
                )
            )
            continue

        if etype == "summary":
            text, cut = _clip(str(entry.get("summary", "")))
            items.append(
                Item(kind="summary", seq=stored.seq, size=stored.size, timestamp=ts, text=text, truncated=cut)
            )
            continue

        label = str(etype or "entry")
        if etype == "attachment" and isinstance(entry.get("attachment"), dict):
            label = f"attachment: {entry['attachment'].get('type', '')}"
        items.append(_meta_item(stored, label))

    return items
