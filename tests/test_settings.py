"""One settings object: typed STCAST_* parsing, errors that name the variable, and --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.settings import Settings, env_name, setting_fields

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STCAST_BATCH_SIZE", "5")  # ignored: an explicit mapping is given
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.batch_size, settings.impute, settings.step_s) == (256, "linear", 0)


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STCAST_BATCH_SIZE", "5")
    assert Settings.from_env().batch_size == 5


def test_typed_parsing() -> None:
    settings = Settings.from_env(
        {
            "STCAST_BATCH_SIZE": "64",
            "STCAST_BATCH_WAIT_S": "0.25",
            "STCAST_FUTURE_TOLERANCE_S": "60",
            "STCAST_IMPUTE": "carry",
            "STCAST_NETWORK": "pems08",
            "STCAST_METRICS_PORT": "0",
            "STCAST_BOOTSTRAP_SERVERS": "a:1,b:2",
            "OTHER_BATCH_SIZE": "3",
        }
    )
    assert settings.batch_size == 64 and type(settings.batch_size) is int
    assert settings.batch_wait_s == 0.25
    assert settings.future_tolerance_s == 60.0 and type(settings.future_tolerance_s) is float
    assert (settings.impute, settings.network, settings.metrics_port) == ("carry", "pems08", 0)
    assert settings.bootstrap_servers == "a:1,b:2"


def test_overrides_win_over_the_environment_and_none_is_no_override() -> None:
    env = {"STCAST_BATCH_SIZE": "64", "STCAST_WINDOW": "24"}
    settings = Settings.from_env(env, batch_size=8, window=None)
    assert (settings.batch_size, settings.window) == (8, 24)


def test_model_path() -> None:
    assert Settings().model_path is None
    assert Settings.from_env({"STCAST_MODEL_DIR": "/m"}).model_path == Path("/m")


@pytest.mark.parametrize(
    ("name", "raw", "words"),
    [
        ("STCAST_BATCH_SIZE", "lots", "not a valid int"),
        ("STCAST_BATCH_SIZE", "1.5", "not a valid int"),
        ("STCAST_BATCH_SIZE", "0", "at least 1"),
        ("STCAST_PARTITIONS", "-1", "at least 1"),
        ("STCAST_BATCH_WAIT_S", "soon", "not a valid float"),
        ("STCAST_BATCH_WAIT_S", "-0.5", ">= 0"),
        ("STCAST_MAX_GAP_STEPS", "-1", ">= 0"),
        ("STCAST_IMPUTE", "cubic", "expected one of"),
        ("STCAST_PROVIDER", "tpu", "expected one of"),
        ("STCAST_LOG_LEVEL", "INFO", "expected one of"),
        ("STCAST_TIMEZONE", "Mars/Olympus_Mons", "not a time zone stcast knows"),
    ],
)
def test_invalid_values_name_the_variable(name: str, raw: str, words: str) -> None:
    with pytest.raises(ValueError, match=name) as caught:
        Settings.from_env({name: raw})
    assert words in str(caught.value)


def test_replace_validates() -> None:
    assert Settings().replace(batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="STCAST_HORIZON"):
        Settings().replace(horizon=0)


def test_env_names() -> None:
    assert env_name("batch_size") == "STCAST_BATCH_SIZE"
    for f in setting_fields():
        # parsing calls type(default)(raw): bool("false") would be True, so no bool settings
        assert type(f.default) in (str, int, float), f.name
        assert f.metadata["help"], f.name


def test_worker_help_lists_every_setting() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "stream_app", "worker", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for f in setting_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in done.stdout, flag
        assert env_name(f.name) in done.stdout, env_name(f.name)


def test_the_sasl_password_never_appears_in_the_settings_repr() -> None:
    from stream_app.kafka.clients import client_options

    settings = Settings.from_env(
        {
            "STCAST_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STCAST_SASL_MECHANISM": "SCRAM-SHA-512",
            "STCAST_SASL_USERNAME": "stcast",
            "STCAST_SASL_PASSWORD": "hunter2-secret",
        }
    )
    assert "hunter2-secret" not in repr(settings) and "stcast" in repr(settings)
    assert client_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "stcast",
        "sasl_plain_password": "hunter2-secret",
    }


def test_sasl_without_a_user_is_refused_and_plaintext_needs_no_options() -> None:
    from stream_app.kafka.clients import client_options

    with pytest.raises(ValueError, match="STCAST_SASL_USERNAME"):
        Settings.from_env({"STCAST_SECURITY_PROTOCOL": "SASL_SSL"})
    assert client_options(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_ssl_builds_a_context_from_the_ca_file() -> None:
    import ssl

    from stream_app.kafka.clients import client_options

    bundle = Path(ssl.get_default_verify_paths().openssl_cafile)
    if not bundle.is_file():
        pytest.skip(f"no CA bundle at {bundle}")
    settings = Settings(security_protocol="SSL", ssl_cafile=str(bundle))
    context = client_options(settings)["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
