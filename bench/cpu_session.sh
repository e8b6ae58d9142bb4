#!/usr/bin/env bash
# The measurements committed from one CPU session, in order, after `python main.py compare` has trained the
# default models: re-evaluation with the current code, the figures (toy runs included, then a timed
# redraw), the ONNX export and the inference benchmark, the evaluation benchmark, the SphereFace rows of
# the margin-loss grid, fp32 against bf16 evaluation embeddings, and the training-step benchmark.
# Each step's output and GNU time report go to $LOGS (default results/bench/cpu_session/).
#
#     DATA_ROOT=../shared/data bash bench/cpu_session.sh [STEP ...]     (default: every step, in order)
#
# MODELS (default resnet18_arcface,resnet18_softmax) names the trained models the steps read.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-results/bench/cpu_session}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

MODELS=${MODELS:-resnet18_arcface,resnet18_softmax}
WANT=" ${*:-softmax_train test figures figures_redraw export infer eval grid_sphereface grid_sphereface3 grid eval_precision train} "

step() {  # step NAME COMMAND...: run it (when asked for), keep its log and its wall time / peak memory
    local name=$1; shift
    [[ $WANT == *" $name "* ]] || return 0
    echo "== $name: $*" | tee -a "$LOGS/session.log"
    /usr/bin/time -f "$name: %e s wall, %M KiB peak RSS" -a -o "$LOGS/times.txt" "$@" > "$LOGS/$name.log" 2>&1
    echo "   exit $? ($(tail -1 "$LOGS/times.txt"))" | tee -a "$LOGS/session.log"
}

# the softmax partner of the default pair under the current code (about 2 h on 2 AVX2 cores; ArcFace's
# run of the same recipe is arcface_compare.log)
step softmax_train python main.py softmax --use_tqdm=false
step test python main.py test --use_tqdm=false
step figures python main.py figures --models=$MODELS --use_tqdm=false
step figures_redraw python main.py figures --models=$MODELS --reuse=true --use_tqdm=false
step export python main.py export --out=exports/arcface
step infer python -m bench.infer --onnx=exports/arcface
step eval python -m bench.eval
# SphereFace with annealing by progress and the new batch orders, seed 0 of each data set, beside the grid
# (2 runs, about 30 min on 2 AVX2 cores; the full 6-run rerun below needs about 3 h there)
step grid_sphereface python main.py grid --losses=sphereface --seeds=1 --results_dir=results/sphereface_rerun \
    --use_tqdm=false
# seeds 1 and 2 of the same (4 more runs, about 1 h there); seed 0 is read back from the step above
step grid_sphereface3 python main.py grid --losses=sphereface --seeds=3 --reuse=true \
    --results_dir=results/sphereface_rerun --use_tqdm=false
# the SphereFace rows again (annealing by progress, new batch orders); every other row is reused as committed
[[ $WANT == *" grid "* ]] && rm -rf results/grid/runs/*_sphereface_s*
step grid python main.py grid --reuse=true --eval_amp=true --use_tqdm=false
step eval_precision python -m bench.eval_precision --models=$MODELS
step train python -m bench.train --compile=false
echo "done" | tee -a "$LOGS/session.log"
