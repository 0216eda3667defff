#!/usr/bin/env bash
# Create the benchmark's own environment for LiteLLM's proxy (kept apart from the project's .venv,
# whose litellm is used as a library only). Pinned to 1.106.2; 1.82.7, 1.82.8 and 1.107.0 were
# compromised on PyPI and must never be installed.
#   bash bench/setup_litellm_proxy.sh [VENV_DIR]      (default /tmp/litellm-proxy-venv)
set -euo pipefail
VENV="${1:-/tmp/litellm-proxy-venv}"
VERSION="1.106.2"
case "$VERSION" in 1.82.7|1.82.8|1.107.0) echo "refusing compromised litellm $VERSION" >&2; exit 1;; esac

if [ ! -x "$VENV/bin/litellm" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "litellm[proxy]==$VERSION"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
if [ "$installed" != "$VERSION" ]; then
    echo "litellm $installed in $VENV, expected $VERSION" >&2
    exit 1
fi
echo "$VENV/bin/litellm (litellm $installed)"
