#!/usr/bin/env bash
# Issue 32's measurements on one CPU, every kernel path it offers, one after another on a quiet machine:
# the training step's profile natively and with oneDNN capped to AVX-512 with bf16 (no AMX) and to AVX2
# (the kernels an AVX2 or a non-AMX AVX-512 CPU runs; the CPU's own caches and clocks stay), the evaluation
# against its floor on 1 and 2 threads, and the cold start of `verify` beside `import torch`.
#
#     DATA_ROOT=../shared/data CKPT_DIR=ckp bash bench/cpu_kinds.sh [STEP ...]   (default: every step)
#
# CKPT_DIR holds the model bench.infer reads (resnet18_arcface: any trained one, quick_debug included:
# the cold start does not depend on the weights). Logs and GNU time reports go to $LOGS.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-results/bench/cpu_kinds}
CKPT_DIR=${CKPT_DIR:-ckp}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
WANT=" ${*:-profile_native profile_avx512_bf16 profile_avx2 eval infer} "

step() {  # step NAME COMMAND...: run it when asked for, keep its log and its wall time
    local name=$1; shift
    [[ $WANT == *" $name "* ]] || return 0
    echo "== $name: $*" | tee -a "$LOGS/session.log"
    /usr/bin/time -f "$name: %e s wall, %M KiB peak RSS" -a -o "$LOGS/times.txt" "$@" > "$LOGS/$name.log" 2>&1
    echo "   exit $? ($(tail -1 "$LOGS/times.txt"))" | tee -a "$LOGS/session.log"
}

# the default preset's step as `amp=auto` and the measured layout run it on each path
step profile_native python -m bench.profile_step --amp=bf16 --channels_last=true --tiny_conv=true --steps=4 --reps=3
step profile_avx512_bf16 env ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 \
    python -m bench.profile_step --amp=bf16 --channels_last=true --tiny_conv=true --steps=4 --reps=3
step profile_avx2 env ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
    python -m bench.profile_step --amp=off --channels_last=false --steps=4 --reps=3
step eval python -m bench.eval --threads=1,2
step infer python -m bench.infer --ckpt_dir="$CKPT_DIR"
