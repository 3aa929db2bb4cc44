#!/usr/bin/env bash
# Runs the GPU suite on the device machine; scripts/gpu_suite copies this
# file into its bundle as run.sh. Stages: env, tests, sanitize, bench, serve
# (the default runs the first four; serve is the checkpoint/serving figure).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# Carried as one archive: unpack outside the repository copy, run from there.
if [ -f "$HERE/bundle.tar.xz" ] && [ ! -d "$HERE/bin" ]; then
  UNPACKED=${GPU_SUITE_DIR:-/tmp/gpu_suite}
  rm -rf "$UNPACKED" && mkdir -p "$UNPACKED"
  tar -C "$UNPACKED" -xJf "$HERE/bundle.tar.xz" || { echo "gpu_suite: cannot unpack"; exit 1; }
  exec bash "$UNPACKED/run.sh" "$@"
fi
OUT=${OUT:-/tmp/gpu_suite_out}
mkdir -p "$OUT"
STAGES=${GPU_SUITE_STAGES:-env tests sanitize bench}
PRESETS=${BENCH_PRESETS:-llama-7b llama3-8b}
status=0

# cuBLAS 13 from the machine's own CUDA install, wherever it lives.
cuda_libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublas.so.13" ] && cuda_libs="$cuda_libs:$d"
done
py_cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
[ -n "$py_cublas" ] && cuda_libs="$cuda_libs:$py_cublas"
export LD_LIBRARY_PATH="$HERE/lib$cuda_libs:${LD_LIBRARY_PATH:-}"
export SINKSERVE_SHARED="$HERE/shared"
export SINKSERVE_REQUIRE_GPU=1  # a skip for want of a device is a failure here
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
stage() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
has() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
run() {  # run NAME CMD...: logs to $OUT/NAME.log, remembers failures
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || status=1
  printf '%-34s rc=%d  %s\n' "$name" $rc "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) \] [0-9]|ERROR SUMMARY' "$OUT/$name.log" | tr '\n' ' ' | cut -c1-120)"
}

if has env; then
  stage env
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  for b in "$HERE"/bin/*; do
    missing=$(ldd "$b" | grep "not found")
    [ -z "$missing" ] || { echo "$(basename "$b"): $missing"; status=1; }
  done
fi

if has tests; then
  stage tests
  cd "$HERE"
  run cuda_kernels_test bin/cuda_kernels_test
  run cuda_backend_test bin/cuda_backend_test
  run backend_registry_test bin/backend_registry_test
  # The whole path a user takes: sinkserve loading the CUDA module beside it.
  if [ -x bin/sinkserve ]; then
    for b in cuda cpu; do
      run "generate_$b" bin/sinkserve generate --model shared/models/stories260K.gguf \
        --backend "$b" --temperature 0 --max-tokens 200 --ignore-eos --ids
    done
    if cmp -s <(head -1 "$OUT/generate_cuda.log") <(head -1 "$OUT/generate_cpu.log"); then
      echo "generate: 200 greedy ids equal on cuda (f16 weights) and cpu"
    else
      echo "generate: greedy ids differ between cuda (f16 weights) and cpu (see logs)"
    fi
  fi
  grep -h -E '^\[  FAILED  \]|Failure|Expected|Which is|error' "$OUT"/cuda_*_test.log | head -40
fi

if has sanitize; then
  stage "sanitize (compute-sanitizer memcheck + racecheck on a parity subset)"
  cd "$HERE"
  subset='Models/CudaBackendTest.*/llama_f32:Models/CudaBackendTest.*/wide_f16_kv_bf16:Models/CudaBackendTest.*/mqa_f32'
  run memcheck_kernels "$SANITIZER" --tool memcheck --error-exitcode 7 bin/cuda_kernels_test
  run memcheck_backend "$SANITIZER" --tool memcheck --error-exitcode 7 bin/cuda_backend_test --gtest_filter="$subset"
  run racecheck_backend "$SANITIZER" --tool racecheck --error-exitcode 7 bin/cuda_backend_test --gtest_filter="$subset:-*Greedy*"
  run initcheck_kernels "$SANITIZER" --tool initcheck --error-exitcode 7 bin/cuda_kernels_test
fi

if has serve; then
  # The serving path end to end on the 7B shape, every turn durable: bench
  # load against serve --backend cuda, beside cuda_bench's batched decode
  # (the ceiling) and the disk's raw write speed, all in this one run.
  stage "serve (bench load vs cuda_bench, 7B-shape f16, streaming(4,252))"
  cd "$HERE"
  model=/tmp/sinkserve_llama-7b.gguf
  [ -f "$model" ] || bin/make_synthetic_model --out "$model" --preset llama-7b --vocab 512 \
    --tokenizer-from shared/models/stories260K.gguf --type f16 --threads 16 --quiet || status=1
  echo "--- disk: dd 2 GiB O_DIRECT + fdatasync"
  dd if=/dev/zero of=/tmp/dd_probe bs=4M count=512 oflag=direct conv=fdatasync 2>&1 | tail -1
  rm -f /tmp/dd_probe
  echo "--- checkpoint_bench (store side, 7B-shape turns of 70 cells)"
  bin/checkpoint_bench --sessions=${SERVE_CB_SESSIONS:-32} --turns=4 --threads=4 \
    --dir=/tmp/checkpoint_bench 2>&1 | grep -v '^  turn' | tee "$OUT/checkpoint_bench.log"
  echo "--- cuda_bench batched decode (the ceiling)"
  bin/cuda_bench --model "$model" --weights f16 --kv f16 --caches 256 --batches 1,16,64 \
    --batch-cache 256 --recompute 0 --prefill 512 2>&1 | tee "$OUT/cuda_bench_batched.log"
  for sync in true; do
    db=/tmp/serve_db_$sync
    rm -rf "$db"
    bin/sinkserve serve --model "$model" --db "$db" --backend cuda --kv-dtype f16 \
      --listen 127.0.0.1:50077 --default-policy 'streaming(4,252)' --sync=$sync \
      --checkpoint-threads 4 >"$OUT/serve_$sync.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q ready "$OUT/serve_$sync.log" && break; sleep 0.2; done
    grep -q ready "$OUT/serve_$sync.log" || { echo "serve did not start"; cat "$OUT/serve_$sync.log"; status=1; }
    for n in ${SERVE_SESSIONS:-1 16 64}; do
      echo "--- bench load: $n sessions, sync=$sync"
      bin/sinkserve bench load --server 127.0.0.1:50077 --sessions "$n" --turns 2 --tokens 64 \
        --temperature 0 2>&1 | tee -a "$OUT/bench_load_$sync.log"
    done
    kill -TERM $pid; wait $pid; echo "serve exit $?"
    echo "stall lines: $(grep -c 'Stalling writes' "$OUT/serve_$sync.log")"
    grep -E 'drained|failed|error' "$OUT/serve_$sync.log" | tail -5
  done
  rm -f "$model"
fi

if has bench; then
  stage bench
  for preset in $PRESETS; do
    model=/tmp/sinkserve_$preset.gguf
    [ -f "$model" ] || "$HERE/bin/make_synthetic_model" --out "$model" --preset "$preset" \
      --type f16 --threads 16 --quiet || { status=1; continue; }
    echo "--- $preset (f16 weights, f16 KV)"
    "$HERE/bin/cuda_bench" --model "$model" --weights f16 --kv f16 2>&1 | tee "$OUT/bench_$preset.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    echo "--- $preset, decode with CUDA graphs"
    "$HERE/bin/cuda_bench" --model "$model" --weights f16 --kv f16 --graphs 1 --recompute 0 \
      --batches 1,64 2>&1 | tee "$OUT/bench_${preset}_graphs.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    rm -f "$model"  # 13-16 GB each: the disk holds 64 GB
  done
fi

stage "done: status $status"
exit $status
