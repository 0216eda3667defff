#!/usr/bin/env bash
# The lean serving install, measured: a fresh venv with `pip install <repo>` (base dependencies
# only, no extras), its size on disk, then `cscr serve` from it with the bundled router and the
# demo gateway.yaml (its providers point at 127.0.0.1:8100, where nothing needs to listen): time
# to /ready, idle RSS, and which heavy packages the venv does not even contain.
#
#   bench/install_size.sh [VENV_DIR]          (default /tmp/cscr-lean; removed and rebuilt)
#
# Numbers in docs/DEPLOY.md ("The lean serving install").
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-/tmp/cscr-lean}"
PY="${PYTHON:-python3}"
PORT="${PORT:-18765}"
WORK="$(mktemp -d)"
trap 'kill "${SERVER:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
start=$(date +%s)
"$VENV/bin/pip" install -q "$REPO"
echo "install: $(( $(date +%s) - start )) s"
echo "venv size: $(du -sh "$VENV" | cut -f1)   ($VENV)"
echo "largest packages:"
du -s "$VENV"/lib/python3*/site-packages/* | sort -rn | head -8 | awk '{printf "  %6.1f MB  %s\n", $1/1024, $2}'
for pkg in torch transformers pandas sklearn matplotlib onnxruntime; do
    if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
        echo "  present: $pkg"
    else
        echo "  absent:  $pkg"
    fi
done

# serve from outside the repository, so nothing is imported from the source tree
cp "$REPO/gateway.yaml" "$WORK/gateway.yaml"
cd "$WORK"
start=$(date +%s.%N)
CSCR_CACHE_DIR="$WORK/cache" LITELLM_LOCAL_MODEL_COST_MAP=True \
    "$VENV/bin/cscr" serve --config gateway.yaml --host 127.0.0.1 --port "$PORT" --log-level warning \
    > "$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$PORT/ready" > "$WORK/ready.json" 2>/dev/null; then break; fi
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 0.2
done
echo "ready after: $(echo "$(date +%s.%N) - $start" | bc) s"
"$VENV/bin/python" -c "import json,sys; r=json.load(open('$WORK/ready.json')); print('/ready:', json.dumps(r)[:300])"
sleep 5
echo "idle RSS: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$SERVER/status")"
for _ in 1 2 3; do
    curl -s -o /dev/null -w "chat (no upstream listening): HTTP %{http_code}\n" "http://127.0.0.1:$PORT/v1/chat/completions" \
        -H 'content-type: application/json' \
        -d '{"model":"auto","max_tokens":8,"messages":[{"role":"user","content":"What is the capital of France?"}]}'
done
echo "RSS after 3 routed requests: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$SERVER/status")"
echo "encoder builds in the cache: $(find "$WORK/cache" -path '*encoders*' -name config.json 2>/dev/null | wc -l)"
if grep -q "not loaded" "$WORK/serve.log"; then echo "router problem:"; grep "not loaded" "$WORK/serve.log"; fi
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
SERVER=

# the replay upstream is a test double (RouterBench's recorded answers); say whether the lean venv
# can run it. CSCR_DATA_DIR: the shared data (default: the first shared/data above the repository).
UP_PORT=$((PORT + 1))
DATA="${CSCR_DATA_DIR:-}"
dir="$REPO"
while [ -z "$DATA" ] && [ "$dir" != / ]; do
    [ -d "$dir/shared/data" ] && DATA="$dir/shared/data"
    dir="$(dirname "$dir")"
done
CSCR_DATA_DIR="$DATA" timeout 90 "$VENV/bin/cscr" upstream --port "$UP_PORT" \
    --log-level warning > "$WORK/upstream.log" 2>&1 &
SERVER=$!
status="fails in the lean venv"
for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$UP_PORT/health" 2>/dev/null; then status="ok"; break; fi
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.2
done
echo "cscr upstream (replay): $status"
[ "$status" = ok ] || tail -3 "$WORK/upstream.log"
