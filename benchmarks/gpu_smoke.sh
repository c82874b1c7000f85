#!/usr/bin/env bash
# GPU smoke test on one H100/H200, < 5 minutes: `small` model, bf16 DeepSpeed ZeRO-2 steps over NCCL,
# packed sampler (flash-attn varlen if installed, else SDPA) draft/edit tokens/s, peak GPU memory.
# Writes benchmarks/results/gpu_smoke.json. Exit 2 (with a message) when no CUDA GPU is visible.
#
#   bash benchmarks/gpu_smoke.sh                      # uses .venv/bin/python if present, else python3
#   PYTHON=python bash benchmarks/gpu_smoke.sh --train-steps 10
#   bash benchmarks/gpu_smoke.sh --cpu-dry-run        # check the script itself on a CPU machine
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export TOKENIZERS_PARALLELISM=false
# DS_ACCELERATOR is left to DeepSpeed's detection (cuda here); --cpu-dry-run sets cpu itself.
if [[ " $* " != *" --cpu-dry-run "* ]] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

set +e
timeout "${GPU_SMOKE_TIMEOUT_S:-300}" "$PYTHON" benchmarks/gpu_smoke.py "$@"
rc=$?
set -e
if [[ $rc -eq 124 ]]; then
  echo "gpu_smoke: timed out after ${GPU_SMOKE_TIMEOUT_S:-300} s (budget is 5 minutes)" >&2
fi
exit $rc
