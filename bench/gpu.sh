#!/usr/bin/env bash
# The GPU checks and benchmark, as run on a lent GPU machine with no network (docs/performance.md, "Reproducing").
# Usage: bash bench/gpu.sh ASSETS OUT
#   ASSETS: data_ag_news/ (the shared AG News csvs), roberta-base/ (tokenizer + config), minilm/ (all-MiniLM-L6-v2,
#           e.g. saved in fp16 to fit a transfer limit) and whl/ (wheels the machine lacks, installed without deps)
#   OUT:    where the results go: gpu.log (everything printed), <date>-<host>.json (the benchmark),
#           fp32/<date>-<host>.json (loraclf and report A in fp32), levers-frozen-cache.json
# Each step has its own time limit so that a slow one cannot take the later ones with it. Few files, so that all
# of them come back through a transfer that limits their count.
set -u
if [ $# -ne 2 ] || [ ! -d "$1/data_ag_news" ] || [ ! -d "$1/roberta-base" ] || [ ! -d "$1/minilm" ]; then
    echo "usage: bash bench/gpu.sh ASSETS OUT, where ASSETS holds data_ag_news/, roberta-base/ and minilm/ (see the top of this script)" >&2
    exit 2
fi
D=$(cd "$1" && pwd)
OUT=$2
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 AGNEWS_DIR=$D/data_ag_news ROBERTA_DIR=$D/roberta-base

main() {
    if compgen -G "$D/whl/*.whl" >/dev/null; then
        python -m pip install -q --no-deps --no-index "$D"/whl/*.whl 2>&1 | tail -3
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
    common=(--agnews-dir "$AGNEWS_DIR" --roberta-dir "$ROBERTA_DIR")

    echo "== CUDA tests"
    timeout 120 python -m pytest -q -p no:cacheprovider tests/test_bench.py -k cuda 2>&1 | tail -5

    echo "== benchmark (2 interleaved repeats)"
    timeout 300 python bench/bench.py --no-onnx --repeats 2 "${common[@]}" --guard-model "$D/minilm" --out-dir "$OUT"
    echo "exit $?"

    echo "== lever: frozen layers kept across epochs"
    timeout 150 python bench/bench.py --levers --lever frozen-cache --infer-rows 256 --repeats 1 --json "${common[@]}" \
        > "$OUT/levers-frozen-cache.json"
    echo "exit $?"

    echo "== loraclf and report A with train.precision=fp32"
    timeout 150 python bench/bench.py --no-onnx --no-guard --repeats 2 --contenders loraclf report_a \
        --set train.precision=fp32 "${common[@]}" --out-dir "$OUT/fp32"
    echo "exit $?"
}

main 2>&1 | tee -a "$OUT/gpu.log"  # a pipeline, so the script ends only after the log is written
