#!/usr/bin/env bash
# Installs headstart with its test dependencies (and Chromium for the report test) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
HEADSTART_EXTRAS="[test]" scripts/setup.sh chromium
exec .venv/bin/python -m pytest "$@"
