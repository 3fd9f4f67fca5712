"""The console over HTTPS with a certificate from the configuration, on a real socket."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
import pytest

from pacs_node.config import ConsoleTLS
from pacs_node.console.app import create_app
from pacs_node.console.server import ConsoleServer
from tests.console.conftest import ADMIN, make_console
from tests.tls_certs import make_pki


def test_https_only_with_the_configured_certificate_and_secure_cookies(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    console = make_console(tmp_path, tls=ConsoleTLS(cert_file=pki.node.cert, key_file=pki.node.key))
    server = ConsoleServer(create_app(console.view), console.view.settings.console)
    server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        with httpx.Client(base_url=server.url, verify=trusted) as client:
            assert client.get("/healthz").status_code == 200
            form = client.get("/login")
            assert "Secure" in form.headers["set-cookie"] and "HttpOnly" in form.headers["set-cookie"]
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            signed_in = client.post("/login", data={"name": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
            session = [h for h in signed_in.headers.get_list("set-cookie") if h.startswith("pacs_node_session=")]
            assert session and all(("Secure" in h and "HttpOnly" in h and "SameSite=strict" in h) for h in session)
        with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(pki.rogue_ca))) as rogue:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                rogue.get("/healthz")
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=5)
    finally:
        server.stop()
        console.engine.dispose()
