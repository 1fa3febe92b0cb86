"""The architecture's layers hold, and packaging maps every folder.

The contracts live in pyproject's `[tool.importlinter]`. import-linter itself cannot walk our
editable install (kubetune.api is the folder crds/, mapped by a meta-path finder, which grimp
does not follow), so this test evaluates the same contracts over the source tree with `ast`:
every import counts, including those inside functions, and chains through our own modules
are followed, as import-linter does.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _module_files() -> dict[str, Path]:
    """Every module of the distribution, by dotted name, from the package-dir mapping."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in mapping.items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith("test") for p in parts[:-1]):
                continue
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _module_files()


@cache
def imports_of(module: str) -> frozenset[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def reachable(sources: list[str], stop_at: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Internal modules reachable from sources, each with the import chain that reaches it."""
    chains = {m: [m] for m in MODULES if any(_under(m, s) for s in sources)}
    queue = list(chains)
    while queue:
        current = queue.pop()
        for imported in imports_of(current):
            if imported in MODULES and imported not in chains and not imported.startswith(stop_at):
                chains[imported] = chains[current] + [imported]
                queue.append(imported)
    return chains


def _external_violations(chains: dict[str, list[str]], forbidden: list[str]) -> list[str]:
    out = []
    for module, chain in chains.items():
        for imported in imports_of(module):
            for bad in forbidden:
                if _under(imported, bad):
                    out.append(" -> ".join(chain + [imported]))
    return out


CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]


@pytest.mark.parametrize("contract", CONTRACTS, ids=[c["name"] for c in CONTRACTS])
def test_import_contract(contract):
    if contract["type"] == "forbidden":
        chains = reachable(contract["source_modules"])
        violations = _external_violations(chains, contract["forbidden_modules"])
    elif contract["type"] == "independence":
        violations = []
        for module in contract["modules"]:
            others = [m for m in contract["modules"] if m != module]
            chains = reachable([module], stop_at=tuple(others))
            violations += _external_violations(chains, others)
    else:
        pytest.fail(f"unsupported contract type {contract['type']}")
    assert violations == [], "\n".join(sorted(set(violations)))


def test_the_checker_sees_a_violation():
    """Guard against a checker that can never fail: a known import chain must be found."""
    chains = reachable(["kubetune.api_cli"])
    assert "kubetune.manifests" in chains
    assert _external_violations(chains, ["yaml"]), "kubetune.manifests imports yaml"


def test_every_package_folder_is_packaged():
    """Editable installs find unlisted folders; wheels do not. Keep the list complete."""
    config = PYPROJECT["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if rel.parts and (REPO / folder / rel.parts[0]).resolve() in {
                (REPO / f).resolve() for f in config["package-dir"].values()
            }:
                continue
            name = ".".join([package, *rel.parts])
            assert name in listed, f"{init.parent} is not in [tool.setuptools] packages"


def test_operator_does_not_import_torch():
    code = "import kubetune.operator, sys; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
