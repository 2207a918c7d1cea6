"""The chat page's ES modules (docs/browser.md "Modules"), read as source: their imports form no
cycle and stay inside static/ (no CDN), and none of them assigns innerHTML or evaluates strings
(the page's safety rule and its strict CSP). No browser needed."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "static" / "chat"
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.MULTILINE | re.DOTALL)


def _imports() -> dict[str, list[str]]:
    graph = {}
    for path in sorted(STATIC.glob("*.js")):
        graph[path.name] = IMPORT.findall(path.read_text(encoding="utf-8"))
    return graph


def test_imports_are_local_and_acyclic():
    graph = _imports()
    assert "app.js" in graph and "page.js" in graph
    for module, targets in graph.items():
        for target in targets:
            assert target.startswith(("./", "../vendor/")), f"{module} imports {target}"
    local = {m: [t[2:] for t in targets if t.startswith("./")] for m, targets in graph.items()}
    for module, targets in local.items():
        for target in targets:
            assert target in local, f"{module} imports a missing module {target}"

    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for target in local[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in local:
        visit(module, ())
    # page.js is the shared base: it imports nothing of the page.
    assert local["page.js"] == []


def test_no_inner_html_and_no_eval():
    for path in sorted(STATIC.glob("*.js")):
        code = path.read_text(encoding="utf-8")
        code = re.sub(r"//[^\n]*", "", code)  # comments may name them
        for pattern in (
            r"\.innerHTML\s*=",
            r"\.outerHTML\s*=",
            r"insertAdjacentHTML",
            r"\beval\(",
            r"new Function\(",
        ):
            assert not re.search(pattern, code), f"{path.name}: {pattern}"
