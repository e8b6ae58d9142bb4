#!/usr/bin/env bash
# The measurements committed from one CPU session, in order, after `python main.py compare` has trained the
# default models: re-evaluation with the current code, the figures (toy runs included, then a timed
# redraw), the ONNX export and the inference benchmark, the evaluation benchmark, the SphereFace rows of
# the margin-loss grid, fp32 against bf16 evaluation embeddings, and the training-step benchmark.
# Each step's output and GNU time report go to $LOGS (default results/bench/cpu_session/).
#
#     DATA_ROOT=../shared/data bash bench/cpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-results/bench/cpu_session}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run it, keep its log and its wall time / peak memory
    local name=$1; shift
    echo "== $name: $*" | tee -a "$LOGS/session.log"
    /usr/bin/time -f "$name: %e s wall, %M KiB peak RSS" -a -o "$LOGS/times.txt" "$@" > "$LOGS/$name.log" 2>&1
    echo "   exit $? ($(tail -1 "$LOGS/times.txt"))" | tee -a "$LOGS/session.log"
}

step test python main.py test --use_tqdm=false
step figures python main.py figures --use_tqdm=false
step figures_redraw python main.py figures --reuse=true --use_tqdm=false
step export python main.py export --out=exports/arcface
step infer python -m bench.infer --onnx=exports/arcface
step eval python -m bench.eval
# the SphereFace rows again (annealing by progress, new batch orders); every other row is reused as committed
rm -rf results/grid/runs/*_sphereface_s*
step grid python main.py grid --reuse=true --eval_amp=true --use_tqdm=false
step eval_precision python -m bench.eval_precision
step train python -m bench.train --no-compile
echo "done" | tee -a "$LOGS/session.log"
