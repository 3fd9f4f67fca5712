"""Orthanc (Debian package) as the PACS in tests: started on free loopback ports."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
#: The DICOMweb plugin of Debian's orthanc-dicomweb package.
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
    #: Serve DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under ``/dicom-web/`` with the plugin.
    dicomweb: bool = False
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
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }
        if self.dicomweb:
            # Full metadata in one request per series, as viewers ask for it.
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                                  "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        if self.tls is not None:
            certificate, key, trusted = self.tls
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(certificate),
                "DicomTlsPrivateKey": str(key),
                "DicomTlsTrustedCertificates": str(trusted),
                "DicomTlsRemoteCertificateRequired": True,
            }
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

    def get(self, path: str):  # noqa: ANN201 - JSON value
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return response.read()

    def instances(self) -> list[dict]:
        """Every stored instance with its tags (SOPInstanceUID, StudyInstanceUID, Modality...)."""
        return [self.get(f"/instances/{orthanc_id}/simplified-tags") for orthanc_id in self.get("/instances")]
