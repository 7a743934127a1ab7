"""The import rules of ARCHITECTURE.md, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import maas

SRC = Path(maas.__file__).parent

# What each package may import of maas: ARCHITECTURE.md's table as an allow-list, so a
# new arrow fails here until the table (and this copy of it) says it is intended. Each entry
# is a package or a module; a package allows its modules. Outside maas, only the web and CLI
# frameworks are fenced (below): the core never imports FastAPI or typer.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "crypto": {"errors"},
    "registry": {"config", "errors", "crypto"},
    # runtimes read their version's record and files, nothing else of the registry
    "runtimes": {"config", "errors", "registry.schemas", "registry.artifacts"},
    "security": {"config", "errors", "crypto", "registry"},
    "serving": {"config", "errors", "crypto", "registry", "runtimes", "security"},
    "jobs": {"config", "errors", "crypto", "registry", "runtimes"},
    "api": {
        "config",
        "errors",
        "crypto",
        "registry",
        "runtimes",
        "security",
        "serving",
        "jobs",
        "console",
    },
    # the SDK shares the registry's response views and reference syntax, nothing stateful
    "client": {"errors", "registry.schemas", "registry.refs", "registry.deployments"},
    # the CLI: the SDK for remote mode, the core for local mode, and the app it serves
    "cli": {
        "config",
        "errors",
        "crypto",
        "registry",
        "runtimes",
        "security",
        "serving",
        "jobs",
        "client",
        "api.app",
    },
}
FRAMEWORKS = {
    "config": ["fastapi", "typer"],
    "errors": ["fastapi", "typer"],
    "crypto": ["fastapi", "typer"],
    "registry": ["fastapi", "typer"],
    "runtimes": ["fastapi", "typer"],
    "security": ["fastapi", "typer"],
    "serving": ["fastapi", "typer"],
    "jobs": ["fastapi", "typer"],
    "client": ["fastapi", "typer"],
    "api": ["typer"],
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package_files(package: str) -> list[Path]:
    single = SRC / f"{package}.py"
    return [single] if single.exists() else sorted((SRC / package).rglob("*.py"))


def _allowed(package: str, name: str) -> bool:
    if not name.startswith("maas."):
        return not any(name == f or name.startswith(f + ".") for f in FRAMEWORKS.get(package, []))
    inner = name.removeprefix("maas.")
    if inner == package or inner.startswith(package + ".") or inner == "__version__":
        return True
    return any(inner == a or inner.startswith(a + ".") for a in ALLOWED[package])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    violations = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in _package_files(package)
        for name in _imports(path)
        if not _allowed(package, name)
    ]
    assert violations == []


def test_the_allow_list_covers_every_package() -> None:
    packages = {p.stem for p in SRC.glob("*.py")} | {
        p.name for p in SRC.iterdir() if (p / "__init__.py").exists()
    }
    assert packages - set(ALLOWED) <= {"__init__", "__main__", "console"}


def test_only_config_reads_the_environment() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "config.py"
        and ("os.environ" in path.read_text() or "os.getenv" in path.read_text())
    ]
    assert offenders == []


def test_public_api_is_pinned() -> None:
    assert maas.__all__ == ["MaasError", "Settings", "__version__"]
