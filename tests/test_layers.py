"""The layers of docs/architecture.md, kept by tests: who may import whom, and a pure core.

The protocol package must stay free of I/O so that it can be driven by feeding it input,
in tests and by any event loop; the relay must not depend on the peer, nor the display on
the transfer drivers. These tests read the imports of every module (statically, so that a
lazy import inside a function counts too) and import the pure package in a fresh
interpreter to see what it really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "p2p_copy"

#: Layer -> the layers (and top-level modules) it may import. Top-level modules:
#: errors (the exception tree), results (what a transfer returns), _version, testing,
#: signals (the CLI's and the relay's signal handlers on any event loop).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "results": {"protocol"},
    "protocol": {"protocol", "errors"},
    "storage": {"storage", "protocol", "errors", "results"},
    "display": {"display", "protocol", "errors", "results"},
    "inprocess": set(),
    "signals": set(),
    "relay": {"relay", "protocol", "errors", "inprocess", "signals", "web", "_version"},
    # The browser peer's page: data only (relay/web.py serves it).
    "web": set(),
    "peer": {"peer", "protocol", "storage", "display", "errors", "results", "inprocess"},
    "cli": {"cli", "peer", "protocol", "storage", "display", "relay", "errors", "results",
            "_version", "signals"},
    "testing": {"relay"},
    # drop()/offer(): the kernel's side (peer), its relay (relay, cli.config's choice of
    # the user's relay) and the panel, whose JavaScript is the browser peer (web).
    "jupyter": {"jupyter", "peer", "relay", "cli", "display", "protocol", "errors",
                "results", "web"},
    "__init__": {"peer", "protocol", "relay", "jupyter", "errors", "results", "_version"},
    "__main__": {"cli"},
}

#: Modules the pure core must never load, directly or through anything it imports.
IO_MODULES = ("asyncio", "websockets", "socket", "ssl", "selectors")


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_layers(path: Path, text: str | None = None) -> set[str]:
    """The layers ``path`` (or ``text`` standing there) imports from inside the package,
    wherever the import stands."""
    package_parts = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8") if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                dotted = [*base, *(node.module.split(".") if node.module else [])]
                if dotted:
                    found.add(dotted[0])
                else:  # from . import x, at the top
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "p2p_copy":
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "p2p_copy" and len(parts) > 1:
                    found.add(parts[1])
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path: Path) -> None:
    """A module imports only its own layer and the ones architecture.md puts below it."""
    layer = _layer(path)
    assert layer in ALLOWED, f"{path}: a module outside the known layers"
    wrong = _imported_layers(path) - ALLOWED[layer] - {layer}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


def test_the_protocol_package_loads_no_io_module() -> None:
    """Importing every protocol module in a fresh interpreter loads no asyncio, websockets,
    socket, ssl or selectors: the core stays free of I/O."""
    modules = sorted(p.stem for p in (PACKAGE / "protocol").glob("*.py") if p.stem != "__init__")
    assert "transfer" in modules and "messages" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('p2p_copy.protocol.' + m)\n"
        f"print(sorted(set({IO_MODULES!r}) & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_rules_themselves_catch_a_wrong_import() -> None:
    """The import reader sees lazy, relative and absolute imports (so the rules can fail)."""
    where = PACKAGE / "protocol" / "messages.py"
    text = where.read_text("utf-8") + (
        "\ndef f():\n    from ..peer import api\n    import p2p_copy.relay.server\n"
        "    from p2p_copy.display.progress import make_progress\n")
    assert {"peer", "relay", "display"} <= _imported_layers(where, text)


def test_every_module_imports_without_posix_only_modules() -> None:
    """Windows has no resource, fcntl, pwd, grp, termios or readline: every module of the
    package still imports where they are missing (issue 23; what runs there is another
    matter, and README says what was verified where)."""
    modules = sorted(
        "p2p_copy." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    code = (
        "import sys, importlib\n"
        "for m in ('resource', 'fcntl', 'pwd', 'grp', 'termios', 'readline'):\n"
        "    sys.modules[m] = None\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
