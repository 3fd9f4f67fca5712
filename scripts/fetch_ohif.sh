#!/usr/bin/env bash
# Fetch the built OHIF Viewer (npm package @ohif/app, its dist/ folder) into
# var/cache/ohif/<version>/ once, and print the path of its dist/ folder.
# Used by scripts/setup.sh and by the viewer test (tests/viewer/test_ohif.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${OHIF_VERSION:-3.13.2}
target="var/cache/ohif/$VERSION"
if [ ! -f "$target/dist/index.html" ]; then
    command -v npm >/dev/null || { echo "fetch_ohif: npm is not installed" >&2; exit 2; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "@ohif/app@$VERSION" >/dev/null 2>&1) || {
        echo "fetch_ohif: 'npm pack @ohif/app@$VERSION' failed (npm registry unreachable, or no such version)" >&2
        exit 3
    }
    tar -xzf "$work"/ohif-app-"$VERSION".tgz -C "$work" package/dist
    mkdir -p "$target"
    rm -rf "$target/dist"
    mv "$work/package/dist" "$target/dist"
fi
echo "$PWD/$target/dist"
