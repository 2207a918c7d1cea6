"""copilot_project.serverpatches: autobahn's per-frame debug-log helpers are replaced by plain
formatting once the ASGI application is imported (daphne serves that module)."""

from __future__ import annotations


def test_asgi_import_installs_plain_log_helpers_for_autobahns_protocol():
    from autobahn.websocket import protocol

    import copilot_project.asgi  # noqa: F401 - installs the patch
    from copilot_project import serverpatches

    assert protocol.hltype is serverpatches._plain_type
    assert protocol.hlval is serverpatches._plain_value
    text = protocol.hltype(protocol.WebSocketProtocol.sendData)
    assert text == "<WebSocketProtocol.sendData>" and "\x1b[" not in text
    assert protocol.hlval(42) == 42
