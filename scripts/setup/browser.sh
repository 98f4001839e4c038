#!/usr/bin/env bash
# Browser-tracker tests (tests/protocols/test_snowplow_trackers.py): Debian Chromium, run headless, and the
# npm @snowplow/browser-tracker package, whose self-contained UMD bundle the test page loads with a
# <script> tag (dist/index.umd.min.js, global `snowplowBrowserTracking`). Idempotent; quick when present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BROWSER_DIR="$ROOT/tests/protocols/browser"
BUNDLE="$BROWSER_DIR/node_modules/@snowplow/browser-tracker/dist/index.umd.min.js"
VERSION="$(sed -n 's/.*"@snowplow\/browser-tracker": *"\([^"]*\)".*/\1/p' "$BROWSER_DIR/package.json")"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "browser.sh: chromium is missing; install it as root: apt-get install -y chromium" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi

if [ ! -f "$BUNDLE" ] || ! grep -q "v$VERSION" "$BUNDLE"; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "browser.sh: npm is missing; install Node.js and npm (Debian: apt-get install -y npm)" >&2
    exit 1
  fi
  (cd "$BROWSER_DIR" && npm install --no-audit --no-fund --loglevel=error)
fi

test -f "$BUNDLE"
echo "browser.sh: $(chromium --version 2>/dev/null | head -1); @snowplow/browser-tracker $VERSION"
