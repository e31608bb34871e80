#!/usr/bin/env bash
# The device checks of issue #14, in one call on a lent GPU machine (its own python3 with torch/transformers;
# nothing is installed): GPU tests, runtime tests, then the encode_throughput GPU rows. Logs go to $OUT.
#   bash benchmarks/gpu_check.sh
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/xmodal-gpu-check}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
echo "== pytest tests/test_gpu.py tests/test_runtime.py"
python3 -m pytest -q -rA -p no:cacheprovider tests/test_gpu.py tests/test_runtime.py 2>&1 | tee "$OUT/pytest.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" | head -60
echo "== python3 benchmarks/encode_throughput.py --gpu-only"
python3 benchmarks/encode_throughput.py --gpu-only 2>&1 | tee "$OUT/throughput.log" | grep -v Warning
