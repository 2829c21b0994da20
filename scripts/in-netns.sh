#!/usr/bin/env bash
# Runs a command in a private network namespace (loopback only) when we are root and unshare works,
# so every Ray/MLflow port the tests open is unreachable from outside. Falls back to running it as is.
set -euo pipefail
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1 && unshare --net true 2>/dev/null; then
  exec unshare --pid --net --fork --mount-proc bash -c 'ip link set lo up && exec "$@"' bash "$@"
fi
echo "in-netns: no network namespace available; running on the host network" >&2
exec "$@"
