#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system tools (when root), a virtual
# environment with pinned CPU torch, pacs-node installed in it, and the OHIF Viewer
# the viewer test opens the node's results in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
[ -x /usr/bin/storescu ] || need_apt+=(dcmtk)
[ -x /usr/bin/dciodvfy ] || need_apt+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
# Orthanc's DICOMweb plugin (STOW-RS destination tests, the viewer test's data source),
# Chromium and npm for the OHIF viewer test
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/npm ] || need_apt+=(npm)
[ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)  # the TLS gateway in front of a DICOMweb PACS in tests
[ -x /usr/bin/prometheus ] || need_apt+=(prometheus)  # tests/monitoring scrape the console with it
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} with apt"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "setup: not root; install these Debian packages for the full test suite: ${need_apt[*]}" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# pip without its warnings; its whole output is shown only when it fails.
pip_quietly() {
    local log
    log=$(mktemp)
    if ! "$VENV/bin/pip" -q "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

stamp="$VENV/.pacs-node-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    pip_quietly install --upgrade pip
    # The CPU build of torch; a looser pin would pull a multi-GB CUDA build.
    pip_quietly install torch==2.13.0
    pip_quietly install -e ".[test,postgres,s3]"
    "$VENV/bin/python" -c "import torch, pynetdicom, highdicom, boto3, moto, pacs_node" 
    touch "$stamp"
fi

# The OHIF Viewer for tests/viewer (pinned, cached in var/cache/ohif/); without npm or
# its registry the viewer test is skipped and says why.
scripts/fetch_ohif.sh >/dev/null || echo "setup: could not fetch OHIF with npm; the viewer test will be skipped" >&2
