#!/usr/bin/env bash
# Prints the ptxas resource report (registers, spills, stack, shared memory) of every kernel, per
# architecture, as build.rs saved it when it compiled the kernels. Builds the crate if needed;
# fails when nvcc is missing or a kernel does not compile (BK_REQUIRE_CUDA=1). Uses the test
# profile, so after `cargo test` it reuses the kernels that build compiled.
#   usage: [NVCC=/path/to/nvcc] .ci/ptxas-report.sh [--raw] [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
raw=0
if [ "${1:-}" = "--raw" ]; then raw=1; shift; fi
json=$(BK_REQUIRE_CUDA=1 cargo test --no-run --lib --message-format=json "$@")
out_dir=$(printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "build-script-executed" and m.get("package_id", "").find("bk-infer") >= 0:
        print(m["out_dir"])
' | tail -1)
[ -n "$out_dir" ] || { echo "ptxas-report: no build-script output found" >&2; exit 1; }
if [ "$raw" = 1 ]; then cat "$out_dir/ptxas-report.txt"; else cat "$out_dir/ptxas-summary.txt"; fi
spills=$(awk 'NR > 1 && ($4 > 0 || $5 > 0)' "$out_dir/ptxas-summary.txt" | wc -l)
echo "kernels with spills: $spills"
