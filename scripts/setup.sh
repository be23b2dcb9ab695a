#!/usr/bin/env bash
# Set up a fresh machine: Fashion-MNIST from Debian, a .venv with torch and mobilenets.
# Usage: bash scripts/setup.sh [--test]   (--test also installs the test-only packages)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; }
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --quiet --disable-pip-version-check"
.venv/bin/python -c "import torch, torchvision" 2>/dev/null ||
  $PIP install torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, torchvision" 
# The main job exports ONNX and quantizes with ONNX Runtime, so `deploy` is part of every set-up.
extra="[deploy]"; [ "${1:-}" = "--test" ] && extra="[deploy,test]"
$PIP install -e ".${extra}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import mobilenets, onnx, onnxruntime" 
# The test extra brings the phone engines (the 'mobile' extra's packages) too.
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -c "import executorch.runtime, openvino, nncf, litert_torch, ai_edge_litert.interpreter"
fi
