#!/bin/bash
# Device plan, round 9: the SECOND call of a session that ran device_run8.sh (about 240 s, + 20 s optional: what a
# 15-minute session has left after the machine's start and run 8's 590 s). Run 8 times every WKV setting of the sweep
# but runs the backbones with the defaults only; this runs them with the fastest settings it found, DeiT in the same
# call, so a single session measures the issue's targets with tuned kernels. Call it right after run 8 (the machine
# stays warm for ~30 s: its Triton cache then holds run 8's compiled kernels, and run 8 left its sweep in
# /tmp/device_run8):
#     run(command="export PYTHONPATH=/tmp/site; bash benchmarks/device_run9.sh", timeout_s=<what is left>)
# (/tmp/site: the wheels run 8's call installed; on a fresh machine install them as device_run8.sh says, and pass a
# sweep from the tree: SWEEP=benchmarks/results/<file>.json.)
# Steps, each picking its kernels with benchmarks/pick_settings.py (per op, the best geometric-mean CUDA-graph
# speed-up over the default at the workload's sequence lengths, at least 3%; training also not slower eager):
#   1. 1024 px inference, batch 16 (the 1024-px forward's picks): VRWKV / VRWKV6 T and S, DeiT-T / DeiT-S, eager and
#      CUDA graph, peak memory (bb_tuned_inference_1024.json);
#   2. 224 px inference, batch 256 (the 224-px forward's picks; VRWKV6 missed its 0.5x in round 18):
#      bb_tuned_inference_224.json;
#   3. the b128 training step at 224 px (the training step's picks; --train-only): bb_tuned_train_224.json;
#   4. VRWKV-T / VRWKV6-T at 1024 px with the forward's picks AND the mixed-operand GEMMs and the fused MLP
#      (VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1: the roofline's 1024-px floor of VRWKV6-T 7.91 -> 5.84 ms at 3 TB/s,
#      below the 7.74 ms 2x DeiT-T asks; the H200 of round 18 ran those GEMMs slower than cuBLAS, before rounds
#      19-29 changed them and round 38 widened their tiles): bb_tuned_inference_1024_fused_mix.json;
#   5. tuned.md (pick_settings.py summary: the picks, img/s, x DeiT, targets met, host / step ms) in $OUT, after
#      every step;
#   6. (optional, <= 20 s) launch_cost.json: host time per launch, a Triton launch against a PyTorch op, and what
#      the launcher's pointer query costs here (round 40: ~14 ms of VRWKV-T's 46 ms step was unexplained).
W=${W:-/tmp/device_run9}
SWEEP=${SWEEP:-/tmp/device_run8/sweep.json}
source benchmarks/device_common.sh
if [ ! -f "$SWEEP" ]; then
  echo "no sweep at $SWEEP: run device_run8.sh first in this session, or pass SWEEP=<a sweep.json in the tree>"
  exit 2
fi
python benchmarks/pick_settings.py pick "$SWEEP" --out "$OUT/picks.json" --shell > "$W/picks.sh" || exit 2
source "$W/picks.sh"
echo "1024-px forward picks: ${INF_CFG:-defaults}"
echo "224-px forward picks: ${INF224_CFG:-defaults}"
echo "training picks: ${TRAIN_CFG:-defaults}"
summary() {
  python benchmarks/pick_settings.py summary "$OUT" > "$W/tuned_stdout.txt" 2>&1
  tar -czf "$OUT/logs.tar.gz" -C "$W" $(cd "$W" && ls *.log) 2>/dev/null
}

# ---- 1. the 1024-px forward with its picks (the 2x target), DeiT in the same run
timeout 80 python tools/benchmark.py --backbones --res 1024 --batch 1024=16 --dtype bf16 --no-train $MODELS \
  $INF_CFG --graph --iters 10 --warmup 2 --out "$OUT/bb_tuned_inference_1024.json" > "$W/bb_inf.log" 2>&1
stamp "1024 inference done"
summary
# ---- 2. the 224-px forward with its picks (0.5x)
timeout 50 python tools/benchmark.py --backbones --res 224 --batch 224=256 --dtype bf16 --no-train $MODELS \
  $INF224_CFG --graph --iters 10 --warmup 2 --out "$OUT/bb_tuned_inference_224.json" > "$W/bb_inf224.log" 2>&1
stamp "224 inference done"
summary
# ---- 3. the 224-px training step with its picks (0.7x)
timeout 70 python tools/benchmark.py --backbones --train-only --train-batch 128 --dtype bf16 $MODELS $TRAIN_CFG \
  --graph --iters 10 --warmup 2 --out "$OUT/bb_tuned_train_224.json" > "$W/bb_train.log" 2>&1
stamp "training done"
summary
# ---- 4. the T models at 1024 px with the mixed-operand GEMMs and the fused MLP on top of the forward's picks
VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1 timeout 35 python tools/benchmark.py --backbones --res 1024 --batch 1024=16 \
  --dtype bf16 --no-train --no-deit --model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 $INF_CFG --graph \
  --iters 10 --warmup 2 --out "$OUT/bb_tuned_inference_1024_fused_mix.json" > "$W/bb_mix.log" 2>&1
stamp "fused-mix rows done"

# ---- 5. the table (the reply carries the end of the output)
summary
cat "$OUT/tuned.md"
stamp "tables done"
# ---- 6. host time per launch by path (benchmarks/launch_cost.py, ~10 s; after everything else: a stop at the call's
# limit loses only this): is a Triton launch dearer than a PyTorch op on this host, and by how much the driver's
# pointer query (which the short path no longer makes)
timeout 20 python benchmarks/launch_cost.py --out "$OUT/launch_cost.json" > "$W/launch_cost.log" 2>&1
tail -8 "$W/launch_cost.log"
stamp "all done"
