#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a MobileNetV2 on Fashion-MNIST (short default
# schedule), evaluate it, export it to ONNX, quantize it to int8, and print a report.
# Usage: bash scripts/main.sh [RUN_DIR] [extra `mobilenets train` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/fmnist}; shift || true
mn=.venv/bin/mobilenets
if [ -f "$out/report.json" ]; then
  echo "reusing the finished run in $out (remove it to train again)"
elif [ -f "$out/last.pt" ]; then
  $mn train --resume "$out" "$@"                       # an interrupted run continues
else
  $mn train --data fashion-mnist --epochs "${MOBILENETS_MAIN_EPOCHS:-2}" --out "$out" "$@"
fi
$mn eval "$out/best.safetensors" --data fashion-mnist --out "$out"
$mn export "$out/best.safetensors" --format onnx --out "$out/model.onnx"
$mn quantize "$out/best.safetensors" --data fashion-mnist --eval-size 2000 --json \
  --out "$out/model_int8.onnx" > "$out/quantize.json"
$mn predict "$out/model_int8.onnx" scripts/sample_shirt.png --topk 3
.venv/bin/python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(f"{out}/report.json"))
e = json.load(open(f"{out}/eval.json"))
q = json.load(open(f"{out}/quantize.json"))
mb = lambda f: os.path.getsize(f"{out}/{f}") / 2**20
print(f"\n== report: {r['model']} {r['model_kwargs']} on {r['data']} ({r['resolution']} px)")
print(f"   trained {r['epochs']} epochs in {r['train_seconds'] / 60:.1f} min; params {r['params']:,}, "
      f"MAdds {r['madds']:,}")
# Runs from before the held-out val split picked their best epoch on the test set.
sel = r.get("selection", "best epoch on the test set (run from before the held-out val split)")
val = (f" ({r['val_top1']:.4f} on {r['val_images']:,} held-out training images)"
       if r.get("val_top1") is not None else "")
print(f"   model kept: {sel}{val}")
print(f"   test top-1 {e['top1']:.4f}, top-5 {e['top5']:.4f} on {e['images']:,} {e.get('split', 'test')} "
      "images (scored by `mobilenets eval`); weakest class "
      + "{} ({:.3f})".format(*min(e["per_class"].items(), key=lambda kv: kv[1])))
print(f"   int8 ONNX: top-1 {q['top1_int8']:.2f}% vs fp32 {q['top1_fp32']:.2f}% on {q['eval_images']} images")
print(f"   files: best.safetensors {mb('best.safetensors'):.2f} MiB, model.onnx {mb('model.onnx'):.2f} MiB, "
      f"model_int8.onnx {mb('model_int8.onnx'):.2f} MiB, confusion_matrix.png, training_curve.png")
for name, what in (("fashion-mnist", "the full recipe"), ("fashion-mnist-best", "the two-hour recipe")):
    full = f"benchmarks/results/accuracy/{name}.json"
    if os.path.exists(full):
        a = json.load(open(full))
        fr, m, t = a["report"], a["machine"], a["test"]
        print(f"   {what} ({fr['model_kwargs'].get('width_mult')} wide, {fr['epochs']} epochs) reached test top-1 "
              f"{t['plain']['top1']:.4f} ({t['flip']['top1']:.4f} with flip averaging) in "
              f"{fr['train_seconds'] / 60:.0f} min on {m['model_name']} (SGEMM {m['sgemm_gflops']:.0f} GFLOP/s, "
              f"measured at {a['machine_described_at']}); re-make it: {a['command']}")
PY
