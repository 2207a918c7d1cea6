"""The API's JSON parser: DRF's, plus the refusals that keep bad input a 4xx.

- JSON nested deeper than Python's recursion limit (``RecursionError`` in ``json.loads``) →
  400 ``invalid_request`` (DRF's parser catches only ValueError: it was a 500).
- A lone UTF-16 surrogate anywhere (``"\\ud800"``: valid JSON, but no character; SQLite,
  PostgreSQL and the JSON renderer all fail on it) → 400 ``invalid_request``.
- Not valid JSON → 400 ``parse_error`` (DRF's ParseError, as before).

A body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is refused before parsing, by Django
(``RequestDataTooBig``), which ``chat.api.errors`` answers with 413 ``request_too_large``.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils.json import strict_constant

from chat.api.exceptions import ApiError
from chat.protocol import json_text_problem


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        encoding = get_encoding(parser_context or {})
        try:
            text = codecs.getreader(encoding)(stream).read()
            data = json.loads(text, parse_constant=strict_constant)
        except RecursionError:
            raise ApiError(
                "The JSON body is nested too deeply.", details={"body": ["nested too deeply"]}
            ) from None
        except ValueError as exc:  # includes UnicodeDecodeError
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        problem = json_text_problem(data)
        if problem is not None:
            raise ApiError(problem, details={"body": [problem]})
        return data
