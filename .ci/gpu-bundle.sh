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
pick() { # executable of target NAME of KIND (test, bench) from cargo's JSON messages
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, name, kind = sys.argv[1:4]
exe = None
for line in open(path):
    try: m = json.loads(line)
    except ValueError: continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == name and kind in t.get("kind", []):
        exe = m["executable"]
if not exe: sys.exit(f"no {kind} executable named {name} in {path}")
print(exe)
PY
}
tests=$(pick target/gpu-bundle.json gpu test)
bench=$(pick target/gpu-bundle.json gpu bench)
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp "$tests" gpu-bundle/gpu-tests
cp "$bench" gpu-bundle/gpu-bench
strip --strip-debug gpu-bundle/gpu-tests gpu-bundle/gpu-bench
git rev-parse HEAD > gpu-bundle/COMMIT 2>/dev/null || echo unknown > gpu-bundle/COMMIT
git status --porcelain | grep -q . && echo "(built from a working tree with uncommitted changes)" >> gpu-bundle/COMMIT || true
"$NVCC" --version | grep release > gpu-bundle/NVCC
cat > gpu-bundle/run.sh <<'RUN'
#!/usr/bin/env bash
# The GPU check of bk-infer: every GPU test (BK_REQUIRE_GPU=1: a test that cannot get a GPU fails
# here instead of skipping), then the short benchmark, then a summary. Logs stay beside this.
cd "$(dirname "$0")"
export BK_REQUIRE_GPU=1
echo "bk-infer GPU check: commit $(head -1 COMMIT); kernels built by nvcc $(cat NVCC)"
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
./gpu-tests --test-threads=1 --show-output > tests.log 2>&1
tests_rc=$?
./gpu-bench > bench.log 2>&1
bench_rc=$?
grep -vE "^test .* \.\.\. (ok|FAILED|ignored)$" tests.log | grep -vE "^(running|test result:|successes:|failures:)" | sed '/^$/d' | tail -60
echo
echo "==================== summary ===================="
grep -E "^test .* \.\.\. (ok|FAILED|ignored)$" tests.log | sed 's/^test /  /'
echo "tests: $(grep -E '^test result:' tests.log | tail -1) (exit $tests_rc)"
echo
echo "benchmark (exit $bench_rc):"
cat bench.log
if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ] || grep -q "^skipped:" bench.log; then
    echo "GPU CHECK: FAILED"
    exit 1
fi
echo "GPU CHECK: PASSED"
RUN
chmod +x gpu-bundle/run.sh
du -sh gpu-bundle
ls -la gpu-bundle
