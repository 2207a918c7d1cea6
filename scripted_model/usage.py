"""Usage numbers: deterministic token estimates and a toy prompt cache (docs/scripted_model.md,
"Usage numbers")."""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scripted_model.directives import JSON_SEPARATORS


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
