"""Test certificates made with the ``openssl`` CLI, as docs/tls.md tells a hospital to make them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its unencrypted private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A hospital CA with the node, a scanner and a PACS; and a rogue CA with a client of its own."""

    ca: Path
    node: Identity  #: server certificate for 127.0.0.1 / localhost, also valid as a client certificate
    scanner: Identity  #: client certificate
    pacs: Identity  #: server certificate for 127.0.0.1, also valid as a client certificate
    rogue_ca: Path
    rogue: Identity  #: client certificate signed by the rogue CA


def _openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str, common_name: str) -> Identity:
    """A self-signed CA certificate."""
    ca = Identity(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", ca.key, "-out", ca.cert, "-days", "30",
             "-subj", f"/CN={common_name}")
    return ca


def issue(folder: Path, ca: Identity, name: str, common_name: str, server: bool) -> Identity:
    """A certificate signed by ``ca``: for TLS clients, and for servers on 127.0.0.1 when ``server``."""
    identity = Identity(folder / f"{name}.crt", folder / f"{name}.key")
    extensions = folder / f"{name}.ext"
    lines = ["extendedKeyUsage=serverAuth,clientAuth" if server else "extendedKeyUsage=clientAuth",
             "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    if server:
        lines.append("subjectAltName=DNS:localhost,IP:127.0.0.1")
    extensions.write_text("\n".join(lines) + "\n")
    request = folder / f"{name}.csr"
    _openssl("req", "-newkey", "rsa:2048", "-noenc", "-keyout", identity.key, "-out", request,
             "-subj", f"/CN={common_name}")
    _openssl("x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
             "-out", identity.cert, "-days", "30", "-extfile", extensions)
    return identity


def make_pki(folder: Path) -> Pki:
    """Every certificate the TLS tests need, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "ca", "Test Hospital DICOM CA")
    rogue_ca = make_ca(folder, "rogue-ca", "Rogue CA")
    return Pki(
        ca=ca.cert,
        node=issue(folder, ca, "node", "pacs-node", server=True),
        scanner=issue(folder, ca, "scanner", "CT_SCANNER_1", server=False),
        pacs=issue(folder, ca, "pacs", "test-pacs", server=True),
        rogue_ca=rogue_ca.cert,
        rogue=issue(folder, rogue_ca, "rogue", "ROGUE_SCANNER", server=False),
    )
