#!/usr/bin/env bash
# MusicGen on a GPU: its weights in divcfg's decoder (CUDA graphs) against transformers' generate on the same weights
# (eager, and static cache + torch.compile), batch 8 and 64, with and without CFG (bench/generate_musicgen.py).
# Usage: bash bench/gpu_musicgen.sh OUT_DIR        (about 6 minutes on an H200)
#   transformers comes from the environment, or from wheels in .whl/ at the repository root.
set -u
out=${1:?usage: bash bench/gpu_musicgen.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python -c "import transformers" 2>/dev/null; then
  [ -d .whl ] || { echo "no transformers and no .whl/ wheel directory" >&2; exit 2; }
  pip install -q --no-index --find-links .whl --target /tmp/divcfg-mg-site transformers==5.24.0 tokenizers
  export PYTHONPATH=$PYTHONPATH:/tmp/divcfg-mg-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# Exactness first (tiny models, seconds), including the captured CUDA graph of the converted decoder.
timeout 120 python -m pytest -q -p no:cacheprovider tests/model/test_musicgen_convert.py 2>&1 | tail -3
G="python -m divcfg.bench.generate --musicgen small-shape --device cuda --frames 150 --repeats 3 --batches 8,64"
# 1. fp32 weights, transformers eager vs divcfg with CUDA graphs.
timeout 120 $G --dtype fp32 --json "$out"/musicgen_gpu_fp32.json 2>&1 | tail -8
# 2. bf16 weights on both sides.
timeout 90 $G --dtype bf16 --json "$out"/musicgen_gpu_bf16.json 2>&1 | tail -8
# 3. divcfg without CUDA graphs (the eager step), to show what the graphs are worth.
timeout 60 $G --dtype bf16 --cuda-graphs off --batches 8 --json "$out"/musicgen_gpu_bf16_nographs.json 2>&1 | tail -6
# 4. transformers' static cache + torch.compile as a second peer (compiles once per batch and CFG shape: slowest,
#    so last and bounded; a peer that fails to compile is reported in the log and left out).
timeout 150 $G --dtype bf16 --repeats 2 --peer-compile --json "$out"/musicgen_gpu_bf16_compile.json 2>&1 | tail -8
ls -la "$out"
