#!/usr/bin/env bash
# Everything one short GPU lease should check, as one command (device time is scarce):
#   1. the test suite with CUDA visible (quick_debug runs then train and evaluate on the GPU);
#   2. recipe candidates for the CPU preset, scored on validation only (python -m bench.recipe);
#   3. the margin-loss grid (python main.py grid), one process per data set x loss, merged afterwards
#      with --reuse=true (rerun in full: batch orders and SphereFace's annealing changed since the last);
#   4. the default compare on the GPU, and the original recipe (--preset=original --pretrained=false,
#      128 px) in its own results folder, capped by the time limit like every other job.
# All run side by side as separate processes on the one GPU: each is launch-bound, so they share it well.
#   usage: DATA_ROOT=... bash bench/gpu_checks.sh OUTDIR [quick]     (quick = quick_debug dry run)
set -u
OUT=${1:?usage: bash bench/gpu_checks.sh OUTDIR [quick]}
QUICK=${2:-}
LIMIT=${GPU_CHECK_LIMIT_S:-450}   # seconds for all jobs; what finished by then is kept
PAR=${GPU_CHECK_JOBS:-32}  # all at once
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
Q=""
[ -n "$QUICK" ] && Q="--quick_debug=true"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc; date; } > "$OUT/logs/env.txt" 2>&1

jobs=$(mktemp)
echo "python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_distributed.py > $OUT/logs/pytest.log 2>&1" >> "$jobs"
# candidate | losses | overrides (longest first)
while IFS='|' read -r name losses ov; do
  for loss in ${losses//,/ }; do
    for seed in 0 1; do
      echo "python3 -m bench.recipe --name=$name --losses=$loss --seeds=$seed $ov $Q > $OUT/logs/recipe_${name}_${loss}_$seed.log 2>&1" >> "$jobs"
    done
  done
done <<'CANDIDATES'
base|arcface,softmax|
noaug|arcface,softmax|--augment=false
lr2e-3|arcface,softmax|--lr=2e-3
wd5e-2|arcface,softmax|--weight_decay=5e-2
s16|arcface|--scale=16
CANDIDATES
for ds in mnist fashion_mnist; do
  for loss in softmax normface sphereface cosface arcface; do
    echo "python3 main.py grid --datasets=$ds --losses=$loss $Q > $OUT/logs/grid_${ds}_$loss.log 2>&1" >> "$jobs"
  done
done
echo "python3 main.py compare --use_tqdm=false $Q > $OUT/logs/compare.log 2>&1" >> "$jobs"
echo "python3 main.py compare --preset=original --pretrained=false --use_tqdm=false --results_dir=results/original \
--ckpt_dir=ckp/original $Q > $OUT/logs/original.log 2>&1" >> "$jobs"
t0=$(date +%s)
timeout "$LIMIT" xargs -P "$PAR" -I{} sh -c "{}" < "$jobs"
echo "jobs: rc $? after $(( $(date +%s) - t0 )) s" >> "$OUT/logs/env.txt"
timeout 60 python3 main.py grid --reuse=true $Q > "$OUT/logs/grid_merge.log" 2>&1
python3 -m bench.recipe --summary=true > "$OUT/logs/recipe_summary.log" 2>&1
# fp32 against bf16 evaluation embeddings of the models compare just trained (bench.eval_precision runs on
# the CPU: minutes on 16 cores with native bf16, about 65 min per model on 2 AVX2 cores where bf16 is emulated)
timeout 300 python3 -m bench.eval_precision > "$OUT/logs/eval_precision.log" 2>&1
nvidia-smi >> "$OUT/logs/env.txt" 2>&1
tar czf "$OUT/results.tgz" results/bench/recipe results/bench/eval_precision.json results/grid results/original results/resnet18_* results/DET.png \
    2>/dev/null
tar czf "$OUT/logs.tgz" -C "$OUT" logs
