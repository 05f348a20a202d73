#!/usr/bin/env bash
# Set up (idempotent), then run a local switch (Kamailio), a far end (sipp) and the
# gateway on loopback, and place a test call through them. --once exits after the call.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
