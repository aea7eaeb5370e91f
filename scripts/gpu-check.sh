#!/usr/bin/env bash
# GPU (nccl) path of the trainer through `kdist run`, on a machine with one NVIDIA GPU.
# Needs python3 with CUDA torch, click and PyYAML, and ruamel.yaml (PYTHONPATH may carry it).
#   scripts/gpu-check.sh OUT_DIR
set -euo pipefail
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"
kdist() { python3 -c "from kdist.cli import main; main()" "$@"; }
nvidia-smi -L | tee "$out/gpus.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())" | tee "$out/torch.txt"
cat > "$out/gpu1.yaml" <<'YAML'
name: gpu-one
image: kdist-trainer:0.1.0
entrypoint: trainers/train.py
args: [--synthetic, --max-steps, "40", --checkpoint-every, "10", --dump-params, PARAMS]
nodes: 1
resources: {gpu: 1}
YAML
sed -i "s#PARAMS#$out/params#" "$out/gpu1.yaml"
kdist doctor -f "$out/gpu1.yaml" --target local 2>&1 | tee "$out/doctor.txt" || true
kdist run -f "$out/gpu1.yaml" --run-dir "$out/run" > "$out/run1.log" 2>&1
grep -h "backend\|world_size=" "$out/run"/node-0.log | head -3 || true
# the same run folder again with more steps: resume from the checkpoint (nccl broadcast of it)
sed -i 's/"40"/"60"/' "$out/gpu1.yaml"
kdist run -f "$out/gpu1.yaml" --run-dir "$out/run" > "$out/run2.log" 2>&1
grep -h "loaded checkpoint\|world_size=" "$out/run"/node-0.log | tail -3
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
events = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl")]
starts = [e for e in events if e.get("event") == "start"]
steps = [e["step"] for e in events if e.get("event") == "step"]
print("starts", starts)
print("steps", steps[:2], "...", steps[-2:], "count", len(steps))
assert starts[-1]["backend"] == "nccl" and starts[-1]["resumed_step"] == 40 and steps[-1] == 60 and len(steps) == 60, "no exact resume"
print("params", json.load(open(f"{out}/params.rank0.json")))
print("GPU CHECK OK")
PY
