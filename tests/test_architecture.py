"""The import rules of ARCHITECTURE.md, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import maas

SRC = Path(maas.__file__).parent

# package -> prefixes it must never import
FORBIDDEN = {
    "config": [
        "maas.registry",
        "maas.serving",
        "maas.api",
        "maas.cli",
        "maas.jobs",
        "fastapi",
        "typer",
    ],
    "errors": ["maas.registry", "maas.serving", "maas.api", "maas.cli", "fastapi", "typer"],
    "registry": ["maas.serving", "maas.api", "maas.cli", "maas.jobs", "fastapi", "typer"],
    "runtimes": ["maas.serving", "maas.api", "maas.cli", "fastapi", "typer"],
    "serving": ["maas.api", "maas.cli", "fastapi", "typer"],
    "security": ["maas.serving", "maas.api", "maas.cli", "fastapi", "typer"],
    "jobs": ["maas.api", "maas.cli", "maas.serving", "fastapi", "typer"],
    "api": ["maas.cli", "typer"],
    "client": ["maas.api", "maas.cli", "fastapi"],
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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_its_import_rules(package: str) -> None:
    violations = []
    for path in _package_files(package):
        for name in _imports(path):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    violations.append(f"{path.relative_to(SRC)} imports {name}")
    assert violations == []


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
