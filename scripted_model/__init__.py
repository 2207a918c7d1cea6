"""The scripted model: an offline, deterministic Anthropic Messages API server.

A real HTTP/1.1 server (asyncio streams, its own minimal parser) that speaks enough of the
Anthropic Messages API for the real ``anthropic`` client and the real Claude Code CLI to run
against it unchanged (CONTRACT §3):

* ``POST /v1/messages``               streaming SSE or non-streaming JSON
* ``POST /v1/messages/count_tokens``  ``{"input_tokens": N}``
* anything else                       a quick 404 JSON error

The reply is decided by a directive in the newest user text (``/tool bash ls``, ``/tools 3``,
``/long 50``, ``/slow 100``, ``/stamp 10 50``, ``/error 429``, ``/toolong``, ``/drop``,
``/think``); anything else gets a short echo. See ``docs/scripted_model.md``.

A product feature (the offline demo) and a test tool, kept out of ``agents/``: production code
never imports it. The one exception is ``agents.config.model_endpoint()`` under ``DEBUG=true``
without a key or base URL, which starts it in-process. It is a Django app only so that
``python manage.py scripted_model --port N`` exists; this ``__init__`` imports nothing, so
registering the app loads none of the server.

Modules, lowest first: ``directives`` (reading the request and its user text), ``usage``
(token estimates, the toy prompt cache), ``planner`` (``ReplyPlanner`` → ``Plan``), ``stream``
(rendering a plan: SSE in the real stream grammar, or one Message), ``wire`` (its own small
HTTP/1.1 layer), ``server`` (``ScriptedModelServer``, ``ensure_scripted_model``). Pure Python,
no Django imports: ``ScriptedModelServer(port=0).start().url``.
"""
