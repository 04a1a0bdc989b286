"""The shape the library keeps: small modules, short functions, kinds asked only through their protocol,
and the demo's toy world outside what users import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "altadapter"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Code that compares a kind's name or checks an adapter's class, instead of asking the kind.
KIND_SWITCH = re.compile(r"kind ?(==|!=) ?['\"]|isinstance\([^)]*(MLP|Prompt|Vocab|LoRA)Adapter")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 350
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno - node.lineno < 80, (
                f"{node.name} is {node.end_lineno - node.lineno + 1} lines"
            )


def test_only_the_adapters_package_knows_which_kind_is_which():
    outside = [path for path in MODULES if PACKAGE / "adapters" not in path.parents]
    found = [
        f"{path}: {line}"
        for path in outside
        for line in path.read_text().splitlines()
        if KIND_SWITCH.search(line)
    ]
    assert not found


def test_importing_every_library_module_brings_no_toy_world():
    code = (
        "import importlib, pkgutil, sys, altadapter\n"
        "for m in pkgutil.walk_packages(altadapter.__path__, 'altadapter.'): importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('toyworld', 'demo')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True
    )
    assert result.stdout.strip() == "[]"
