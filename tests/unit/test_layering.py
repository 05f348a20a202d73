"""The sans-I/O rule (STYLE.md A.1): protocol cores read no clock and touch no
socket, and imports point toward the cores only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
CORES = ("sip", "sdp", "proxy", "media")
IO_MODULES = {"asyncio", "socket", "time", "threading", "selectors", "ssl", "subprocess"}
#: what each core package may import from the gateway itself
ALLOWED_GATEWAY_IMPORTS = {
    "sip": {"gateway.sip"},
    "sdp": {"gateway.sdp"},
    "proxy": {"gateway.proxy", "gateway.sip", "gateway.sdp"},
    "media": {"gateway.media", "gateway.sdp"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.append("." * node.level + (node.module or ""))
    return names


CORE_FILES = [p for core in CORES for p in sorted((GATEWAY / core).rglob("*.py"))]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(GATEWAY)))
def test_core_module_is_sans_io(path: Path) -> None:
    core = path.relative_to(GATEWAY).parts[0]
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in IO_MODULES, (
            f"{path.name} imports {name}: cores take bytes and time as arguments"
        )
        if name.startswith("gateway."):
            assert any(
                name == ok or name.startswith(ok + ".") for ok in ALLOWED_GATEWAY_IMPORTS[core]
            ), f"{path.name} imports {name}: imports must point toward the cores"


def test_every_core_is_checked() -> None:
    assert len(CORE_FILES) >= 20
