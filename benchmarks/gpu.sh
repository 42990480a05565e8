#!/usr/bin/env bash
# Every GPU row of CD-Flow's benchmarks in one go, in under 8 minutes on an H100/H200:
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu.json (merged) and gpu.log
#
# 1. benchmarks/benchmark.py --suite gpu (budget GPU_SUITE_S, default 320 s): the issue's
#    "Where we stand" rows, the fast-path flags found in cdflow_lib, memory modes x
#    precisions (fp32 with TF32 off / TF32 / TF32 + bf16 couplings) at batch 4 and 16,
#    inference at 1024 px batch 4, then the largest batch that fits in 24 and 80 GiB, found
#    by trying (allocator capped, at most 5 tries per mode and budget, batch cap 64).
#    Each case runs in a fresh process with its own time limit (60 s; 90 s at batch 16);
#    TF32 is set explicitly on or off in every row (cuDNN's TF32 is ON by default).
# 2. benchmarks/accuracy.py on CUDA (limit ACCURACY_S, default 120 s): the accuracy of every
#    fast path against fp32 (paper config with active couplings at 768 px; the shipped model
#    on 26 synthetic test pairs at 256 px).
# Needs: torch with CUDA, numpy, scipy, pillow, scikit-image, plus tqdm (and colour-science
# for the synthetic pairs): see benchmarks/README.md for the wheels to carry (build/wheels/).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_JSON:-benchmarks/results/gpu.json}"
LOG="${GPU_LOG:-benchmarks/results/gpu.log}"
SUITE_S="${GPU_SUITE_S:-320}"
ACC_S="${ACCURACY_S:-120}"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu.sh: '$PY' cannot import torch; set PYTHON to an interpreter with torch (CUDA build)." >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu.sh: no CUDA device is present (torch.cuda.is_available() is False, torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)); the GPU rows need an NVIDIA GPU. Nothing was run and $OUT is unchanged. On a CPU use benchmarks/benchmark.py and benchmarks/accuracy.py --device cpu." >&2
    exit 2
fi

# Wheels carried for a machine without internet (benchmarks/README.md): install what is missing.
if [ -d build/wheels ]; then
    for pair in tqdm:tqdm colour:colour-science tifffile:tifffile; do
        mod="${pair%%:*}"; pkg="${pair#*:}"
        "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q --no-index --find-links build/wheels "$pkg" || true
    done
fi
missing="$("$PY" -c "
import importlib
for m in ('numpy', 'scipy', 'PIL', 'tqdm'):
    try: importlib.import_module(m)
    except ImportError: print(m)
")"
if [ -n "$missing" ]; then
    echo "gpu.sh: cdflow_lib needs these modules, missing here: $missing. Carry their wheels in build/wheels/ (benchmarks/README.md)." >&2
    exit 3
fi
"$PY" -c "import colour" 2>/dev/null || echo "gpu.sh: colour-science is missing: the accuracy rows of the shipped model on synthetic pairs will be skipped (README)." >&2

mkdir -p "$(dirname "$OUT")" build
{
    echo "== gpu.sh $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    start=$(date +%s)
    timeout -k 10 $((SUITE_S + 30)) "$PY" benchmarks/benchmark.py --suite gpu --budget "$SUITE_S" --out "$OUT"
    echo "== benchmark suite: exit $? after $(( $(date +%s) - start )) s"
    acc=build/accuracy_gpu.json
    rm -f "$acc"
    timeout -k 10 "$ACC_S" "$PY" benchmarks/accuracy.py --device cuda --pairs 26 --pair-size 256 \
        --active-config paper --active-size 768 --active-pairs 2 --grad-batch 2 --out "$acc"
    echo "== accuracy: exit $? after $(( $(date +%s) - start )) s (rows written so far are kept)"
    "$PY" - "$OUT" "$acc" <<'PYEOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from benchmark import merge_report
out, acc = Path(sys.argv[1]), Path(sys.argv[2])
if acc.exists():
    a = json.loads(acc.read_text())
    out.write_text(json.dumps(merge_report(out, {"accuracy": a["rows"], "accuracy_settings": a["settings"]}), indent=2))
    print(f"merged {len(a['rows'])} accuracy rows into {out}")
else:
    print("no accuracy rows (accuracy.py wrote nothing)")
PYEOF
    echo "== gpu.sh done after $(( $(date +%s) - start )) s: $OUT"
} 2>&1 | tee -a "$LOG"
