"""OHIF Viewer served with Orthanc's DICOMweb from one origin, as a PACS admin would set it up.

The built viewer (npm package ``@ohif/app``, its ``dist/`` folder) is fetched once by
``scripts/fetch_ohif.sh`` into ``var/cache/ohif/<version>/``.  :class:`ViewerServer`
serves it with an ``app-config.js`` whose only data source is Orthanc's DICOMweb, and
forwards ``/dicom-web/`` to Orthanc, so the browser sees one origin (no CORS set-up).

Run it by hand to look at a study (see docs/viewer.md)::

    python -m tests.viewer.ohif --orthanc http://127.0.0.1:8042 --port 3000
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import mimetypes
import subprocess
import threading
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch_ohif.sh"

#: Headers passed between the browser and Orthanc unchanged.
_REQUEST_HEADERS = ("Accept", "Range", "If-None-Match")
_RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "ETag", "Content-Range")


def fetch_ohif(timeout: float = 600) -> Path:
    """The ``dist/`` folder of the pinned OHIF build, fetched with npm on first use.

    Raises
    ------
    RuntimeError
        When npm is missing or the npm registry cannot be reached.
    """
    result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"could not fetch OHIF with npm: {result.stderr.strip()[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def app_config(auto_track: bool = False, title: str = "pacs-node test PACS") -> str:
    """``app-config.js``: one DICOMweb data source at this origin's ``/dicom-web``.

    ``auto_track`` loads a report's measurements as tracked ones as soon as it is opened,
    instead of OHIF's default question "Do you want to continue tracking measurements
    for this study?" (``disableConfirmationPrompts``).
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": title,
            "name": "orthanc",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "disableConfirmationPrompts": auto_track,
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    roots = "".join(
        f"window.config.dataSources[0].configuration.{key} = window.location.origin + '/dicom-web';\n"
        for key in ("qidoRoot", "wadoRoot", "wadoUriRoot")
    )
    return f"window.config = {json.dumps(config, indent=2)};\n{roots}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/dicom-web/"):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, app_config(self.server.auto_track).encode(), "application/javascript")
        else:
            self._static(path)

    def _forward(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        headers = {name: self.headers[name] for name in _REQUEST_HEADERS if self.headers[name]}
        try:
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except OSError as exc:
            self._send(502, str(exc).encode(), "text/plain")
            return
        finally:
            connection.close()
        self.send_response(response.status)
        for name in _RESPONSE_HEADERS:
            if name != "Content-Length" and response.getheader(name):
                self.send_header(name, response.getheader(name))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            file = root / "index.html"  # the viewer's own routes (/viewer?StudyInstanceUIDs=...)
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".wasm":
            kind = "application/wasm"
        self._send(200, file.read_bytes(), kind)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, orthanc_port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_port
        self.auto_track = False


class ViewerServer:
    """The viewer on ``http://127.0.0.1:<port>/``, reading studies from Orthanc's DICOMweb."""

    def __init__(self, dist: Path, orthanc_http_port: int, port: int = 0) -> None:
        self._server = _Server(port, dist, orthanc_http_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)

    @property
    def auto_track(self) -> bool:
        """Whether pages opened from now on load a report as tracked measurements at once."""
        return self._server.auto_track

    @auto_track.setter
    def auto_track(self, value: bool) -> None:
        self._server.auto_track = value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """The viewer (basic mode, measurement tracking) on one study, optionally one series first."""
        query = {"StudyInstanceUIDs": study_uid}
        if series_uid:
            query["initialSeriesInstanceUID"] = series_uid
        return f"{self.url}/viewer?{urllib.parse.urlencode(query)}"

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orthanc", default="http://127.0.0.1:8042", help="Orthanc's HTTP address (DICOMweb on)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--auto-track", action="store_true", help="load reports as tracked measurements at once")
    args = parser.parse_args()
    orthanc = urllib.parse.urlsplit(args.orthanc)
    if orthanc.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("--orthanc must be on this machine (127.0.0.1)")
    server = ViewerServer(fetch_ohif(), orthanc.port or 80, args.port)
    server.auto_track = args.auto_track
    print(f"OHIF Viewer on {server.url}/ (Ctrl-C stops it)")
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
