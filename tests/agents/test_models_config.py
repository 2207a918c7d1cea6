"""The models a chat may choose (``AGENT_MODELS``, agents.config): both forms parse into
``ModelChoice`` entries, the default is always offered, bad entries are left out and reported by
``manage.py check`` (agents.E003), per-model prices win over ``AGENT_PRICES``, and the chat's
instructions are appended to the system prompt."""

from __future__ import annotations

import pytest

from agents.checks import models_check
from agents.config import (
    INSTRUCTIONS_HEADING,
    ModelChoice,
    agent_config,
    models_parse,
    prices_parse,
    system_prompt_compose,
)
from agents.runtime import cost_usd, model_prices
from agents.turn import Usage


def test_json_form_with_names_and_prices():
    models, problems = models_parse(
        '[{"id": "claude-opus-5", "name": "Claude Opus 5", "prices": [5, 25, 0.5, 6.25]},'
        ' {"id": "claude-sonnet-5-5", "name": "Claude Sonnet 5.5"}, "claude-haiku-5=Haiku"]',
        "claude-sonnet-5-5",
    )
    assert problems == []
    assert models == (
        ModelChoice("claude-opus-5", "Claude Opus 5", (5.0, 25.0, 0.5, 6.25)),
        ModelChoice("claude-sonnet-5-5", "Claude Sonnet 5.5"),  # the default, where it was listed
        ModelChoice("claude-haiku-5", "Haiku"),
    )


def test_comma_form_and_the_default_always_in_the_list():
    models, problems = models_parse(" claude-a = Model A ,claude-b,, ", "claude-default")
    assert problems == []
    assert [(m.id, m.name) for m in models] == [
        ("claude-default", "claude-default"),
        ("claude-a", "Model A"),
        ("claude-b", "claude-b"),
    ]
    assert models_parse("", "claude-default") == ((ModelChoice("claude-default", "claude-default"),), [])
    assert models_parse(["x", {"id": "y"}], "x")[0] == (ModelChoice("x", "x"), ModelChoice("y", "y"))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[1, 2", "not valid JSON"),
        ('[{"id": "has space"}]', "invalid model id 'has space'"),
        ('[{"id": "a", "price": [1, 2]}]', "unknown key(s) price"),
        ('[{"id": "a", "prices": [1]}]', "prices need 2 to 4 numbers"),
        ('[{"id": "a", "prices": [1, -2]}]', "a price must be a non-negative number"),
        ('[{"id": "a", "prices": {"input": 1}}]', "prices need at least 'input' and 'output'"),
        ('[{"id": "a", "name": 3}]', "the name of 'a' must be a string"),
        ('["a", "a=Again"]', "model 'a' is listed twice"),
        ("[" + ", ".join(['{"id": "' + "m" * 101 + '"}']) + "]", "longer than 100 characters"),
        ("[42]", "an entry must be a string or an object"),
    ],
)
def test_bad_entries_are_left_out_and_reported(raw, problem):
    models, problems = models_parse(raw, "claude-default")
    assert any(problem in p for p in problems), problems
    assert models[0].id == "claude-default"


def test_prices_parse_derives_the_cache_prices():
    assert prices_parse([3, 15]) == (3.0, 15.0, 0.3, 3.75)
    assert prices_parse({"input": 3, "output": 15, "cache_write": 6}) == (3.0, 15.0, 0.3, 6.0)
    with pytest.raises(ValueError):
        prices_parse([True, 1])


def test_check_reports_a_malformed_list(settings):
    settings.AGENT_MODELS = "claude-a, not valid"
    [error] = models_check()
    assert error.id == "agents.E003" and "invalid model id 'not valid'" in error.msg
    settings.AGENT_MODELS = '[{"id": "claude-a", "prices": [3, 15]}]'
    assert models_check() == []


def test_config_is_typed_and_follows_the_settings(settings):
    settings.AGENT_MODEL = "claude-sonnet-5-5"
    settings.AGENT_MODELS = "claude-opus-5=Opus"
    settings.AGENT_INSTRUCTIONS_MAX_CHARS = 123
    config = agent_config()
    assert [m.id for m in config.models] == ["claude-sonnet-5-5", "claude-opus-5"]
    assert config.instructions_max_chars == 123
    assert config.model_find("claude-opus-5") == ModelChoice("claude-opus-5", "Opus")
    assert config.model_effective("claude-opus-5") == "claude-opus-5"
    assert config.model_effective("claude-retired") == "claude-sonnet-5-5"
    assert config.model_effective("") == "claude-sonnet-5-5"


def test_per_model_prices_win_over_agent_prices(settings):
    settings.AGENT_PRICES = {"opus": [100, 200]}
    settings.AGENT_MODELS = '[{"id": "claude-opus-5", "prices": [5, 25, 0.5, 6.25]}, "claude-opus-4"]'
    assert model_prices("claude-opus-5") == (5.0, 25.0, 0.5, 6.25)
    assert model_prices("claude-opus-4") == (100.0, 200.0, 10.0, 125.0)  # no own prices: the family
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-opus-5", usage) == pytest.approx(30.0)


def test_instructions_are_appended_to_the_system_prompt():
    assert system_prompt_compose("Server prompt.", "") == "Server prompt."
    assert system_prompt_compose("Server prompt.", "  \n") == "Server prompt."
    assert system_prompt_compose("Server prompt.", " Be brief. ") == (
        f"Server prompt.\n\n{INSTRUCTIONS_HEADING}\nBe brief."
    )
    assert system_prompt_compose("", "Be brief.") == f"{INSTRUCTIONS_HEADING}\nBe brief."
