#!/bin/bash
# One short GPU session (the `device` machines: torch, transformers, accelerate, peft preinstalled;
# diffusers, torchrl, tensordict, gymnasium carried as wheels in .whl/, see README "GPU check").
# Writes everything under $OUT (default gpu_check_out/):
#   A. the main job's trainer on CUDA (fp32 tiny model): speed per update
#   B. the bf16 CUDA path of the real SD3 and FLUX adapters (tiny random weights), 2 updates each
#   C. real-size denoisers (random weights, bf16, LoRA r32): rollout call and training pass speed, peak memory
#   D. ShapeWorld with 8x the main job's batch (32 prompts x 16), for issue 4's question "do larger batches help?"
#   E. where a bf16 CUDA training pass turns non-finite, if it does (benchmarks/nonfinite_probe.py)
#   F. one whole update of sd35m-geneval-like on random weights (bf16, LoRA r32, 2 of its 48 prompts):
#      time per phase, images/s, peak memory, MFU of rollout and training (benchmarks/gpu_update.py)
# STAGES picks the stages (default all, about 15 min): e.g. STAGES=F bash benchmarks/gpu_check.sh (about 4 min).
set -u
OUT=${OUT:-gpu_check_out}
STAGES=${STAGES:-ABCDEF}
want() { [[ $STAGES == *$1* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, torchrl, tensordict, transformers, peft, accelerate as a; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', a.__version__)" 2>&1 | grep -v Warning
G="python3 -m genrl"
NOLOG="log.progress=false log.sample_every=0"

stage() { echo "== $1 $(date +%T)"; }

if want A; then
stage "A main job trainer on CUDA, 40 updates"
timeout 90 $G train device=cuda train.updates=40 log.eval_every=0 $NOLOG run_dir="$OUT/A_main_cuda" > "$OUT/A.log" 2>&1
echo "rc $?"; tail -3 "$OUT/A.log"
python3 -c "
import json; m=[json.loads(l) for l in open('$OUT/A_main_cuda/metrics.jsonl')]
print('updates', len(m), 's/update', round(m[-1]['wall_s']/len(m), 3), 'peak MiB', m[-1]['peak_mem_mb'], 'reward first/last 10', round(sum(x['reward_mean'] for x in m[:10])/10, 3), round(sum(x['reward_mean'] for x in m[-10:])/10, 3))"
fi

want B && for model in sd3 flux; do
  stage "B bf16 CUDA path: tiny random $model, 2 updates of chunk_grpo"
  base=$([ $model = sd3 ] && echo sd35m || echo flux); reward=$([ $model = sd3 ] && echo clip_score || echo hpsv2)
  timeout 60 $G train $base "model.name=tiny-random-$model" "model.options={lora_rank: 4, lora_alpha: 8, dtype: bf16, device: cuda}" \
    "reward.name=tiny-random-$reward" "reward.options={}" prompts.train=benchmarks/suites/tiny-random-prompts.txt \
    prompts.eval=benchmarks/suites/tiny-random-prompts.txt device=cuda train.prompts_per_update=2 train.group_size=2 \
    sampling.eval_steps=2 sampling.micro_batch=4 train.updates=2 algorithm=chunk_grpo $NOLOG run_dir="$OUT/B_$model" > "$OUT/B_$model.log" 2>&1
  echo "rc $?"; tail -2 "$OUT/B_$model.log"
  python3 -c "
import json; [print({k: m[k] for k in ('update', 'reward_mean', 'grad_norm', 'skipped', 'peak_mem_mb')}) for m in map(json.loads, open('$OUT/B_$model/metrics.jsonl'))]"
done

if want C; then
stage "C real-size denoisers"
timeout 80 python3 -m genrl.benchmarks.denoiser_memory --model sd35m --out "$OUT/C_sd35m.json" > "$OUT/C_sd35m.log" 2>&1; echo "rc $?"; tail -12 "$OUT/C_sd35m.log"
timeout 130 python3 -m genrl.benchmarks.denoiser_memory --model flux --out "$OUT/C_flux.json" > "$OUT/C_flux.log" 2>&1; echo "rc $?"; tail -12 "$OUT/C_flux.log"
fi

if want D; then
stage "D ShapeWorld, 32 prompts x 16 per update, lr 6e-4"
timeout "${D_SECONDS:-170}" $G train device=cuda train.prompts_per_update=32 train.group_size=16 train.minibatches=4 train.lr=6e-4 \
  sampling.micro_batch=128 train.updates=100 log.eval_every=20 log.checkpoint_every=20 $NOLOG run_dir="$OUT/D_big_batch" > "$OUT/D.log" 2>&1
echo "rc $?"
python3 -c "
import json; m=[json.loads(l) for l in open('$OUT/D_big_batch/metrics.jsonl')]
b=json.load(open('$OUT/D_big_batch/eval/base.json'))['score']
print('updates', len(m), 's/update', round(m[-1]['wall_s']/len(m), 2), 'base', round(b, 3), 'evals', [(x['update'], round(x['eval_score'], 3)) for x in m if 'eval_score' in x])"
fi
if want E; then
stage "E non-finite probe: FLUX and SD3 velocity backward per attention backend, one FLUX update under anomaly mode"
for model in flux sd3; do timeout 60 python3 -m genrl.benchmarks.nonfinite_probe --model tiny-random-$model --dtype bf16 2>&1 | grep -v "Warning\|warn\|Writing\|Loading\|with kernel"; done
timeout 60 python3 -m genrl.benchmarks.nonfinite_probe --train flux model.name=tiny-random-flux \
  "model.options={lora_rank: 4, lora_alpha: 8, dtype: bf16, device: cuda}" reward.name=tiny-random-hpsv2 "reward.options={}" \
  prompts.train=benchmarks/suites/tiny-random-prompts.txt prompts.eval=benchmarks/suites/tiny-random-prompts.txt device=cuda \
  train.prompts_per_update=2 train.group_size=2 sampling.eval_steps=2 sampling.micro_batch=4 run_dir="$OUT/E_flux" 2>&1 | tail -3
fi
if want F; then
stage "F one update of sd35m-geneval-like on random weights (bf16, LoRA r32, 2 of its 48 prompts): phases, images/s, memory, MFU"
timeout "${F_SECONDS:-420}" python3 -m genrl.benchmarks.gpu_update --prompts 2 --out "$OUT/F_update.json" > "$OUT/F_update.log" 2>&1
echo "rc $?"; grep -v "Writing model shards" "$OUT/F_update.log" | tail -8
fi
stage done
