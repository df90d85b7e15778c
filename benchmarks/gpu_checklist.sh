#!/usr/bin/env bash
# The GPU checklist in one command, for a machine lent for a short while: the kernel tests
# (compiled, `gpu`-marked ones included), the decode step against eager torch and
# torch.compile, the streaming vocoder, and the per-kernel benchmarks. Each part runs under its
# own time limit and the next one runs whatever the last one did; the log of all of them goes to
# $OUT/log.txt (or ./gpu-checklist.log) and the results files they wrote to $OUT/results.tar,
# brought up to date after each part.
#
#     bash benchmarks/gpu_checklist.sh [tests] [decode] [compile] [profile] [profile-pdl]
#         [vocoder] [kernels] [engine] [history] [sweep] [sweep-batched] [attention-sweep] [NAME...]
#
# `engine` is the serving loop itself (benchmarks/engine_speed.py on random released-shape
# weights): 1, 2, 4, ... ENGINE_SESSIONS (64) callers speaking at once until one round is no
# longer real time, each round with an engine of its own (its kernel step built and captured).
# `history` is what a conversation's memory costs (benchmarks/history_cost.py): prompt, step and
# refill times as the context grows, and a session that remembers until its context is full.
# With no parts named, all but engine, history, the sweeps and profile-pdl run (the step's kernels
# launched as programmatic dependents are timed by decode; profile-pdl lists them kernel by
# kernel). `decode`
# skips torch.compile (minutes of compiling); `compile` is the same benchmark with it. `sweep`
# times kernels/gemv.py over its launch shapes for 1 and 4 rows, `sweep-batched` for 8, 32 and 64
# (what its defaults are set from; minutes each, so one per device call); `attention-sweep` times
# the attention at each split length against the one split_len_for picks (what its rule is set
# from). A NAME (e.g. head_argmax) runs that kernel's benchmark alone. Extra pytest arguments go
# in PYTEST_ARGS, decode_step's in DECODE_ARGS (`decode`) and COMPILE_ARGS (`compile`): e.g.
# DECODE_ARGS="--batches 1,64 --steps 100" PYTEST_ARGS="-m gpu" with `decode tests` runs a
# shorter version of both, for a lease with little time left.
#
# The device tool's machines cannot install packages: run benchmarks/device_wheels.sh here first
# and name .whl in the call's carry; what .whl holds is installed there before the parts run.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
LOG="$OUT/log.txt"
[ "$OUT" = . ] && LOG=gpu-checklist.log
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # 8 test workers share the CPU cores
parts=("$@")
START=$(mktemp)  # results written after this are this run's
[ ${#parts[@]} -eq 0 ] && parts=(tests decode compile profile vocoder kernels)

run() {  # run LIMIT_S COMMAND...: one part, its output in the log, its status and time after it
    local limit=$1
    shift
    echo "=== $* (limit ${limit} s)" | tee -a "$LOG"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== rc $rc after $((SECONDS - began)) s: $*" | tee -a "$LOG"
    keep_results
}

keep_results() {  # this run's results files so far into $OUT/results.tar: a call cut short by
    # the device tool's limit still brings back what its finished parts measured
    [ "$OUT" = . ] && return
    find benchmarks/results -newer "$START" -name "*.json" -print0 |
        xargs -0 --no-run-if-empty tar -cf "$OUT/results.tar.part" &&
        [ -f "$OUT/results.tar.part" ] && mv "$OUT/results.tar.part" "$OUT/results.tar"
    return 0
}

# The packages the machine's image lacks, carried as wheels (benchmarks/device_wheels.sh)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c 'import realtime.engine.engine' 2>&1 | tee -a "$LOG"  # names a missing package at once

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
        --format=csv
    python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda",
        torch.version.cuda, "triton", triton.__version__, torch.cuda.get_device_name())'
} 2>&1 | tee -a "$LOG"

for part in "${parts[@]}"; do
    case $part in
        tests)
            run 420 python3 -m pytest -q $(python3 -c 'import xdist' 2>/dev/null && printf -- '-n 8') --timeout 120 tests/kernels ${PYTEST_ARGS:-}
            # the prompt graphs' and the vocoder's GPU tests (their other tests are CPU ones)
            run 180 python3 -m pytest -q -m gpu --timeout 120 tests/test_prompt_graph.py tests/test_vocoder.py
            ;;
        decode) run 360 python3 -m benchmarks.decode_step --no-compile ${DECODE_ARGS:-} ;;
        compile) run 540 python3 -m benchmarks.decode_step ${COMPILE_ARGS:-} ;;
        profile) run 240 python3 -m benchmarks.step_profile ;;
        profile-pdl) run 240 python3 -m benchmarks.step_profile --pdl ;;
        sweep) run 560 python3 -m benchmarks.kernels.gemv --sweep --batches 1,4 ;;
        sweep-batched) run 560 python3 -m benchmarks.kernels.gemv --sweep --batches 8,32,64 ;;
        attention-sweep) run 300 python3 -m benchmarks.kernels.decode_attention --sweep --batches 1,8,32,64 ;;
        vocoder) run 120 python3 -m benchmarks.vocoder_speed --device cuda ;;
        engine) run 540 python3 -m benchmarks.engine_speed --device cuda --max-sessions "${ENGINE_SESSIONS:-64}" ;;
        history) run 300 python3 -m benchmarks.history_cost --device cuda ;;
        kernels)
            for bench in embed_mean add_rmsnorm qkv_rope_cache decode_attention swiglu \
                gemv head_argmax head_sample feedback; do
                run 120 python3 -m "benchmarks.kernels.$bench"
            done
            ;;
        *) run 120 python3 -m "benchmarks.kernels.$part" ;;
    esac
done
