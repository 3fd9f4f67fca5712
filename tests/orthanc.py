"""Orthanc (Debian package) as the PACS in tests: started on free loopback ports."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
#: Where Debian's orthanc-dicomweb package puts the plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    """One Orthanc server with its own storage; :meth:`stop` and :meth:`start` simulate outages."""

    folder: Path
    dicom_port: int
    http_port: int
    ae_title: str = "ORTHANC"
    #: DICOM TLS on ``dicom_port``: (certificate, private key, CA certificates that sign the
    #: callers' certificates); callers must present a certificate.
    tls: tuple[Path, Path, Path] | None = None
    #: Load the DICOMweb plugin: QIDO-RS, STOW-RS and WADO-RS under ``/dicom-web/``.
    dicomweb: bool = False
    #: HTTP basic-auth users (name → password); when set, every HTTP request needs one.
    users: dict[str, str] | None = None
    #: Other DICOM nodes it knows (``DicomModalities``: name → {"AET", "Host", "Port", "AllowFind", ...}),
    #: e.g. the node as a query/retrieve client.
    modalities: dict[str, dict] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 30) -> None:
        config = {
            "Name": "pacs-node-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.users is not None,
            "RegisteredUsers": self.users or {},
            "Plugins": [],
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }
        if self.modalities:
            config["DicomModalities"] = self.modalities
        if self.tls is not None:
            certificate, key, trusted = self.tls
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(certificate),
                "DicomTlsPrivateKey": str(key),
                "DicomTlsTrustedCertificates": str(trusted),
                "DicomTlsRemoteCertificateRequired": True,
            }
        if self.dicomweb:
            if not DICOMWEB_PLUGIN.is_file():
                raise RuntimeError(f"{DICOMWEB_PLUGIN} is missing; `make test` installs orthanc-dicomweb (apt, as root)")
            # full metadata in one request per series, as viewers ask for it
            config |= {"Plugins": [str(DICOMWEB_PLUGIN)],
                       "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                                    "StudiesMetadata": "Full", "SeriesMetadata": "Full"}}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("a")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=log, env={"TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    @property
    def url(self) -> str:
        """Base URL of its REST API (``/dicom-web`` below it with :attr:`dicomweb`)."""
        return f"http://127.0.0.1:{self.http_port}"

    def _open(self, path: str, timeout: float):  # noqa: ANN202 - an HTTP response
        request = urllib.request.Request(f"{self.url}{path}")
        if self.users:
            name, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode())
        return urllib.request.urlopen(request, timeout=timeout)

    def get(self, path: str):  # noqa: ANN201 - JSON value
        with self._open(path, 5) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with self._open(path, 10) as response:
            return response.read()

    def instances(self) -> list[dict]:
        """Every stored instance with its tags (SOPInstanceUID, StudyInstanceUID, Modality...)."""
        return [self.get(f"/instances/{orthanc_id}/simplified-tags") for orthanc_id in self.get("/instances")]
