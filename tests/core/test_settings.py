"""config.env and the environment (workers/config.py): secrets are created once, 0600, and
the admin password is kept only as its hash."""

import stat
from pathlib import Path

from commands.passwords import verify_password
from workers.config import load_settings


def test_first_start_writes_config_env_0600_with_every_secret(tmp_path: Path):
    settings = load_settings(str(tmp_path), env={}, announce=False)
    path = tmp_path / "config.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = {line.split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line}
    assert {"API_KEY", "ADMIN_PASSWORD_HASH", "JWT_SECRET", "DATA_KEY", "DATA_KEY_ID"} <= keys
    assert settings.api_key and settings.jwt_secret and settings.data_key


def test_given_admin_password_is_stored_only_hashed(tmp_path: Path):
    settings = load_settings(
        str(tmp_path), env={"MAILPANEL_ADMIN_PASSWORD": "s3cret-admin"}, announce=False
    )
    assert "s3cret-admin" not in (tmp_path / "config.env").read_text()
    assert verify_password(settings.admin_password_hash, "s3cret-admin")


def test_secrets_survive_a_restart(tmp_path: Path):
    first = load_settings(str(tmp_path), env={}, announce=False)
    second = load_settings(str(tmp_path), env={}, announce=False)
    assert (first.api_key, first.jwt_secret, first.data_key) == (
        second.api_key,
        second.jwt_secret,
        second.data_key,
    )


def test_environment_wins_over_the_file(tmp_path: Path):
    load_settings(str(tmp_path), env={}, announce=False)
    settings = load_settings(
        str(tmp_path),
        env={"MAILPANEL_API_KEY": "from-env", "MAILPANEL_LISTEN": "127.0.0.1:9999"},
        announce=False,
    )
    assert (settings.api_key, settings.listen_port) == ("from-env", 9999)


def test_generated_admin_password_is_printed_once(tmp_path: Path, capsys):
    load_settings(str(tmp_path), env={})
    load_settings(str(tmp_path), env={})
    assert capsys.readouterr().err.count("generated admin password") == 1


def test_host_ips_come_from_the_environment(tmp_path: Path):
    settings = load_settings(
        str(tmp_path), env={"MAILPANEL_HOST_IPS": "192.0.2.1, 2001:DB8::1"}, announce=False
    )
    assert settings.host_ips == ("192.0.2.1", "2001:db8::1")
