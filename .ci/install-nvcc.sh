#!/usr/bin/env bash
# Installs nvcc 13.0 (the GPU machines run driver 580 / CUDA 13.0) from PyPI into DIR, without
# root. Idempotent: a DIR that already holds this nvcc is left as it is. Prints nvcc's real path
# last (call nvcc by that path, not through a symlink: it finds its headers relative to itself).
#   usage: .ci/install-nvcc.sh DIR        e.g.  NVCC=$(.ci/install-nvcc.sh "$HOME/.cache/bk-nvcc" | tail -1)
set -euo pipefail
dir="${1:?usage: install-nvcc.sh DIR}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
want="V13.0.88"
if [ -x "$nvcc" ] && "$nvcc" --version 2>/dev/null | grep -q "$want"; then
    readlink -f "$nvcc"
    exit 0
fi
mkdir -p "$dir"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore --upgrade --target "$dir" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 >&2
"$nvcc" --version | grep -q "$want" || { echo "install-nvcc: $nvcc is not $want" >&2; exit 1; }
readlink -f "$nvcc"
