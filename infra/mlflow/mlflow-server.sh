#!/usr/bin/env bash
# A lean MLflow tracking server for a Ray head node (or any one machine of a cluster).
#
# Every setting comes from the environment (see mlflow.env.example); defaults give a private,
# loopback-only server on sqlite, good for one user. For a cluster keep it on 127.0.0.1 behind an
# authenticating reverse proxy on the head's private IP (the server itself has no authentication; see
# README.md), use a SQL backend (PostgreSQL) and a shared artifact destination (S3/MinIO or a path
# every node can read), and point jobs at it with MLFLOW_TRACKING_URI=http://<head>:<port>.
#
# Lean on purpose: one worker process (≈ 0.5 GB resident), MLflow's job-execution backend off,
# telemetry off. Artifacts are proxied (--serve-artifacts): clients need only the tracking URI,
# never storage credentials.
set -euo pipefail

MLFLOW_HOME="${MLFLOW_HOME:-${HOME}/.local/share/blockprune-mlflow}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${MLFLOW_HOME}/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-${MLFLOW_HOME}/artifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-1}"
MLFLOW_BIN="${MLFLOW_BIN:-mlflow}"

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-true}"

case "$BACKEND" in
  sqlite:///*) mkdir -p "$(dirname "${BACKEND#sqlite:///}")" ;;
esac
case "$ARTIFACTS" in
  *://*) ;;                      # s3://, gs://, … : the server's credentials come from the environment
  *) mkdir -p "$ARTIFACTS" ;;    # a local or shared (NFS) path
esac

extra=()
if [ -n "${MLFLOW_SERVER_ALLOWED_HOSTS:-}" ]; then
  extra+=(--allowed-hosts "$MLFLOW_SERVER_ALLOWED_HOSTS")   # e.g. mlflow.internal,10.0.0.5:5000
fi

shown="$(printf '%s' "$BACKEND" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#')"   # never log a password
echo "mlflow-server: backend=$shown artifacts=$ARTIFACTS listen=$HOST:$PORT workers=$WORKERS" >&2
exec "$MLFLOW_BIN" server \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --serve-artifacts \
  --host "$HOST" \
  --port "$PORT" \
  --workers "$WORKERS" \
  "${extra[@]}" \
  "$@"
