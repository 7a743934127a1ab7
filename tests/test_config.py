from pathlib import Path

import pytest

from maas.config import Settings


def test_settings_read_maas_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAAS_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("MAAS_PORT", "9001")
    monkeypatch.setenv("MAAS_ALLOW_UNSAFE_FORMATS", "true")
    s = Settings()
    assert s.home == (tmp_path / "h").resolve()
    assert s.port == 9001
    assert s.allow_unsafe_formats is True


def test_default_database_is_a_sqlite_file_in_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'maas.db'}"
    assert s.host == "127.0.0.1"
    assert s.allow_unsafe_formats is False


def test_home_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings(home=Path("~/x")).home == tmp_path.resolve() / "x"


def test_invalid_port_is_rejected() -> None:
    with pytest.raises(ValueError, match="port"):
        Settings(port=70000)


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [
        f"MAAS_{n.upper()}" for n in Settings.model_fields if f"`MAAS_{n.upper()}`" not in doc
    ]
    assert missing == [], "document these in docs/configuration.md"
