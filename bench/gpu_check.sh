#!/usr/bin/env bash
# The GPU check, as one prepared script for a lent GPU machine (its python3 holds CUDA torch; diffusers and
# transformers travel as wheels in .whl/, see bench/RESULTS.md). Writes what it measured under $OUT.
#
#   bash bench/gpu_check.sh                 # m9 architecture, 512 px, bf16: what bench/RESULTS.md reports
#   PRESET=tiny RES=32 STEPS=2 RENDER_STEPS=4 NUM_PROMPTS=4 bash bench/gpu_check.sh   # dry run on a CPU
#
# 1. training-step speed of both adapters at the write-up's batch size (naive / optimised / floor, memory);
# 2. the real-scale path end to end: both training scripts with the write-up's flags (bf16 for both) for a
#    few steps on an m9-architecture model saved as a diffusers folder, then one render of 2 prompts x 4
#    images x 100 steps;
# 3. rendering speed, batched vs separate.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
PRESET=${PRESET:-m9}
RES=${RES:-512}
STEPS=${STEPS:-20}
RENDER_STEPS=${RENDER_STEPS:-100}
NUM_PROMPTS=${NUM_PROMPTS:-100}
PY=${PY:-python3}
mkdir -p "$OUT"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") >"$OUT/device.txt"

echo "== building the $PRESET model"
$PY -c "from altadapter.testing.tiny_models import build_model_dir; build_model_dir('$work/model', '$PRESET')" || exit 1

echo "== 1. training-step speed"
timeout 240 $PY bench/bench_train.py --model_path "$work/model" --preset "$PRESET" --resolution "$RES" \
  --batch_size 6 --dtype bf16 --num_prompts "$NUM_PROMPTS" --gradient_checkpointing --steps 10 --warmup 3 --out "$OUT/bench_train.json" \
  2>&1 | tee "$OUT/bench_train.log"

echo "== 2. both training scripts with the write-up's flags, then one render"
$PY - "$work/data" "$RES" <<'PYTHON'
import sys
from pathlib import Path
from PIL import Image
folder, size = Path(sys.argv[1]), int(sys.argv[2])
folder.mkdir(parents=True)
for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)] * 3):
    Image.new("RGB", (size + 8 * i, size), colour).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text("1girl, solo, red hair, long dress, smile, hat", encoding="utf-8")
PYTHON
common=(--data_dir "$work/data" --model_path "$work/model" --ckpt_dir "$work/runs" --max_train_steps "$STEPS"
  --allow_tf32 --resolution "$RES" --report_to none --checkpointing_steps "$STEPS" --validation_split 0.2)
timeout 240 $PY text_encoder_util_mlp_transfer.py "${common[@]}" --batch_size 3 --mixed_precision bf16 \
  --name altm9-single-layer --num_layers 1 2>&1 | tail -n 20 | tee "$OUT/train_mlp.log"
timeout 240 $PY text_encoder_util.py "${common[@]}" --batch_size 6 --mixed_precision bf16 \
  --name altm9-prompt-embedding --num_prompts "$NUM_PROMPTS" 2>&1 | tail -n 20 | tee "$OUT/train_prompt.log"
printf '1girl, solo, red hair, long dress\n1girl, solo, hat, smile\n' >"$work/prompts.txt"
timeout 240 $PY text_encoder_gen_show.py --model_path "$work/model" \
  --adapter "$work/runs/altm9-prompt-embedding/altm9-prompt-embedding.safetensors" --prompts "$work/prompts.txt" \
  --num_inference_steps "$RENDER_STEPS" --num_images 4 --output_dir "$work/render" 2>&1 | tail -n 20 | tee "$OUT/render.log"
ls -la "$work/runs"/*/*.safetensors "$work/render" >"$OUT/files.txt" 2>&1

echo "== 3. rendering speed"
timeout 180 $PY bench/bench_render.py --model_path "$work/model" --num_prompts 4 --num_images 4 --steps 20 \
  --out "$OUT/bench_render.json" 2>&1 | tail -n 20 | tee "$OUT/bench_render.log"
rm -rf "$work"
