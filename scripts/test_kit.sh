#!/usr/bin/env bash
# make test-kit: install from the kit with the package index unreachable (a network namespace with no
# interfaces but loopback), then run notebook 00 with the kit's venv. Slow (a fresh venv of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-build/kit}
[ -e "$KIT/install.sh" ] || bash scripts/make_kit.sh "$KIT"
WORK=$(mktemp -d /tmp/lwkit-kit-test.XXXXXX)
cp -r "$KIT"/. "$WORK"/
# A new network namespace: no interfaces but loopback (brought up: Jupyter kernels talk over 127.0.0.1).
offline() { unshare -n -- bash -c 'ip link set lo up && exec "$@"' bash "$@"; }
offline bash -c "! python3 -c 'import urllib.request; urllib.request.urlopen(\"https://pypi.org\", timeout=5)' \
  2>/dev/null || { echo 'network still reachable'; exit 1; }; bash '$WORK/install.sh'"
offline env LWKIT_HEADLESS=1 LWKIT_CACHE_DIR="$WORK/cache" "$WORK/lwkit/.venv/bin/python" -m lwkit.run 00 \
  --out "$WORK/build"
echo "test-kit: installed offline and ran notebook 00 in $WORK"
