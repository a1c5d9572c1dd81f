"""Settings: read from the environment, and handed on to child processes unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import Settings


def test_settings_survive_the_trip_through_a_child_processes_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        broker_url="redis://127.0.0.1:6379/3",
        channels=("email", "sms"),
        smtp_password="pw",
        smtp_starttls=True,
        twilio_account_sid="AC" + "2" * 32,
        twilio_auth_token="tok",
        sms_rate_per_second=3.5,
        providers={"relay-2": {"smtp_host": "mx2.example.net", "smtp_port": 2525}},
        announcement_webhook_secret="whsec",
    )
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert rebuilt == original
    assert rebuilt.smtp_ca_file is None  # an unset path stays unset, not the string "None"


def test_twilio_credentials_use_twilios_own_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "9" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok-3f9a")
    settings = Settings()
    assert settings.twilio_account_sid.endswith("9" * 32)
    assert settings.twilio_auth_token.get_secret_value() == "tok-3f9a"
    assert "tok-3f9a" not in repr(settings)


def test_provider_profiles_come_from_json_and_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_PROVIDERS", '{"relay-2": {"smtp_host": "mx2.example.net", "smtp_password": "pw-77"}}')
    settings = Settings()
    assert settings.providers == {"relay-2": {"smtp_host": "mx2.example.net", "smtp_password": "pw-77"}}
    assert "pw-77" not in repr(settings)


@pytest.mark.parametrize("url", ["http://localhost", "amqp://guest@localhost", "localhost:6379"])
def test_a_broker_url_of_the_wrong_kind_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="HERALD_BROKER_URL must start with"):
        Settings(broker_url=url)


def test_the_default_database_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'herald.db').resolve()}"
