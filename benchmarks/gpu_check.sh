#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md): explain speed and memory at ViT-B/16 224 px batch 32, training
# throughput of the by-design models at 200 classes, and GPU maps = CPU maps (float32, 1e-4).
#   bash benchmarks/gpu_check.sh [--out results.json]          # one CUDA GPU, < 8 min on an H200
#   bash benchmarks/gpu_check.sh --device cpu --dry-run         # tiny sizes, no GPU
# PYTHON selects the interpreter (default: python); the checkout's src/ goes first on the path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
