"""Keeps one turn's chunk stream well formed, whatever the backend does (DESIGN lesson 2).

Every content chunk of a turn passes through ``ChunkTracker.feed``, which returns the chunks to
emit (usually just the one given). It knows the open text/reasoning parts, the open step and
every tool call's state, and it

- drops a tool call emitted twice (a second ``tool-input-start``/``-available`` or a second
  output for the same ``toolCallId``) and outputs for tool calls it never saw;
- opens a text/reasoning part that receives a delta before its start;
- closes open text/reasoning parts before ``finish-step`` (parallel tool calls stay open: a
  message made only of tool_use blocks is a continuation, not the end);
- on ``close_open()`` returns the chunks that close everything still open: ``text-end`` /
  ``reasoning-end``, ``tool-output-error`` ("Tool call did not finish") for tool calls that never
  got an output, then ``finish-step``, so no client spinner hangs.
"""

from __future__ import annotations

from typing import Any

from agents import events
from agents.events import Chunk

TOOL_NOT_FINISHED = "Tool call did not finish."

# Chunks that do not count as content reaching the user (retries stay allowed after them).
NON_CONTENT_TYPES = frozenset({"start", "start-step", "finish-step", "finish", "error", "abort"})


# -- what both backends show the same way (the stream events themselves: agents/translate.py) ----

#: what a refusal looks like to the user: the text that streamed, this note, and ``finish`` with
#: ``finishReason: "content-filter"`` plus ``messageMetadata: {"refusal": true}``
REFUSAL_MESSAGE = "The model declined to continue this answer."
#: the ``tool-output-error`` of a tool call cut by the output limit (it never runs)
CUT_TOOL_CALL = "Not run: the answer hit the model's output limit while writing this tool call."


TOOL_OUTPUT_STATES = {
    "tool-output-available": "output-available",
    "tool-output-error": "output-error",
    "tool-output-denied": "output-denied",
}


class ChunkTracker:
    def __init__(self) -> None:
        self.open_text: list[str] = []
        self.open_reasoning: list[str] = []
        self.step_open = False
        # toolCallId -> "input-streaming" | "input-available" | a TOOL_OUTPUT_STATES value
        self.tools: dict[str, str] = {}
        self.tool_names: dict[str, str] = {}
        self.has_content = False  # any text/reasoning/tool chunk passed (no more retries)

    # -- queries ----------------------------------------------------------------------------
    def open_tool_calls(self) -> list[str]:
        return [tid for tid, state in self.tools.items() if state in ("input-streaming", "input-available")]

    def tool_state(self, tool_call_id: str) -> str | None:
        return self.tools.get(tool_call_id)

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, chunk: Chunk) -> list[Chunk]:
        kind = chunk.get("type", "")
        handler = _HANDLERS.get(kind)
        out = handler(self, chunk) if handler else [chunk]
        if any(c["type"] not in NON_CONTENT_TYPES and not c["type"].startswith("data-") for c in out):
            self.has_content = True
        return out

    def _start_step(self, chunk: Chunk) -> list[Chunk]:
        out = self._finish_step(events.finish_step()) if self.step_open else []
        self.step_open = True
        return out + [chunk]

    def _finish_step(self, chunk: Chunk) -> list[Chunk]:
        if not self.step_open:
            return []
        out = self._close_parts()
        self.step_open = False
        return out + [chunk]

    def _ensure_step(self) -> list[Chunk]:
        if self.step_open:
            return []
        self.step_open = True
        return [events.start_step()]

    def _part_start(self, chunk: Chunk, opened: list[str]) -> list[Chunk]:
        if chunk["id"] in opened:
            return []
        opened.append(chunk["id"])
        return self._ensure_step() + [chunk]

    def _part_delta(self, chunk: Chunk, opened: list[str], start_fn: Any) -> list[Chunk]:
        out: list[Chunk] = []
        if chunk["id"] not in opened:
            out += self._part_start(start_fn(chunk["id"]), opened)
        return out + [chunk]

    def _part_end(self, chunk: Chunk, opened: list[str]) -> list[Chunk]:
        if chunk["id"] not in opened:
            return []
        opened.remove(chunk["id"])
        return [chunk]

    def _tool_input_start(self, chunk: Chunk) -> list[Chunk]:
        tid = chunk["toolCallId"]
        if tid in self.tools:
            return []
        self.tools[tid] = "input-streaming"
        self.tool_names[tid] = chunk.get("toolName", "")
        return self._ensure_step() + [chunk]

    def _tool_input_delta(self, chunk: Chunk) -> list[Chunk]:
        return [chunk] if self.tools.get(chunk["toolCallId"]) == "input-streaming" else []

    def _tool_input_available(self, chunk: Chunk) -> list[Chunk]:
        tid = chunk["toolCallId"]
        state = self.tools.get(tid)
        if state not in (None, "input-streaming"):
            return []
        out = self._ensure_step() if state is None else []
        self.tools[tid] = "input-available"
        self.tool_names[tid] = chunk.get("toolName", "") or self.tool_names.get(tid, "")
        return out + [chunk]

    def _tool_output(self, chunk: Chunk) -> list[Chunk]:
        tid = chunk["toolCallId"]
        if self.tools.get(tid) not in ("input-streaming", "input-available"):
            return []
        self.tools[tid] = TOOL_OUTPUT_STATES[chunk["type"]]
        return [chunk]

    # -- closing ----------------------------------------------------------------------------
    def _close_parts(self) -> list[Chunk]:
        out = [events.reasoning_end(pid) for pid in self.open_reasoning]
        out += [events.text_end(pid) for pid in self.open_text]
        self.open_reasoning.clear()
        self.open_text.clear()
        return out

    def close_open(self, *, tool_error: str = TOOL_NOT_FINISHED) -> list[Chunk]:
        """The chunks that close everything still open (call at the end of a stream)."""
        out = self._close_parts()
        for tid in self.open_tool_calls():
            self.tools[tid] = "output-error"
            out.append(events.tool_output_error(tid, tool_error))
        if self.step_open:
            self.step_open = False
            out.append(events.finish_step())
        return out


_HANDLERS: dict[str, Any] = {
    "start-step": ChunkTracker._start_step,
    "finish-step": ChunkTracker._finish_step,
    "text-start": lambda self, c: self._part_start(c, self.open_text),
    "text-delta": lambda self, c: self._part_delta(c, self.open_text, events.text_start),
    "text-end": lambda self, c: self._part_end(c, self.open_text),
    "reasoning-start": lambda self, c: self._part_start(c, self.open_reasoning),
    "reasoning-delta": lambda self, c: self._part_delta(c, self.open_reasoning, events.reasoning_start),
    "reasoning-end": lambda self, c: self._part_end(c, self.open_reasoning),
    "tool-input-start": ChunkTracker._tool_input_start,
    "tool-input-delta": ChunkTracker._tool_input_delta,
    "tool-input-available": ChunkTracker._tool_input_available,
    "tool-output-available": ChunkTracker._tool_output,
    "tool-output-error": ChunkTracker._tool_output,
    "tool-output-denied": ChunkTracker._tool_output,
}
