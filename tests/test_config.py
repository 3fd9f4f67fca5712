"""Configuration: valid files load, bad ones are refused with the key and value named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pacs_node.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_valid() -> None:
    default = load_settings(REPO / "config" / "pacs-node.toml", environ={})
    assert default.node.ae_title == "PACS_NODE"
    assert default.storage.spool_dir == (REPO / "var" / "spool").resolve()
    assert default.storage.database_url == f"sqlite:///{(REPO / 'var' / 'pacs-node.db').resolve()}"
    production = load_settings(REPO / "config" / "production.example.toml", environ={})
    assert [c.ae_title for c in production.node.allowed_callers] == ["CT_SCANNER_1", "CT_SCANNER_2"]
    assert production.node.allowed_callers[0].host == "10.20.30.41"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.ae_titel: unknown key"):
        load_settings(_write(tmp_path, '[node]\nae_titel = "X"\n'), environ={})


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(_write(tmp_path, "[node]\nport = 70000\n[completion]\nquiet_period_s = -1\n"), environ={})
    message = str(error.value)
    assert "node.port" in message and "70000" in message
    assert "completion.quiet_period_s" in message


def test_bad_ae_title_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.ae_title: .*MUCH_TOO_LONG_AE_TITLE"):
        load_settings(_write(tmp_path, '[node]\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n'), environ={})


def test_duplicate_destination_names_are_refused(tmp_path: Path) -> None:
    text = (
        '[[destinations]]\nname = "a"\nae_title = "P"\nhost = "h"\nport = 104\n'
        '[[destinations]]\nname = "a"\nae_title = "Q"\nhost = "h"\nport = 105\n'
    )
    with pytest.raises(ConfigError, match="destination names must be unique; repeated: a"):
        load_settings(_write(tmp_path, text), environ={})


_DESTINATION = '[[destinations]]\nname = "a"\nae_title = "P"\nhost = "h"\nport = 104\n'


def test_output_profile_defaults_to_sr_and_key_images_and_takes_the_new_objects(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, _DESTINATION), environ={}).destinations[0].objects == ["sr", "key_image"]
    every = 'objects = ["sr", "key_image", "kos", "gsps", "seg"]\n'
    settings = load_settings(_write(tmp_path, _DESTINATION + every), environ={})
    assert settings.destinations[0].objects == ["sr", "key_image", "kos", "gsps", "seg"]
    assert load_settings(REPO / "config" / "pacs-node.toml", environ={}).destinations[0].objects == ["sr", "key_image"]


@pytest.mark.parametrize(("objects", "message"), [
    ('["sr", "kos"]', '"kos" references the key images: add "key_image"'),
    ('["sr", "gsps", "sr"]', "objects lists sr more than once"),
    ('["sr", "pdf"]', "destinations.0.objects.1"),
    ("[]", "destinations.0.objects"),
])
def test_bad_output_profiles_are_refused(tmp_path: Path, objects: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, _DESTINATION + f"objects = {objects}\n"), environ={})


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[node\n"), environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_environment_overrides_database_and_port(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nport = 104\n[storage]\ndatabase_url = "sqlite:///x.db"\n')
    settings = load_settings(
        path, environ={"PACS_NODE_DATABASE_URL": "postgresql://u:secret@db/x", "PACS_NODE_PORT": "11999"}
    )
    assert settings.node.port == 11999
    assert settings.storage.database_url == "postgresql://u:secret@db/x"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///db/node.db"\n')
    settings = load_settings(path, environ={})
    assert settings.storage.spool_dir == tmp_path / "spool"
    assert settings.storage.database_url == f"sqlite:///{tmp_path / 'db' / 'node.db'}"


def test_roles_default_to_all_and_bad_ones_are_named(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, "[node]\n"), environ={}).node.roles == ["receive", "analyse", "send"]
    worker = load_settings(_write(tmp_path, '[node]\nroles = ["analyse", "send"]\n'), environ={}).node
    assert worker.has("analyse") and not worker.has("receive")
    with pytest.raises(ConfigError, match=r"node\.roles\.0: Input should be 'receive', 'analyse' or 'send'"):
        load_settings(_write(tmp_path, '[node]\nroles = ["analyze"]\n'), environ={})
    with pytest.raises(ConfigError, match="roles lists send more than once"):
        load_settings(_write(tmp_path, '[node]\nroles = ["send", "send"]\n'), environ={})
    with pytest.raises(ConfigError, match=r"node\.roles: List should have at least 1 item"):
        load_settings(_write(tmp_path, "[node]\nroles = []\n"), environ={})


def test_proxy_protocol_trusts_balancer_networks(tmp_path: Path) -> None:
    text = '[node]\nproxy_protocol = { trusted = ["10.0.0.5", "10.1.0.0/16", "FD00::/64", "::ffff:10.2.0.0/112"] }\n'
    proxy = load_settings(_write(tmp_path, text), environ={}).node.proxy_protocol
    assert proxy is not None and proxy.required
    assert proxy.trusted == ("10.0.0.5/32", "10.1.0.0/16", "fd00::/64", "10.2.0.0/16")
    assert load_settings(_write(tmp_path, "[node]\n"), environ={}).node.proxy_protocol is None
    example = (REPO / "config" / "production.example.toml").read_text()
    uncommented = re.sub(r"^# (\[node\.proxy_protocol\]|trusted|required)", r"\1", example, flags=re.MULTILINE)
    shipped = load_settings(_write(tmp_path, uncommented), environ={}).node.proxy_protocol
    assert shipped is not None and shipped.trusted == ("10.0.0.5/32", "10.0.1.0/24")


@pytest.mark.parametrize(("trusted", "message"), [
    ('["haproxy.example.org"]', "'haproxy.example.org' is not an IP address or network"),
    ('["10.0.0.5/8"]', "'10.0.0.5/8' has host bits set; did you mean 10.0.0.0/8"),
    ('["10.0.0.0/33"]', "'10.0.0.0/33' is not an IP address or network"),
    ("[]", "at least 1 item"),
])
def test_bad_balancer_addresses_are_named(tmp_path: Path, trusted: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"node\.proxy_protocol\.trusted: .*" + message.replace(".", r"\.")):
        load_settings(_write(tmp_path, f"[node]\nproxy_protocol = {{ trusted = {trusted} }}\n"), environ={})
