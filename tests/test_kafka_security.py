"""SASL and SSL settings reach every Kafka client recallstream makes, and secrets (the SASL
and SSL passwords, the Qdrant API key) never show in `recallstream config`, a repr or a log.

No broker is needed: the clients are either recorded at the kafka-python boundary or built
with an explicit ``api_version`` and a bootstrap address nothing listens on, which
kafka-python does not contact until it is used.
"""

from __future__ import annotations

import logging

import orjson
import pytest

from recallstream.consumers.cli import main
from recallstream.consumers.local_kafka import free_port
from recallstream.streaming import kafka_io
from recallstream.streaming.settings import Settings

PASSWORD = "sasl-pa55-do-not-print"
KEY_PASSWORD = "ssl-key-pa55-do-not-print"
API_KEY = "qdrant-key-do-not-print"
SECRETS = (PASSWORD, KEY_PASSWORD, API_KEY)

SECURED = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": PASSWORD,
    "KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem", "KAFKA_SSL_CERTFILE": "/etc/kafka/client.pem",
    "KAFKA_SSL_KEYFILE": "/etc/kafka/client.key", "KAFKA_SSL_PASSWORD": KEY_PASSWORD,
    "QDRANT_API_KEY": API_KEY,
}
EXPECTED = {
    "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
    "sasl_plain_username": "worker", "sasl_plain_password": PASSWORD,
    "ssl_cafile": "/etc/kafka/ca.pem", "ssl_certfile": "/etc/kafka/client.pem",
    "ssl_keyfile": "/etc/kafka/client.key", "ssl_password": KEY_PASSWORD,
}


def secured_settings(**extra) -> Settings:
    return Settings.resolve(environ={**SECURED, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                                     **extra})


class Recorder:
    """Stands in for a kafka-python client class: records the options it is built with."""

    def __init__(self):
        self.configs = []

    def __call__(self, **config):
        self.configs.append(config)
        return self

    def close(self):
        pass


def test_security_settings_reach_producers_consumers_and_admin_clients(monkeypatch):
    recorders = {name: Recorder() for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient")}
    for name, recorder in recorders.items():
        monkeypatch.setattr(kafka_io, name, recorder)
    settings = secured_settings()
    kafka_io.make_producer(settings, transactional_id="t")
    kafka_io.make_consumer(settings, group_id="g")
    with kafka_io.admin_client(settings):
        pass
    for name, recorder in recorders.items():
        (config,) = recorder.configs
        assert {key: config.get(key) for key in EXPECTED} == EXPECTED, name
        assert config["bootstrap_servers"] == settings.bootstrap_servers


def test_the_default_is_plaintext_and_adds_no_sasl_or_ssl_option(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(kafka_io, "KafkaConsumer", recorder)
    kafka_io.make_consumer(Settings.resolve(environ={}))
    (config,) = recorder.configs
    assert config["security_protocol"] == "PLAINTEXT"
    assert not {key for key in config if key.startswith(("sasl_", "ssl_"))}


def test_a_real_kafka_python_consumer_gets_the_options_without_contacting_a_broker(caplog):
    caplog.set_level(logging.DEBUG)  # kafka-python's own debug lines must not show secrets either
    settings = secured_settings()
    consumer = kafka_io.make_consumer(settings, api_version=(3, 0, 0))
    try:
        assert {key: consumer.config[key] for key in EXPECTED} == EXPECTED
    finally:
        consumer.close()
    assert not [r for r in caplog.records if any(secret in r.getMessage() for secret in SECRETS)]


@pytest.mark.parametrize("environ, words", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "security_protocol must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a sasl_mechanism"),
    ({"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
     "needs security_protocol SASL_PLAINTEXT or SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "GSSAPI"},
     "sasl_mechanism must be one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
      "KAFKA_SASL_USERNAME": "u"}, "needs sasl_plain_username and sasl_plain_password"),
])
def test_contradictory_security_settings_are_clear_errors(environ, words):
    with pytest.raises(ValueError, match=words):
        kafka_io.security_config(Settings.resolve(environ=environ))


def test_a_sasl_password_in_the_error_never_appears():
    environ = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "OAUTH",
               "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": PASSWORD}
    with pytest.raises(ValueError) as raised:
        kafka_io.security_config(Settings.resolve(environ=environ))
    assert PASSWORD not in str(raised.value)


# -- secrets are never printed ----------------------------------------------------------------

@pytest.mark.parametrize("json", [False, True])
def test_config_masks_the_qdrant_api_key_and_the_passwords(monkeypatch, capsys, json):
    for name, value in SECURED.items():
        monkeypatch.setenv(name, value)
    assert main(["config", *(["--json"] if json else [])]) == 0
    out, err = capsys.readouterr()
    assert not any(secret in out + err for secret in SECRETS)
    if json:
        described = orjson.loads(out)
        assert described["qdrant_api_key"] == described["sasl_plain_password"] == "***"
        assert described["ssl_password"] == "***" and described["sasl_plain_username"] == "worker"
    else:
        assert "$QDRANT_API_KEY" in out and "$KAFKA_SASL_PASSWORD" in out and "'***'" in out


def test_config_given_secrets_as_flags_masks_them_too(capsys):
    assert main(["config", "--qdrant-api-key", API_KEY, "--sasl-plain-password", PASSWORD]) == 0
    out, _ = capsys.readouterr()
    assert API_KEY not in out and PASSWORD not in out


def test_settings_repr_leaves_secrets_out():
    settings = secured_settings()
    text = repr(settings) + str(settings)
    assert not any(secret in text for secret in SECRETS)
    assert "sasl_plain_username='worker'" in text  # not a secret: shown


def test_help_never_shows_secrets_from_the_environment(monkeypatch, capsys):
    for name, value in SECURED.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert "--sasl-plain-password" in out and not any(secret in out for secret in SECRETS)
