#!/usr/bin/env bash
# The GPU checks, in one pass on a machine with one CUDA device (about 8 minutes on an H200): the CUDA tests (training
# under bf16 and fp16 autocast, the evaluator's GPU ranking against the CPU kernel, encoding against the CPU), the
# throughput benchmarks, `hashbench bench` on the paper's B6 and on B0 at 224 px, one full-profile DAFH cell at 32 bits
# for a few epochs on the default phantom (random initial weights: nothing can be fetched there), and the quick
# profile's HashNet and DAFH over three seeds in fp32, bf16 and fp16. Each step has its own time limit, so one that
# hangs costs only itself.
# Run from the repository root with hashbench importable; files go to $OUT (default results/gpu/out).
set -u
OUT=${OUT:-results/gpu/out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 HASHBENCH_HOME=${HASHBENCH_HOME:-/tmp/hashbench-home}
PY=${PYTHON:-python3}
step() {  # step SECONDS LOG COMMAND...: run, keep the output, report the time and exit status
    local limit=$1 log=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" >"$OUT/$log" 2>&1
    echo "== $log: exit $? after $((SECONDS - started)) s (limit $limit s)" | tee -a "$OUT/env.txt"
}
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c 'import torch, torchvision, timm, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__, "timm", timm.__version__, "numpy", numpy.__version__); print(torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())'
    nproc
} >"$OUT/env.txt" 2>&1

step 140 cuda-tests.log $PY -m pytest -p no:cacheprovider -s -v tests/integration/test_cuda.py
step 120 dafh-cell.log $PY -m hashbench run --methods dafh --bits 32 --profile full --no-pretrained --epochs 5 \
    --device cuda --out /tmp/gpu-runs
tar czf "$OUT/dafh-cell.tar.gz" --exclude '*.pt' -C /tmp/gpu-runs .
step 90 bench.log $PY -m hashbench bench --backbones tf_efficientnet_b6.aa_in1k,efficientnet_b0 --image-sizes 224 \
    --method dafh --bits 32 --steps 10 --json "$OUT/bench.json"
step 140 perf.log $PY -m pytest -p no:cacheprovider -m perf -s --benchmark-json="$OUT/perf.json" tests/perf
for precision in fp32 bf16 fp16; do
    step 60 "precision-$precision.log" $PY -m hashbench run --methods hashnet,dafh --bits 16 --seeds 0 1 2 \
        --profile quick --epochs 6 --device cuda --precision $precision --out "/tmp/precision/$precision"
    $PY -m hashbench leaderboard --out "/tmp/precision/$precision" --metrics map@10,map@all --format md \
        --output "$OUT/precision-$precision.md" --no-figures >/dev/null 2>&1
done
