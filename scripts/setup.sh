#!/usr/bin/env bash
# Idempotent setup on Debian 12 (bookworm): system packages, the Python virtual
# environment at .venv/, and the Node test clients. A second run changes nothing
# and takes a few seconds.
#
#   scripts/setup.sh          everything (run the gateway and its tests)
#   scripts/setup.sh run      only what the gateway itself needs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- system packages -------------------------------------------------------
# libopus0: Opus (bound directly); libbcg729-0: G.729 (optional, GPLv3, loaded at run time)
run_pkgs=(python3 python3-venv python3-pip libopus0 libbcg729-0 openssl ca-certificates)
# The switch (Kamailio), the far end (sipp), TURN (coturn), the browsers (Chromium,
# Firefox ESR: driven by the npm packages below, which never download a browser)
test_pkgs=(kamailio kamailio-websocket-modules kamailio-tls-modules sip-tester coturn
           chromium chromium-driver firefox-esr espeak-ng sox rtpengine-daemon)
pkgs=("${run_pkgs[@]}")
[ "$mode" = run ] || pkgs+=("${test_pkgs[@]}")
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages enable system services on port 5060/3478; the tests
  # start their own instances on loopback, so keep the stock ones off.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now kamailio coturn rtpengine-daemon >/dev/null 2>&1 || true
  fi
fi

# --- Python ----------------------------------------------------------------
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python 3.11 or newer is required (found $("$py" --version))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c 'import gateway' 2>/dev/null; then
  echo "setup: installing the gateway into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  if [ "$mode" = run ]; then .venv/bin/pip install -q -e . ; else .venv/bin/pip install -q -e '.[test]'; fi
  echo "$stamp" > .venv/.setup-stamp
fi

# --- Node test clients (JsSIP, SIP.js) ----------------------------------------
if [ "$mode" != run ]; then
  for dir in tests/clients/*/; do
    [ -f "$dir/package-lock.json" ] || continue
    lock=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [ "$(cat "$dir/node_modules/.setup-stamp" 2>/dev/null)" != "$lock" ]; then
      echo "setup: npm ci in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
      echo "$lock" > "$dir/node_modules/.setup-stamp"
    fi
  done
fi
echo "setup: ready"
