#!/usr/bin/env bash
# Installs headstart with its test dependencies, the [ray] extra (the cluster tests start real Ray
# nodes) and the [tensorflow] extra, Chromium and Firefox ESR for the page tests, and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
HEADSTART_EXTRAS="[test,ray,tensorflow]" scripts/setup.sh chromium firefox-esr
exec .venv/bin/python -m pytest "$@"
