#!/usr/bin/env bash
# Install torch + torchvision into the given Python unless a working pair is already there.
# The releases chosen here are the ones this project's machines keep on local disk
# (pyproject declares ranges, so a GPU machine's preinstalled torch is accepted as is).
set -euo pipefail
PY="$1"
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
    exit 0
fi
case "$(uname -m)" in
    aarch64) "$PY" -m pip install torch==2.9.1 torchvision==0.24.1 ;;
    *) "$PY" -m pip install torch==2.14.1 torchvision==0.29.1 ;;
esac
