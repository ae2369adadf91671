from pathlib import Path

import pytest

from dockyard.config import Settings, load_settings
from dockyard.db import Database
from dockyard.migrations import current_revision, head_revision, schema_drift

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_precedence_file_then_environment_then_flags(tmp_path, monkeypatch):
    config = tmp_path / "dockyard.toml"
    config.write_text('port = 6000\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    monkeypatch.setenv("DOCKYARD_HOST", "10.0.0.1")
    settings = load_settings(config, port=7000)
    assert settings.port == 7000
    assert settings.host == "10.0.0.1"
    assert settings.log_level == "debug"


def test_defaults_are_embedded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 5000
    assert settings.database_url == f"sqlite:///{tmp_path / 'dockyard-data' / 'dockyard.db'}"
    assert settings.storage_path == Path("dockyard-data/storage")


def test_unknown_settings_and_missing_files_are_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(ValueError, match="colour"):
        load_settings(bad)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_every_setting_is_documented():
    text = DOCS.read_text()
    for name in Settings.model_fields:
        assert f"`DOCKYARD_{name.upper()}`" in text, name


def test_migrations_match_the_models(database_url):
    db = Database(database_url, pool_size=1)
    try:
        assert current_revision(db) == head_revision(db)
        assert schema_drift(db) == []
    finally:
        db.dispose()


def test_settings_handed_to_a_child_process_keep_their_secrets():
    """`dockyard serve` passes Settings to its workers as JSON: a masked secret would reach them as
    `**********` (S3 requests then failed with SignatureDoesNotMatch on every node)."""
    secret_fields = [
        name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
    ]
    assert secret_fields, "no SecretStr settings found: update this test"
    given = Settings.model_validate({name: f"secret-of-{name}" for name in secret_fields})
    in_child = Settings.model_validate_json(given.child_json())
    for name in secret_fields:
        assert getattr(in_child, name).get_secret_value() == f"secret-of-{name}"
        assert f"secret-of-{name}" not in given.model_dump_json()  # an ordinary dump still masks it


@pytest.mark.parametrize("name", ["webhook_limit", "storage_limit_bytes"])
def test_a_replaced_setting_says_what_replaced_it(name: str) -> None:
    with pytest.raises(ValueError, match=rf"the {name} setting was replaced: .*\[tiers\.<SKU>\]"):
        Settings(**{name: 3})
