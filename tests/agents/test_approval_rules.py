"""The tool decisions (agents/approval.py) and the approval answers a client sends
(chat/protocol.py): pure functions, every branch."""

from __future__ import annotations

import pytest

from agents.approval import ApprovalAnswer, ToolRules, rules_parse
from chat.protocol import ProtocolError, approval_replies_parse


@pytest.mark.parametrize(
    "mode,rules,tool,expected",
    [
        ("auto", {}, "Bash", "allow"),
        ("ask", {}, "Bash", "ask"),
        ("ask", {}, "Write", "ask"),
        ("ask", {}, "Read", "allow"),  # read-only tools are never asked about
        ("ask", {"Read": "deny"}, "Read", "deny"),  # …but a rule may still deny them
        ("auto", {"Bash": "ask"}, "Bash", "ask"),
        ("ask", {"Bash": "allow"}, "Bash", "allow"),  # the rule beats the mode
        ("auto", {"Bash": "deny"}, "Bash", "deny"),
        ("auto", {}, "mcp__notes__add", "ask"),  # MCP tools ask by default
        ("auto", {"mcp__notes__*": "allow"}, "mcp__notes__add", "allow"),
        ("auto", {"mcp__*": "deny", "mcp__notes__*": "allow"}, "mcp__notes__add", "allow"),  # longest prefix
        ("auto", {"mcp__*": "deny", "mcp__notes__*": "allow"}, "mcp__web__get", "deny"),
        ("plan", {}, "Bash", "deny"),  # planning: read-only tools only…
        ("plan", {}, "Grep", "allow"),
        ("plan", {}, "ExitPlanMode", "ask"),  # …and the plan goes to the user
        ("auto", {}, "ExitPlanMode", "deny"),  # no plan outside plan mode
    ],
)
def test_tool_decisions(mode, rules, tool, expected):
    assert ToolRules(mode=mode, rules=rules_parse(rules)).decide(tool) == expected


def test_an_approved_plan_lifts_the_restriction_for_the_rest_of_the_turn():
    rules = ToolRules(mode="plan")
    assert rules.decide("Bash") == "deny" and "plan mode" in rules.denial_text("Bash")
    rules.plan_approved()
    assert rules.decide("Bash") == "allow" and rules.decide("ExitPlanMode") == "deny"


def test_rules_parse_drops_unknown_decisions():
    assert rules_parse({"Bash": "ASK", "Write": "maybe", "": "deny"}) == {"Bash": "ask"}


def test_what_the_model_reads_for_each_kind_of_no():
    assert (
        ApprovalAnswer(False, "too risky").denial_text("Bash") == "The user denied this Bash call: too risky"
    )
    assert ApprovalAnswer(False).denial_text("Bash") == "The user denied this Bash call."
    assert "in time" in ApprovalAnswer(False, expired=True).denial_text("Bash")
    assert "stopped" in ApprovalAnswer(False, stopped=True).denial_text("Bash")


def _assistant(*parts):
    return [
        {"id": "u1", "role": "user", "parts": []},
        {"id": "m1", "role": "assistant", "parts": list(parts)},
    ]


def test_approval_replies_are_read_from_the_last_assistant_message():
    parts = [
        {
            "type": "tool-Bash",
            "toolCallId": "t1",
            "state": "approval-responded",
            "approval": {"id": "a1", "approved": True},
        },
        {"type": "tool-Read", "toolCallId": "t2", "state": "output-available"},
        {
            "type": "tool-Write",
            "toolCallId": "t3",
            "state": "approval-responded",
            "approval": {"id": "a3", "approved": False, "reason": " no "},
        },
    ]
    replies = approval_replies_parse(_assistant(*parts))
    assert [(r.approval_id, r.approved, r.reason) for r in replies] == [("a1", True, ""), ("a3", False, "no")]
    assert approval_replies_parse([{"id": "u1", "role": "user", "parts": []}]) == ()  # a new message
    assert approval_replies_parse([]) == ()


@pytest.mark.parametrize(
    "approval,fragment",
    [
        (None, "'approval' object"),
        ({"approved": True}, "approval.id"),
        ({"id": "a1", "approved": "yes"}, "approval.approved"),
        ({"id": "a1", "approved": False, "reason": "x" * 2001}, "approval.reason"),
        ({"id": "a1", "approved": False, "reason": "bad\x00"}, "approval.reason"),
    ],
)
def test_bad_approval_replies_are_invalid_requests(approval, fragment):
    part = {"type": "tool-Bash", "toolCallId": "t1", "state": "approval-responded", "approval": approval}
    with pytest.raises(ProtocolError) as caught:
        approval_replies_parse(_assistant(part))
    assert fragment in caught.value.message and caught.value.code == "invalid_request"
