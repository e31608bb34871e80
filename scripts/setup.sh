#!/usr/bin/env bash
# One-step set-up on a fresh machine: a venv in .venv with xmodal and everything its tests need.
# torch is pinned FIRST so no later dependency can pull a multi-GB CUDA build (the pinned wheels are
# on this machine's disk; elsewhere pip downloads them). Chromium (Debian) is for the web-page test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev]"
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install Debian chromium; the browser test will be skipped" >&2
fi
echo "xmodal installed in .venv ($(.venv/bin/python -c 'import torch, xmodal; print("torch", torch.__version__, "xmodal", xmodal.__version__)'))"
