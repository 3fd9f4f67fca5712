"""The [node.tls] section and destinations' tls tables: paths, clear errors, the contexts they build."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pacs_node.config import ConfigError, DestinationTLS, NodeTLS, load_settings
from pacs_node.tls import client_context, describe_failure, server_context
from tests.tls_certs import OPENSSL, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _config(folder: Path, node_tls: str = "", destination_tls: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    text = '[node]\nport = 2762\n[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n'
    if node_tls:
        text += f"[node.tls]\n{node_tls}\n"
    if destination_tls:
        text += f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 2762\ntls = {destination_tls}\n'
    path.write_text(text)
    return path


def _copy(pki: Pki, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for source in (pki.ca, pki.node.cert, pki.node.key, pki.scanner.cert, pki.scanner.key):
        shutil.copy(source, folder / source.name)


def test_relative_certificate_paths_follow_the_config_file(pki: Pki, tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    _copy(pki, folder / "tls")
    path = _config(folder, 'cert_file = "tls/node.crt"\nkey_file = "tls/node.key"\nca_file = "tls/ca.crt"',
                   '{ca_file = "tls/ca.crt", cert_file = "tls/node.crt", key_file = "tls/node.key"}')
    settings = load_settings(path, environ={})
    tls = settings.node.tls
    assert tls is not None and tls.cert_file == folder / "tls" / "node.crt" and tls.ca_file == folder / "tls" / "ca.crt"
    assert tls.require_client_cert and tls.min_version == "1.2"
    destination = settings.destinations[0].tls
    assert destination is not None and destination.ca_file == folder / "tls" / "ca.crt" and destination.verify


def test_without_tls_section_the_listener_stays_plain(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path), environ={})
    assert settings.node.tls is None


@pytest.mark.parametrize(
    "node_tls,message",
    [
        ('cert_file = "missing.crt"\nkey_file = "node.key"\nca_file = "ca.crt"', "cert_file {dir}/missing.crt: no such file"),
        ('cert_file = "node.crt"\nkey_file = "scanner.key"\nca_file = "ca.crt"',
         "key_file {dir}/scanner.key is not the private key of cert_file {dir}/node.crt"),
        ('cert_file = "node.crt"\nkey_file = "node.key"\nca_file = "node.key"', "ca_file {dir}/node.key: no PEM CA certificate"),
        ('cert_file = "ca.crt"\nkey_file = "node.key"\nca_file = "ca.crt"', "is not the private key of"),
        ('cert_file = "node.crt"\nkey_file = "node.key"', "require_client_cert = true needs ca_file"),
        ('cert_file = "node.crt"\nkey_file = "node.key"\nca_file = "ca.crt"\nmin_version = "1.1"', "min_version"),
        ('cert_file = "node.crt"\nkey_file = "node.key"\nca_file = "ca.crt"\nciphers = "ALL"', "node.tls.ciphers: unknown key"),
    ],
)
def test_unusable_node_tls_is_a_config_error_naming_key_and_file(pki: Pki, tmp_path: Path, node_tls: str,
                                                                 message: str) -> None:
    _copy(pki, tmp_path)
    with pytest.raises(ConfigError) as error:
        load_settings(_config(tmp_path, node_tls), environ={})
    assert "node.tls" in str(error.value)
    assert message.format(dir=tmp_path) in str(error.value)


def test_encrypted_private_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    _copy(pki, tmp_path)
    subprocess.run([OPENSSL, "pkey", "-in", tmp_path / "node.key", "-aes256", "-passout", "pass:secret",
                    "-out", tmp_path / "encrypted.key"], check=True, capture_output=True)
    path = _config(tmp_path, 'cert_file = "node.crt"\nkey_file = "encrypted.key"\nca_file = "ca.crt"')
    with pytest.raises(ConfigError, match="private key is encrypted"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    "destination_tls,message",
    [
        ('{ca_file = "nothere.crt"}', "ca_file {dir}/nothere.crt: no such file"),
        ('{cert_file = "scanner.crt"}', "cert_file and key_file go together"),
        ('{ca_file = "ca.crt", verify = "maybe"}', "destinations.0.tls.verify"),
    ],
)
def test_unusable_destination_tls_is_a_config_error(pki: Pki, tmp_path: Path, destination_tls: str, message: str) -> None:
    _copy(pki, tmp_path)
    with pytest.raises(ConfigError) as error:
        load_settings(_config(tmp_path, destination_tls=destination_tls), environ={})
    assert "destinations.0.tls" in str(error.value)
    assert message.format(dir=tmp_path) in str(error.value)


def test_check_config_and_serve_report_a_bad_certificate_without_a_traceback(pki: Pki, tmp_path: Path) -> None:
    _copy(pki, tmp_path)
    path = _config(tmp_path, 'cert_file = "gone.crt"\nkey_file = "node.key"\nca_file = "ca.crt"')
    for command in (["check-config", str(path)], ["serve", "--config", str(path)]):
        result = subprocess.run([sys.executable, "-m", "pacs_node", *command], check=False, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result
        assert f"node.tls: Value error, cert_file {tmp_path}/gone.crt: no such file" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_server_context_requires_or_accepts_client_certificates(pki: Pki) -> None:
    required = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, ca_file=pki.ca))
    assert required.verify_mode == ssl.CERT_REQUIRED and required.minimum_version == ssl.TLSVersion.TLSv1_2
    optional = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, ca_file=pki.ca,
                                      require_client_cert=False, min_version="1.3"))
    assert optional.verify_mode == ssl.CERT_OPTIONAL and optional.minimum_version == ssl.TLSVersion.TLSv1_3
    anonymous = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, require_client_cert=False))
    assert anonymous.verify_mode == ssl.CERT_NONE


def test_client_context_verifies_the_destination_unless_told_not_to(pki: Pki) -> None:
    verified = client_context(DestinationTLS(ca_file=pki.ca, cert_file=pki.scanner.cert, key_file=pki.scanner.key))
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    unverified = client_context(DestinationTLS(ca_file=pki.ca, verify=False))
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname


def test_min_version_13_refuses_a_tls12_client(pki: Pki) -> None:
    server = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, ca_file=pki.ca, min_version="1.3"))
    client = client_context(DestinationTLS(ca_file=pki.ca, cert_file=pki.scanner.cert, key_file=pki.scanner.key))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    ours, theirs = socket.socketpair()
    failures: list[BaseException] = []

    def accept() -> None:
        try:
            with server.wrap_socket(ours, server_side=True) as secure:
                secure.recv(1)
        except OSError as exc:
            failures.append(exc)

    thread = threading.Thread(target=accept)
    thread.start()
    with pytest.raises(ssl.SSLError), client.wrap_socket(theirs, server_hostname="localhost"):
        pass
    thread.join(timeout=10)
    assert failures and describe_failure(failures[0]) == "unsupported protocol"


def test_console_tls_paths_follow_the_config_file_and_a_bad_pair_is_named(pki: Pki, tmp_path: Path) -> None:
    _copy(pki, tmp_path / "tls")
    path = _config(tmp_path)
    path.write_text(path.read_text() + '[console]\nenabled = true\ntls = {cert_file = "tls/node.crt", key_file = "tls/node.key"}\n')
    tls = load_settings(path, environ={}).console.tls
    assert tls is not None and tls.cert_file == tmp_path / "tls" / "node.crt"
    path.write_text(path.read_text().replace('key_file = "tls/node.key"', 'key_file = "tls/scanner.key"'))
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert "console.tls" in str(error.value)
    assert f"key_file {tmp_path}/tls/scanner.key is not the private key of cert_file {tmp_path}/tls/node.crt" in str(error.value)
