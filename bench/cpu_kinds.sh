#!/usr/bin/env bash
# Measure every CPU kind this CPU can run, one after the other: its own kind, then the lower kinds oneDNN can be
# held to with ONEDNN_MAX_CPU_ISA (an AMX CPU also runs the avx512-bf16 and avx512 kernels). Each kind is checked
# first: ONEDNN_VERBOSE must show the kernel that kind runs, or the kind is skipped with a message.
#
#   bash bench/cpu_kinds.sh levers [KIND...]   # the scoring levers per kind  -> bench/results/<date>-<kind>-levers-scoring.txt
#   bash bench/cpu_kinds.sh bench [KIND...]    # the full benchmark per kind  -> bench/results/<date>-<host>-<kind>.json
#
# KIND is one of amx, avx512-bf16, avx512 (default: every one this CPU can run). Extra bench.py options go in
# BENCH_ARGS, e.g. BENCH_ARGS="--repeats 2 --no-guard". Run it on a quiet machine: kinds are compared across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AGNEWS_DIR=${AGNEWS_DIR:-../shared/data/ag_news}
ROBERTA_DIR=${ROBERTA_DIR:-../shared/models/roberta-base}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
what=${1:?usage: bash bench/cpu_kinds.sh levers|bench [KIND...]}; shift
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(amx avx512-bf16 avx512)

isa_of() { case $1 in amx) echo "";; avx512-bf16) echo AVX512_CORE_BF16;; avx512) echo AVX512_CORE;;
                      *) echo "unknown kind $1 (amx, avx512-bf16, avx512)" >&2; exit 2;; esac; }
# the oneDNN kernel a bf16 matmul runs under this cap, and the kind loraclf resolves
probe() {
  ONEDNN_MAX_CPU_ISA=$1 ONEDNN_VERBOSE=1 "$PY" -c '
import sys, torch
sys.path.insert(0, "src")
from loraclf import precision
with torch.no_grad():
    torch.nn.Linear(768, 768).to(torch.bfloat16)(torch.randn(64, 768, dtype=torch.bfloat16))
print("kind", precision.cpu_kind())' 2>&1 | awk -F, '/primitive,exec,cpu,matmul/ && !k {print "kernel", $7; k=1} /^kind/ {print}'
}
want_kernel() { case $1 in amx) echo "amx";; avx512-bf16) echo "avx512_core_bf16";; avx512) echo "gemm:jit";; esac; }

mkdir -p bench/results
for kind in "${kinds[@]}"; do
  isa=$(isa_of "$kind")
  seen=$(probe "$isa" | tr '\n' ' ')
  if [[ $seen != *"kind $kind"* || $seen != *"$(want_kernel "$kind")"* ]]; then
    echo "skip $kind: this CPU does not run its kernels ($seen)" >&2
    continue
  fi
  echo "== $kind ($seen)" >&2
  if [ "$what" = levers ]; then
    out=bench/results/$(date +%F)-$kind-levers-scoring.txt
    ONEDNN_MAX_CPU_ISA=$isa "$PY" bench/bench.py --levers --lever scoring --infer-rows 32 --repeats 2 \
      --agnews-dir "$AGNEWS_DIR" --roberta-dir "$ROBERTA_DIR" ${BENCH_ARGS:-} 2>&1 | grep -v "^Loading\|it/s\]" | tee "$out"
  else
    ONEDNN_MAX_CPU_ISA=$isa "$PY" bench/bench.py --agnews-dir "$AGNEWS_DIR" --roberta-dir "$ROBERTA_DIR" ${BENCH_ARGS:-}
  fi
done
