"""DICOMweb destinations in the config: what loads, what is refused and how it is said, secrets kept out of output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacs_node.config import ConfigError, load_settings

DIMSE = '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs.example.org"\nport = 104\n'


def _load(tmp_path: Path, destination: str, environ: dict[str, str] | None = None):  # noqa: ANN202
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n[[destinations]]\n{destination}\n')
    return load_settings(path, environ=environ or {})


def _refused(tmp_path: Path, destination: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, destination, environ)
    return str(error.value)


def test_existing_dimse_destinations_keep_loading_as_dimse(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(DIMSE)
    [destination] = load_settings(path, environ={}).destinations
    assert destination.protocol == "dimse" and destination.url is None and destination.auth is None
    assert (destination.ae_title, destination.host, destination.port) == ("PACS", "pacs.example.org", 104)


def test_dicomweb_destination_with_secrets_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "stow.token").write_text("tok-from-file\n")
    settings = _load(tmp_path, 'name = "web"\nprotocol = "dicomweb"\nurl = "https://pacs.example.org/dicom-web/"\n'
                               'auth = { type = "bearer", token_file = "secrets/stow.token" }\ntimeout_s = 12.5')
    [web] = settings.destinations
    assert web.url == "https://pacs.example.org/dicom-web" and web.timeout_s == 12.5
    assert web.auth.token_file == tmp_path / "secrets" / "stow.token"  # relative to the config file
    assert web.auth.secret("token") == "tok-from-file"
    basic = _load(tmp_path, 'name = "web"\nprotocol = "dicomweb"\nurl = "http://127.0.0.1:8042/dicom-web"\n'
                            'auth = { type = "basic", username = "node", password_env = "STOW_PASSWORD" }',
                  environ={"STOW_PASSWORD": "from-env"})
    assert basic.destinations[0].auth.secret("password", environ={"STOW_PASSWORD": "from-env"}) == "from-env"


@pytest.mark.parametrize(
    "destination,message",
    [
        ('name = "web"\nprotocol = "dicomweb"',
         'destinations.0: Value error, protocol = "dicomweb" needs url: the base URL of the DICOMweb service'),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nae_title = "PACS"\nport = 104',
         'destinations.0: Value error, ae_title, port: not used with protocol = "dicomweb"'),
        ('name = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\nurl = "http://h/dicom-web"',
         'destinations.0: Value error, url: only for protocol = "dicomweb" (this destination is DIMSE)'),
        ('name = "pacs"\nae_title = "PACS"',
         'destinations.0: Value error, protocol = "dimse" needs ae_title, host and port (missing: host, port)'),
        ('name = "web"\nprotocol = "stow"\nurl = "http://h/dicom-web"',
         "destinations.0.protocol: Input should be 'dimse' or 'dicomweb'"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "h:8042/dicom-web"',
         "destinations.0.url: Value error, must be an http:// or https:// URL with a host"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web?x=1"',
         "destinations.0.url: Value error, must be the service's base URL, without ?query or #fragment"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\ntls = { verify = false }',
         "destinations.0: Value error, tls: only for an https:// url"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nauth = { type = "bearer" }',
         "destinations.0.auth.bearer: Value error, give exactly one of token, token_file, token_env (got none)"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nauth = { type = "bearer", token = "a", token_env = "B" }',
         "give exactly one of token, token_file, token_env (got token, token_env)"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nauth = { type = "bearer", token_env = "STOW_TOKEN" }',
         "destinations.0.auth.bearer: Value error, token_env: environment variable STOW_TOKEN is not set"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nauth = { type = "basic", username = "u", password_file = "gone" }',
         "destinations.0.auth.basic: Value error, password_file {dir}/gone: no such file, or not readable by this user"),
        ('name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dicom-web"\nauth = { type = "digest", token = "a" }',
         "destinations.0.auth: Input tag 'digest' found using 'type' does not match any of the expected tags"),
    ],
)
def test_bad_destinations_are_refused_with_the_key_and_why(tmp_path: Path, destination: str, message: str) -> None:
    assert message.format(dir=tmp_path) in _refused(tmp_path, destination)


def test_credentials_are_never_echoed_in_errors_or_check_config(tmp_path: Path) -> None:
    refused = _refused(tmp_path, 'name = "web"\nprotocol = "dicomweb"\nurl = "http://node:hunter2@h/dicom-web"')
    assert "must not carry credentials; put them in the destination's auth table" in refused
    assert "hunter2" not in refused
    refused = _refused(tmp_path, 'name = "web"\nprotocol = "dicomweb"\nurl = "http://h/dw"\n'
                                 'auth = { type = "basic", username = "u", password = 12345678 }')
    assert "destinations.0.auth.basic.password" in refused and "12345678" not in refused
    path = tmp_path / "node.toml"
    path.write_text('[[destinations]]\nname = "web"\nprotocol = "dicomweb"\nurl = "https://h/dicom-web"\n'
                    'auth = { type = "basic", username = "node", password = "hunter2" }\n')
    result = subprocess.run([sys.executable, "-m", "pacs_node", "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"protocol": "dicomweb"' in result.stdout and '"username": "node"' in result.stdout
    assert "hunter2" not in result.stdout


def test_check_config_refuses_a_dicomweb_destination_without_url(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[[destinations]]\nname = "web"\nprotocol = "dicomweb"\nhost = "h"\n')
    result = subprocess.run([sys.executable, "-m", "pacs_node", "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert 'protocol = "dicomweb" needs url' in result.stderr and "Traceback" not in result.stderr
