#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit, integration
# (Kamailio, sipp, JsSIP on Node) and end-to-end tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
set +e
.venv/bin/python -m pytest -p no:cacheprovider "${@:-tests}"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests for this selection" >&2
fi
exit $rc
