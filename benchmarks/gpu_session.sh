#!/usr/bin/env bash
# What was run on a lent GPU machine (docs/gpu.md): the trainer's step time against the
# nanoGPT-style reference at a real width, bf16 and torch.compile paths of the trainer, and
# specs/gpu-study.yaml's stages. Wheels for packages the machine lacks may sit in .whl/.
# Results go to $OUT (or ./gpu-out): logs, and the study folder as a tarball.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 CP_CACHE_DIR=/tmp/cp-cache
# The copy of the tree on a lent machine has no .git: pass the commit along (CP_GIT_COMMIT).
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

stamp "throughput: width 1024, depth 8, batch 32 x 512"
[ -n "${SKIP_BENCH:-}" ] || for opt in "--precision fp32 --steps 10 --rounds 3" "--precision bf16 --steps 20 --rounds 5" \
           "--precision bf16 --compile --steps 20 --rounds 5"; do
  python3 benchmarks/throughput.py --width 1024 --depth 8 --batch 32 --seq-len 512 $opt \
    | tee -a "$OUT/throughput.txt"
done

stamp "trainer with torch.compile and bf16 on the GPU (a short run)"
[ -n "${SKIP_BENCH:-}" ] || python3 -m cp.cli train specs/gpu-study.yaml --model proxy \
  --results /tmp/compile-check \
  --set runtime.compile=true --set models.proxy.tokens=262144 --set train.evals=2 \
  | tail -3 | tee "$OUT/compile.txt"

stamp "gpu-study"
# A call may run ${DEADLINE:-560} s: a stage cut short there resumes in the next call (its
# finished runs are in the study folder, which comes back in the tarball).
for stage in check sweep select transfer target report; do
  left=$(( ${DEADLINE:-560} - ($(date +%s) - t0) ))
  [ "$left" -gt 20 ] || { stamp "deadline: stopping before $stage"; break; }
  stamp "stage $stage"
  timeout "$left" python3 -m cp.cli stage "$stage" specs/gpu-study.yaml --results results \
    || { stamp "stage $stage did not finish"; break; }
done
stamp "done"
tar --exclude=checkpoint.pt -czf "$OUT/gpu-study.tar.gz" results/gpu-study
