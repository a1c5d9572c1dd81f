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
        email_allowed_special_domains="internal, .Local",
    )
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert rebuilt == original
    assert rebuilt.smtp_ca_file is None  # an unset path stays unset, not the string "None"
    assert rebuilt.email_allowed_special_domains == ("internal", "local")


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


@pytest.mark.parametrize(
    ("field", "value", "secret", "shown"),
    [
        ("database_url", "postgresql+psycopg://herald:db-pw-1@db.internal:5432/herald", "db-pw-1", "db.internal:5432"),
        ("database_url", "postgresql://herald:p%40ss%3Aw0rd@db/herald?sslmode=require", "p%40ss%3Aw0rd", "@db/herald"),
        ("broker_url", "redis://:redis-pw-2@redis.internal:6379/0", "redis-pw-2", "redis.internal:6379/0"),
        ("broker_url", "rediss://default:redis-pw-3@redis.internal:6380", "redis-pw-3", "default:***@"),
        ("broker_url", "unix:///run/redis.sock?db=0&password=redis-pw-4", "redis-pw-4", "/run/redis.sock"),
        ("announcement_webhook_url", "https://cms.example.com/hook?token=tok-5&site=main", "tok-5", "cms.example.com/"),
        ("announcement_webhook_url", "https://hooks:tok-6@cms.example.com/hook", "tok-6", "cms.example.com/"),
        ("announcement_webhook_url", "https://hooks.example.com/services/T0/B0/tok-11", "tok-11", "hooks.example.com/"),
        ("twilio_base_url", "https://AC123:tok-7@twilio.internal", "tok-7", "twilio.internal"),
        ("details_url", "https://example.com/inbox?invite=tok-8", "tok-8", "example.com/inbox"),
        ("smtp_password", "smtp-pw-9", "smtp-pw-9", "smtp_password=SecretStr"),
        ("announcement_webhook_secret", "whsec-10", "whsec-10", "announcement_webhook_secret=SecretStr"),
    ],
)
def test_repr_and_str_of_settings_mask_every_secret(field: str, value: str, secret: str, shown: str) -> None:
    settings = Settings(**{field: value})
    for text in (repr(settings), str(settings)):
        assert secret not in text
        assert shown in text
    assert getattr(settings, field) == value or field.endswith(("_password", "_secret"))  # the value itself is kept
    assert value in settings.as_env().values()  # child processes still get it


def test_only_special_use_domains_can_be_allowed() -> None:
    with pytest.raises(ValidationError, match=r"example\.com is not a special-use domain"):
        Settings(email_allowed_special_domains="internal,example.com")
