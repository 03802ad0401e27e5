#!/usr/bin/env bash
# Builds the one-command GPU check: release test and bench binaries built here with
# BK_REQUIRE_CUDA=1 (kernels embedded), copied with debug info stripped into gpu-bundle/
# (git-ignored) beside a run.sh. Copy that folder to a GPU machine (CUDA driver, no Rust needed)
# and run `gpu-bundle/run.sh`: all GPU tests, then a short benchmark, then a summary table.
#   usage: [NVCC=/path/to/nvcc] .ci/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export BK_REQUIRE_CUDA=1
if [ -z "${NVCC:-}" ]; then
    NVCC=$(.ci/install-nvcc.sh "${BK_NVCC_DIR:-$HOME/.cache/bk-nvcc}" | tail -1)
fi
export NVCC
mkdir -p target
# One cargo invocation, release test profile for both: the bench profile would compile the
# kernels a second time in an OUT_DIR of its own.
cargo test --release --no-run --message-format=json --test gpu --bench gpu > target/gpu-bundle.json
# The CLI in the same (release) profile, so the library and its kernels are shared with the above.
cargo build --release --bin bk-infer --message-format=json >> target/gpu-bundle.json
pick() { # executable of target NAME of KIND (test, bench) from cargo's JSON messages
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, name, kind = sys.argv[1:4]
exe = None
for line in open(path):
    try: m = json.loads(line)
    except ValueError: continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == name and kind in t.get("kind", []) \
            and (kind != "bin" or not m.get("profile", {}).get("test")):
        exe = m["executable"]
if not exe: sys.exit(f"no {kind} executable named {name} in {path}")
print(exe)
PY
}
tests=$(pick target/gpu-bundle.json gpu test)
bench=$(pick target/gpu-bundle.json gpu bench)
cli=$(pick target/gpu-bundle.json bk-infer bin)
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp "$tests" gpu-bundle/gpu-tests
cp "$bench" gpu-bundle/gpu-bench
cp "$cli" gpu-bundle/bk-infer
strip --strip-debug gpu-bundle/gpu-tests gpu-bundle/gpu-bench gpu-bundle/bk-infer
# Compressed: the three binaries are mostly embedded fatbins and tables (68 MB -> 16-23 MB), small
# enough to carry to a machine with a size limit; run.sh unpacks them.
gzip -9 gpu-bundle/gpu-tests gpu-bundle/gpu-bench gpu-bundle/bk-infer
git rev-parse HEAD > gpu-bundle/COMMIT 2>/dev/null || echo unknown > gpu-bundle/COMMIT
git status --porcelain | grep -q . && echo "(built from a working tree with uncommitted changes)" >> gpu-bundle/COMMIT || true
"$NVCC" --version | grep release > gpu-bundle/NVCC
cat > gpu-bundle/run.sh <<'RUN'
#!/usr/bin/env bash
# The GPU check of bk-infer: every GPU test (BK_REQUIRE_GPU=1: a test that cannot get a GPU fails
# here instead of skipping), the short kernel benchmark, `bk-infer info`/`run`/`bench` on the
# GPU, then (time permitting) compute-sanitizer over a few tests and an ncu profile of two
# launches; a summary last. Logs stay beside this (copied to $OUT when that is set). Every step
# has a time limit inside one overall budget, so a hang costs only its own step:
#   [BK_BUDGET_S=480] [BK_QUICK=1] gpu-bundle/run.sh
cd "$(dirname "$0")"
for f in gpu-tests gpu-bench bk-infer; do
    [ -x "$f" ] || { gzip -dc "$f.gz" > "$f" && chmod +x "$f"; } || { echo "cannot unpack $f.gz"; exit 1; }
done
export BK_REQUIRE_GPU=1
budget=${BK_BUDGET_S:-480}
declare -A rc
# step NAME LIMIT_S LOG CMD...: runs CMD with stdout+stderr to LOG, within LIMIT_S and the budget.
step() {
    local name=$1 limit=$2 log=$3; shift 3
    local left=$((budget - SECONDS))
    if [ "$left" -lt 20 ]; then rc[$name]="skipped (budget)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" "$@" > "$log" 2>&1
    rc[$name]=$?
    echo "[$(printf '%4d' $SECONDS) s] $name: exit ${rc[$name]}"
}
echo "bk-infer GPU check: commit $(head -1 COMMIT); kernels built by nvcc $(cat NVCC)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>/dev/null || echo "(nvidia-smi not available)"
quick=${BK_QUICK:+--quick}
step tests 240 tests.log ./gpu-tests --test-threads=1 --show-output
step kernel-bench 90 bench.log ./gpu-bench
step cli 60 cli.log bash -c "./bk-infer info && echo && ./bk-infer run --device cuda"
step bk-bench 150 bk-bench.log ./bk-infer bench --device cuda $quick --json bench.json --csv bench.csv
if command -v compute-sanitizer > /dev/null; then
    # memcheck and synccheck over two tests (every format, poisoned and chunked runs); racecheck
    # (slow: it tracks every shared-memory access) over the multi-tile f64 kernels of one test
    # and the f32 kernel at (1, 512) through the benchmark.
    for tool in memcheck synccheck; do
        step "sanitizer-$tool" 45 "sanitizer-$tool.log" compute-sanitizer --tool $tool --error-exitcode 9 \
            ./gpu-tests --test-threads=1 poisoned_outputs_are_all_written quantized_outputs_are_the_host
    done
    step sanitizer-racecheck 60 sanitizer-racecheck.log compute-sanitizer --tool racecheck --error-exitcode 9 \
        ./gpu-tests --test-threads=1 singular_pivots_are_reported
    step sanitizer-racecheck-f32 60 sanitizer-racecheck-f32.log compute-sanitizer --tool racecheck --error-exitcode 9 \
        ./bk-infer bench --device cuda --quick --sets 1 --filter "1x512 f32"
fi
if command -v ncu > /dev/null; then
    for shape in "65536x512 f32 c64" "16x4096 f32 c64"; do
        tag=$(echo "$shape" | tr ' ' '-')
        step "ncu-$tag" 60 "ncu-$tag.log" ncu --launch-skip 3 --launch-count 1 -k regex:bk_solve \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
            --section WarpStateStats --section MemoryWorkloadAnalysis \
            ./bk-infer bench --device cuda --quick --sets 1 --filter "$shape"
    done
fi
if [ -n "${OUT:-}" ]; then cp -- *.log *.json *.csv COMMIT NVCC "$OUT"/ 2>/dev/null; fi
grep -vE "^test .* \.\.\. (ok|FAILED|ignored)$" tests.log | grep -vE "^(running|test result:|successes:|failures:)" | sed '/^$/d' | tail -30
echo
echo "==================== summary ===================="
grep -E "^test .* \.\.\. (ok|FAILED|ignored)$" tests.log | sed 's/^test /  /'
echo "tests: $(grep -E '^test result:' tests.log | tail -1)"
for k in "${!rc[@]}"; do echo "  step $k: ${rc[$k]}"; done | sort
for f in sanitizer-*.log; do [ -f "$f" ] && echo "$f: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK' "$f" | tail -1)"; done
echo
echo "cli:"; tail -12 cli.log
echo
echo "kernel benchmark:"; cat bench.log
echo
echo "bk-infer bench:"; grep -E "copy bandwidth" bk-bench.log | head -1; grep -E "^\|" bk-bench.log
fail=0
for k in tests kernel-bench cli bk-bench; do [ "${rc[$k]}" = 0 ] || fail=1; done
grep -q "^skipped:" bench.log && fail=1
if [ $fail -ne 0 ]; then echo "GPU CHECK: FAILED"; exit 1; fi
echo "GPU CHECK: PASSED"
RUN
chmod +x gpu-bundle/run.sh
du -sh gpu-bundle
ls -la gpu-bundle
