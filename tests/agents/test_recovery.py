"""Context-size recovery (DESIGN lesson 5) and history handling, on both backends: the real
anthropic client and the real Claude Code CLI against the real scripted model on loopback.

The scripted model's ``/toolong-over N`` (docs/scripted_model.md) fails every request of the
conversation whose system + messages exceed N characters, so a test can make the full history
fail and a shorter one succeed; ``/toolong`` fails whatever the size.
"""

from __future__ import annotations

import json
import time

import pytest
from claude_agent_sdk import AssistantMessage, ResultMessage, SystemMessage, TextBlock
from claude_agent_sdk._errors import ProcessError

from agents import recovery
from agents.backends.api import ApiBackend, history_to_messages
from agents.backends.sdk import classify_sdk_exception, transcript_gap
from agents.backends.sdk_adapter import SdkTranslator
from agents.errors import ErrorKind
from agents.turn import HistoryMessage, TurnInput, TurnResult, Usage
from scripted_model.directives import request_chars

from .conftest import ERROR_TURN, TEXT_TURN, chunk_types, requests_since, run_turn_chunks, text_of, turn_input

pytestmark = pytest.mark.usefixtures("scripted_model", "fast_retries")


make_input = turn_input


async def turn(inp: TurnInput, timeout: float = 60.0) -> tuple[list[dict], TurnResult]:
    return await run_turn_chunks(inp, timeout)


def statuses(chunks: list[dict]) -> list[str]:
    return [c["data"]["code"] for c in chunks if c["type"] == "data-status"]


def user(text: str, **extra) -> HistoryMessage:
    return HistoryMessage(role="user", parts=[{"type": "text", "text": text}], **extra)


def assistant(*parts: dict, **extra) -> HistoryMessage:
    return HistoryMessage(role="assistant", parts=list(parts), **extra)


def text_part(text: str) -> dict:
    return {"type": "text", "text": text, "state": "done"}


def long_history(turns: int, size: int) -> list[HistoryMessage]:
    history = []
    for i in range(turns):
        history.append(user(f"question {i} " + f"q{i}word " * (size // 8)))
        history.append(
            assistant({"type": "step-start"}, text_part(f"answer {i} " + f"a{i}word " * (size // 8)))
        )
    return history


def bodies(server, mark: int) -> list[dict]:
    return [r for r in requests_since(server, mark)]


def newest_user_json(request: dict) -> str:
    messages = request["body"]["messages"]
    return json.dumps([m for m in messages if m["role"] == "user"][-1])


# ---------------------------------------------------------------------------------------------
# The ladder, api backend
# ---------------------------------------------------------------------------------------------


async def test_api_full_history_too_long_then_compacted_succeeds(workspace, scripted_model, settings):
    settings.AGENT_COMPACT_KEEP_CHARS = 2_500
    history = long_history(3, 1_600)
    mark = len(scripted_model.requests)
    chunks, result = await turn(make_input(workspace, "/toolong-over 6000 and now?", history=history))

    assert result.error is None, result.error
    assert statuses(chunks) == ["compacting-context"]
    status_at = next(i for i, c in enumerate(chunks) if c["type"] == "data-status")
    assert status_at == 1  # right after start, before any content
    assert chunk_types(chunks) == TEXT_TURN
    assert 'you said "/toolong-over 6000 and now?"' in text_of(chunks)

    full, summary, compacted = bodies(scripted_model, mark)
    assert full["status"] == 400 and request_chars(full["body"]) > 6000
    assert "q0word" in json.dumps(full["body"]["messages"])
    # The summary request: the older messages, bounded, through the model (a side request).
    assert summary["directive"] == "side" and "Summarise this conversation" in json.dumps(
        summary["body"]["system"]
    )
    assert "q0word" in json.dumps(summary["body"]["messages"])
    # The compacted request: the summary plus only the newest messages.
    assert compacted["status"] == 200 and request_chars(compacted["body"]) <= 6000
    sent = json.dumps(compacted["body"]["messages"])
    assert recovery.SUMMARY_MARKER in sent
    assert "q0word" not in sent and "a2word" in sent
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0


async def test_api_history_rung_when_compacted_is_still_too_long(workspace, scripted_model, settings):
    # Everything fits the compaction budget, so compacting cannot shrink it; the DB-history rung
    # keeps only the newest messages within AGENT_RECOVERY_HISTORY_CHARS.
    settings.AGENT_COMPACT_KEEP_CHARS = 100_000
    settings.AGENT_RECOVERY_HISTORY_CHARS = 1_500
    mark = len(scripted_model.requests)
    chunks, result = await turn(
        make_input(workspace, "/toolong-over 4000 go", history=long_history(2, 1_600))
    )
    assert result.error is None, result.error
    assert statuses(chunks) == ["compacting-context", "history-only"]
    requests = bodies(scripted_model, mark)
    assert [r["status"] for r in requests] == [400, 400, 200]  # full, compacted (no summary needed), history
    assert "a1word" in json.dumps(requests[-1]["body"]["messages"])
    assert "q0word" not in json.dumps(requests[-1]["body"]["messages"])


async def test_api_nothing_fits_ends_with_one_error_suggesting_a_new_chat(workspace, scripted_model):
    mark = len(scripted_model.requests)
    chunks, result = await turn(make_input(workspace, "/toolong", history=long_history(2, 200)))
    assert chunk_types(chunks) == ERROR_TURN
    assert statuses(chunks) == ["compacting-context", "history-only"]
    assert result.error is not None and result.error.kind == ErrorKind.PROMPT_TOO_LONG
    [error] = [c for c in chunks if c["type"] == "error"]
    assert "new chat" in error["errorText"] and error["errorText"] == result.error.message
    assert [r["status"] for r in bodies(scripted_model, mark) if r["directive"] != "side"] == [400, 400, 400]

    # Without any history there is nothing to shorten: no rung, one error.
    mark = len(scripted_model.requests)
    chunks, result = await turn(make_input(workspace, "/toolong"))
    assert chunk_types(chunks) == ERROR_TURN and statuses(chunks) == []
    assert "new chat" in result.error.message
    assert len(bodies(scripted_model, mark)) == 1


async def test_api_no_retry_once_content_was_streamed(workspace, scripted_model):
    # The first call fits and streams text + a tool call; the tool's output makes the follow-up
    # request too long. Content already reached the client, so nothing is retried.
    mark = len(scripted_model.requests)
    chunks, result = await turn(
        make_input(workspace, "/toolong-over 3000 /tool bash seq 1 2000", history=long_history(1, 100))
    )
    assert result.error is not None and result.error.kind == ErrorKind.PROMPT_TOO_LONG
    assert statuses(chunks) == []
    assert chunk_types(chunks) == [
        "start", "start-step", "text-start", "text-delta", "text-end",
        "tool-input-start", "tool-input-delta", "tool-input-available",
        "tool-output-available", "finish-step",
        "data-usage", "error",
    ]  # fmt: skip
    assert [r["status"] for r in bodies(scripted_model, mark)] == [200, 400]


async def test_compaction_falls_back_to_truncation_when_summarising_fails(settings):
    # A model endpoint that refuses connections: the summary cannot be written.
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"
    settings.AGENT_COMPACT_KEEP_CHARS = 2_500
    usage = Usage()
    started = time.monotonic()
    compacted, summarised = await recovery.compact_history(
        long_history(3, 1_600), model="claude-sonnet-4-5", usage=usage
    )
    assert time.monotonic() - started < 10
    assert not summarised and usage.input_tokens == 0
    assert compacted[0].parts[0]["text"] == recovery.DROPPED_MARKER
    assert "a2word" in json.dumps(compacted[-1].parts) and "q0word" not in json.dumps(
        [m.parts for m in compacted]
    )
    assert sum(recovery.message_chars(m) for m in compacted[1:]) <= 2_500


def test_truncation_keeps_newest_whole_messages_and_clips_giants():
    giant = assistant(
        {
            "type": "tool-Bash",
            "toolCallId": "t1",
            "state": "output-available",
            "input": {"command": "x"},
            "output": "o" * 50_000,
        }
    )
    history = [user("old " * 300), assistant(text_part("old answer")), user("run it"), giant]
    kept = recovery.truncate_history(history, max_chars=3_000)
    assert [m.role for m in kept] == [
        "user",
        "assistant",
    ]  # the old answer is dropped: starts with a user message
    assert kept[0].parts[0]["text"] == "run it"
    assert (
        kept[-1].parts[0]["output"].endswith(recovery.CLIP_NOTE) and len(kept[-1].parts[0]["output"]) < 3_000
    )
    assert kept[-1].parts[0]["toolCallId"] == "t1"  # the call stays, so its pair stays valid
    assert (
        recovery.truncate_history([user("x" * 10_000)], max_chars=100)[0]
        .parts[0]["text"]
        .endswith(recovery.CLIP_NOTE)
    )


# ---------------------------------------------------------------------------------------------
# History rebuilding (api backend)
# ---------------------------------------------------------------------------------------------


def assert_valid_messages(messages: list[dict]) -> None:
    """What the Messages API enforces (DESIGN lesson 4)."""
    assert messages[0]["role"] == "user"
    for a, b in zip(messages, messages[1:]):
        assert a["role"] != b["role"], "roles must alternate"
    for index, message in enumerate(messages):
        assert message["content"], "no empty message"
        if message["role"] == "assistant":
            uses = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
            if uses:
                following = messages[index + 1]
                results = [b["tool_use_id"] for b in following["content"] if b["type"] == "tool_result"]
                assert sorted(results) == sorted(uses)
                kinds = [b["type"] for b in following["content"]]
                assert kinds == sorted(kinds, key=lambda k: k != "tool_result"), "tool_result blocks first"
        else:
            results = [b["tool_use_id"] for b in message["content"] if b["type"] == "tool_result"]
            if results:
                previous = messages[index - 1]
                assert set(results) <= {b["id"] for b in previous["content"] if b["type"] == "tool_use"}


EDGE_HISTORY = [
    HistoryMessage(
        role="user",
        parts=[
            {"type": "text", "text": "look at this"},
            {
                "type": "file",
                "mediaType": "image/png",
                "filename": "dot.png",
                "url": "data:image/png;base64,AAAA",
            },
        ],
    ),
    assistant(
        {"type": "step-start"},
        {"type": "reasoning", "text": "hmm", "state": "done"},
        text_part("I'll run two things."),
        {
            "type": "tool-Bash",
            "toolCallId": "call_ok",
            "state": "output-available",
            "input": {"command": "ls"},
            "output": "a.txt",
        },
        {
            "type": "tool-Bash",
            "toolCallId": "call_err",
            "state": "output-error",
            "input": {"command": "cat /etc/x"},
            "errorText": "denied",
        },
        {"type": "step-start"},
        text_part("Done with step one."),
        # interrupted: the turn was stopped before this call produced output
        {
            "type": "tool-Bash",
            "toolCallId": "call_cut",
            "state": "input-available",
            "input": {"command": "sleep 100"},
        },
    ),
    # markers persisted for the user: never a turn for the model
    HistoryMessage(role="assistant", parts=[text_part("Stopped.")], kind="stopped"),
    user("and then?"),
    HistoryMessage(role="assistant", parts=[text_part("The model is overloaded.")], kind="retryable_error"),
    HistoryMessage(role="assistant", parts=[text_part("Something went wrong")], kind="error"),
    # two assistant messages in a row (e.g. a regenerate): merged, pairs kept
    assistant(
        {"type": "step-start"},
        {
            "type": "dynamic-tool",
            "toolName": "Read",
            "toolCallId": "call_dyn",
            "state": "output-available",
            "input": {"file_path": "a.txt"},
            "output": {"content": "A"},
        },
    ),
    assistant({"type": "step-start"}, text_part("It says A.")),
    assistant({"type": "step-start"}, {"type": "reasoning", "text": "only thinking", "state": "done"}),
]


def test_history_rebuild_edge_cases(tmp_path):
    messages = history_to_messages(EDGE_HISTORY)
    assert_valid_messages(messages)
    flat = json.dumps(messages)
    assert "Stopped." not in flat and "overloaded" not in flat and "Something went wrong" not in flat
    assert "[attached earlier: dot.png (image/png)]" in flat
    assert "hmm" not in flat and "only thinking" not in flat  # unsigned reasoning is not replayed
    results = {
        b["tool_use_id"]: b
        for m in messages
        if m["role"] == "user"
        for b in m["content"]
        if b["type"] == "tool_result"
    }
    assert results["call_ok"]["content"] == "a.txt" and not results["call_ok"].get("is_error")
    assert results["call_err"] == {
        "type": "tool_result",
        "tool_use_id": "call_err",
        "content": "denied",
        "is_error": True,
    }
    assert results["call_cut"]["is_error"] and "did not finish" in results["call_cut"]["content"]
    assert json.loads(results["call_dyn"]["content"]) == {"content": "A"}
    # The stopped turn's text after its first step stays in the same assistant turn as its calls.
    texts = [
        b["text"] for m in messages if m["role"] == "assistant" for b in m["content"] if b["type"] == "text"
    ]
    assert texts == ["I'll run two things.", "Done with step one.", "It says A."]

    # Truncated for recovery, the history is still valid (no orphaned tool_result).
    for budget in (50, 200, 600, 1_000, 5_000):
        truncated = recovery.truncate_history(EDGE_HISTORY, max_chars=budget)
        assert_valid_messages(ApiBackend().build_messages(make_input(tmp_path, "next", history=truncated)))


async def test_rebuilt_history_reaches_the_model(workspace, scripted_model):
    mark = len(scripted_model.requests)
    inp = make_input(
        workspace, "what now?", history=[*EDGE_HISTORY, user("what now?")]
    )  # new message included: not sent twice
    chunks, result = await turn(inp)
    assert result.error is None and 'you said "what now?"' in text_of(chunks)
    [request] = bodies(scripted_model, mark)
    sent = [{k: v for k, v in m.items()} for m in request["body"]["messages"]]
    for message in sent:  # compare without the prompt-caching marker
        message["content"] = [
            {k: v for k, v in b.items() if k != "cache_control"} for b in message["content"]
        ]
    assert sent == ApiBackend().build_messages(inp)
    assert_valid_messages(sent)
    assert json.dumps(sent).count("what now?") == 1


# ---------------------------------------------------------------------------------------------
# Transcript gaps and CLI compaction (sdk backend, unit level)
# ---------------------------------------------------------------------------------------------


def test_transcript_gap_rule():
    history = [
        user("one"),
        assistant(text_part("1")),
        user("two"),
        assistant(text_part("2")),
        user("three"),
        assistant(text_part("3")),
    ]
    assert transcript_gap(history, ["one", "two", "three"]) == []
    # turn "three" ran elsewhere (api backend, or a lost mirror batch)
    assert transcript_gap(history, ["<system-reminder>x</system-reminder>", "one", "two"]) == history[4:]
    # turn two and three missing
    assert transcript_gap(history, ["one"]) == history[2:]
    # a text sent with the attachment note appended still counts
    assert transcript_gap(history, ["one", "two", "three\n\n[Attached files saved in uploads/: a.txt]"]) == []
    # a short text inside a longer one does not count as covered
    assert transcript_gap(history, ["one", "two and three"]) == history[2:]
    # nothing of the DB in the transcript: all of it is missing
    assert transcript_gap(history, ["unrelated"]) == history


def _result(**extra) -> ResultMessage:
    fields = {
        "subtype": "success",
        "duration_ms": 1,
        "duration_api_ms": 0,
        "is_error": False,
        "num_turns": 1,
        "session_id": "s1",
    }
    return ResultMessage(**{**fields, **extra})


def test_prompt_too_long_is_surfaced_from_all_three_cli_shapes():
    # 1. an exception (the CLI process failed with the text)
    error = classify_sdk_exception(
        ProcessError("Command failed with exit code 1", exit_code=1, stderr="Prompt is too long")
    )
    assert error.kind == ErrorKind.PROMPT_TOO_LONG
    # 2. AssistantMessage.error (a synthetic message) + an error result
    translator = SdkTranslator()
    synthetic = AssistantMessage(
        content=[TextBlock(text="Prompt is too long")], model="<synthetic>", error="invalid_request"
    )
    assert translator.feed(synthetic) == []  # never shown as the answer
    translator.feed(_result(is_error=True, result="Prompt is too long"))
    assert translator.error().kind == ErrorKind.PROMPT_TOO_LONG
    # 3. a *successful* result whose text says so
    translator = SdkTranslator()
    translator.feed(_result(result="Prompt is too long"))
    assert translator.error().kind == ErrorKind.PROMPT_TOO_LONG


def test_cli_compaction_is_a_status_never_text():
    translator = SdkTranslator()
    status = SystemMessage(
        subtype="status", data={"type": "system", "subtype": "status", "status": "compacting"}
    )
    boundary = SystemMessage(
        subtype="compact_boundary",
        data={"type": "system", "subtype": "compact_boundary", "compact_metadata": {"trigger": "auto"}},
    )
    chunks = translator.compaction_started()  # the PreCompact hook
    chunks += translator.feed(status)  # and the status message of the same compaction
    chunks += translator.feed(boundary)
    assert [(c["type"], c["data"]["code"], c.get("transient")) for c in chunks] == [
        ("data-status", "compacting", True),
        ("data-status", "compacted", True),
    ]
    assert chunks[0]["data"]["message"] == "Compacting conversation…"
    assert translator.compaction_started() != []  # a later compaction is announced again


# ---------------------------------------------------------------------------------------------
# The real CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.cli
async def test_sdk_resumed_transcript_too_long_then_fresh_compacted_session(
    workspace, scripted_model, settings
):
    # The CLI's own reactive compaction would rescue this turn first (next test); switched off
    # here, the runtime's ladder is what remains.
    settings.AGENT_SDK_EXTRA_ENV = {"DISABLE_COMPACT": "1"}
    settings.AGENT_COMPACT_KEEP_CHARS = 600
    bulk = "kiwi " * 1_500
    mark = len(scripted_model.requests)
    first_chunks, first = await turn(make_input(workspace, f"remember {bulk}", backend="sdk"))
    assert first.error is None and first.agent_session_id
    [first_request] = [
        r for r in bodies(scripted_model, mark) if "remember kiwi" in json.dumps(r["body"]["messages"])
    ]
    limit = request_chars(first_request["body"]) - 3_000  # the resumed transcript alone exceeds it

    history = [user(f"remember {bulk}"), assistant({"type": "step-start"}, text_part(text_of(first_chunks)))]
    mark = len(scripted_model.requests)
    text = f"/toolong-over {limit} next"
    chunks, result = await turn(
        make_input(workspace, text, backend="sdk", history=history, agent_session_id=first.agent_session_id)
    )

    assert result.error is None, result.error
    assert statuses(chunks) == ["compacting-context"]
    assert f'you said "{text}"' in text_of(chunks)
    main = [
        r
        for r in bodies(scripted_model, mark)
        if r["directive"] != "side" or "Summarise" in json.dumps(r["body"].get("system"))
    ]
    assert [r["status"] for r in main][:1] == [400] and main[-1]["status"] == 200
    assert any(
        "Summarise this conversation" in json.dumps(r["body"].get("system")) for r in main
    )  # our summary call
    fresh = main[-1]
    assert request_chars(fresh["body"]) <= limit
    newest = newest_user_json(fresh)
    assert "<conversation_context>" in newest and recovery.SUMMARY_MARKER in newest
    assert (
        json.dumps(fresh["body"]["messages"]).count("kiwi") < 100
    )  # the bulk of turn 1 is gone (the echo quotes a bit)
    assert (
        result.agent_session_id and result.agent_session_id != first.agent_session_id
    )  # a fresh CLI session


@pytest.mark.cli
async def test_sdk_cli_reactive_compaction_is_a_status_and_never_text(workspace, scripted_model):
    # The CLI answers "prompt is too long" by compacting its transcript itself and retrying: the
    # user sees two status notes; the compaction summary request's answer is never shown.
    bulk = "kiwi " * 1_500
    mark = len(scripted_model.requests)
    first_chunks, first = await turn(make_input(workspace, f"remember {bulk}", backend="sdk"))
    [first_request] = [
        r for r in bodies(scripted_model, mark) if "remember kiwi" in json.dumps(r["body"]["messages"])
    ]
    limit = request_chars(first_request["body"]) - 3_000
    history = [user(f"remember {bulk}"), assistant({"type": "step-start"}, text_part(text_of(first_chunks)))]
    mark = len(scripted_model.requests)
    chunks, result = await turn(
        make_input(
            workspace,
            f"/toolong-over {limit} /long 3",
            backend="sdk",
            history=history,
            agent_session_id=first.agent_session_id,
        )
    )
    assert result.error is None, result.error
    assert statuses(chunks) == ["compacting", "compacted"]
    assert text_of(chunks) == "w0 w1 w2 "  # nothing of the compaction summary
    assert chunk_types(chunks) == TEXT_TURN
    requests = bodies(scripted_model, mark)
    assert requests[0]["status"] == 400 and requests[-1]["status"] == 200
    assert any(
        "create a detailed summary of the conversation" in json.dumps(r["body"]["messages"]) for r in requests
    )
    assert result.agent_session_id == first.agent_session_id  # the CLI kept its session


@pytest.mark.cli
async def test_sdk_gap_turns_are_added_as_context_once(workspace, scripted_model):
    mark = len(scripted_model.requests)
    _, first = await turn(make_input(workspace, "remember banana", backend="sdk"))
    assert first.agent_session_id
    # Turn 2 ran on the api backend: it is in the DB history but not in the CLI transcript.
    history = [
        user("remember banana"), assistant(text_part("ok banana")),
        user("and remember mango"), assistant(text_part("ok mango")),
    ]  # fmt: skip
    mark = len(scripted_model.requests)
    chunks, third = await turn(
        make_input(
            workspace,
            "which fruits?",
            backend="sdk",
            history=history,
            agent_session_id=first.agent_session_id,
        )
    )
    assert third.error is None and third.agent_session_id == first.agent_session_id
    assert 'you said "which fruits?"' in text_of(chunks)  # the context is not what the user said
    [request] = [
        r for r in bodies(scripted_model, mark) if "which fruits?" in json.dumps(r["body"]["messages"])
    ]
    newest = newest_user_json(request)
    assert "<conversation_context>" in newest and "and remember mango" in newest and "ok mango" in newest
    assert "remember banana" not in newest  # covered by the transcript: not repeated
    assert "remember banana" in json.dumps(request["body"]["messages"])  # ... it is resumed

    # Next turn: the transcript now holds the gap (it went in with the prompt): nothing is added.
    history += [user("which fruits?"), assistant(text_part(text_of(chunks)))]
    mark = len(scripted_model.requests)
    _, fourth = await turn(
        make_input(
            workspace, "thanks", backend="sdk", history=history, agent_session_id=first.agent_session_id
        )
    )
    assert fourth.error is None
    [request] = [r for r in bodies(scripted_model, mark) if "thanks" in json.dumps(r["body"]["messages"])]
    assert "<conversation_context>" not in newest_user_json(request)
    assert "and remember mango" in json.dumps(request["body"]["messages"])


@pytest.mark.cli
async def test_sdk_nothing_fits_ends_with_one_error(workspace, scripted_model, settings):
    settings.AGENT_SDK_EXTRA_ENV = {"DISABLE_COMPACT": "1"}
    _, first = await turn(make_input(workspace, "hello", backend="sdk"))
    history = [user("hello"), assistant(text_part("hi"))]
    chunks, result = await turn(
        make_input(
            workspace, "/toolong", backend="sdk", history=history, agent_session_id=first.agent_session_id
        )
    )
    assert chunk_types(chunks) == ERROR_TURN
    assert statuses(chunks) == ["compacting-context", "history-only"]
    assert (
        result.error is not None
        and result.error.kind == ErrorKind.PROMPT_TOO_LONG
        and "new chat" in result.error.message
    )
    assert result.agent_session_id == first.agent_session_id  # the chat keeps its own CLI session
