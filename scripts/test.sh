#!/usr/bin/env bash
# Installs headstart with its test dependencies and the [ray] extra (the cluster tests start real Ray
# nodes), and Chromium for the report test, and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
HEADSTART_EXTRAS="[test,ray]" scripts/setup.sh chromium
exec .venv/bin/python -m pytest "$@"
