#!/usr/bin/env bash
# The GPU benchmarks of record (BENCHMARKS.md, "GPU: NVIDIA H100"), plus the CUDA-graph tests, on one CUDA machine.
# Usage: bash bench/gpu.sh OUT_DIR [WHEEL_DIR]
#   OUT_DIR    where the JSON files and log go
#   WHEEL_DIR  optional: wheels of omegaconf/msgpack (and an unpacked antlr4 runtime) for a machine without them
set -u
out=${1:?usage: bash bench/gpu.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$wheels" ]; then
  pip install -q --no-index --no-deps --target /tmp/divcfg-site "$wheels"/omegaconf-*.whl "$wheels"/msgpack-*cp3$(python -c 'import sys; print(sys.version_info[1])')*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/divcfg-site:$(ls -d "$wheels"/antlr4-python3-runtime-*/src 2>/dev/null | head -1)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m pytest -q -p no:cacheprovider tests/common/test_decode_graph.py tests/common/test_policy.py
G="python -m divcfg.bench.generate --device cuda --frames 150 --repeats 3"
$G --presets tiny,small --batches 1,8,32 --json "$out"/generate_gpu_graphs.json
$G --presets small --batches 8,32 --cuda-graphs off --json "$out"/generate_gpu_eager.json
$G --presets small --batches 8,32 --weights bf16 --json "$out"/generate_gpu_graphs_bf16w.json
$G --presets small --batches 256,1024 --no-peer --json "$out"/cfg_cost_gpu_big.json
python -m divcfg.bench.learner --device cuda --preset small --json "$out"/learner_gpu.json
python -m divcfg.bench.learner --device cuda --preset small --batch-prompts 16 --json "$out"/learner_gpu_b16.json
