#!/usr/bin/env bash
# Profile this repository's kernels on a CUDA GPU and pack the tables into one archive.
#
# Usage: benchmarks/gpu_profile.sh OUT_DIR MODE DTYPES [OPS]
#   e.g. benchmarks/gpu_profile.sh /tmp/out quick bf16
#        benchmarks/gpu_profile.sh /tmp/out quick fp8,fp16 gemm,moe
# Runs `moesim profile --device cuda` from the source tree (no install needed);
# if the machine lacks pydantic, wheels in .whl/ are installed to /tmp/site first.
# Writes OUT_DIR/<mode>-<dtypes>.tar.gz (the tables, hardware.yaml) and OUT_DIR/<mode>-<dtypes>.log.
set -uo pipefail
out=${1:?OUT_DIR}; mode=${2:-quick}; dtypes=${3:-bf16}; ops=${4:-gemm,moe,attention,router,permute,memcpy}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
if ! python3 -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$here" PYTHONUNBUFFERED=1
name="$mode-${dtypes//,/_}"
mkdir -p "$out/$name"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
    timeout "${PROFILE_TIMEOUT:-540}" python3 -c "import sys; from dashboard.cli import run; sys.argv[0] = 'moesim'; run()" \
        profile --device cuda "--$mode" --dtype "$dtypes" --ops "$ops" --out "$out/$name" --json
    echo "exit $?"
} >"$out/$name.log" 2>&1
tar -czf "$out/$name.tar.gz" -C "$out" "$name"
rm -rf "${out:?}/$name"
tail -n 40 "$out/$name.log"
