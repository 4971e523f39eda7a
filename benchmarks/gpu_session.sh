#!/usr/bin/env bash
# Issue 13's device check as one prepared command: on a lent GPU, `dlswm profile` at `paper` size
# (compile auto, then off), then as much of a `paper` run as fits, everything it writes under $OUT.
#
# The lent machine has torch, onnxruntime, rich, typer and the rest, but no ale-py and no gymnasium,
# and it reaches no package registry. Fetch those wheels here first, once, from the repo's root:
#
#   echo /.whl/ >> .git/info/exclude
#   for w in ale-py==0.12.1 gymnasium==1.4.0 farama-notifications==0.0.6; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d .whl "$w"; done
#
# then run this through the device tool with `.whl` carried:
#
#   bash benchmarks/gpu_session.sh            # TRAIN_S=300 by default: ~8 min in all on an H100/H200
#
# Here, with no GPU, `DEVICE=cpu PRESET=tiny OUT=/tmp/gpu-check bash benchmarks/gpu_session.sh` runs
# the same steps at toy size.
set -uo pipefail
OUT=${OUT:?set OUT to the folder the results go to}
DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-paper} GAME=${GAME:-Pong} TRAIN_S=${TRAIN_S:-300}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
  # dlswm itself, without its dependencies (the image's torch stays)
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit
  DLSWM="python3 -m dlswm"
else
  DLSWM=${DLSWM:-dlswm}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1; } | tee "$OUT/machine.txt"
$DLSWM profile "$GAME" --preset "$PRESET" --device "$DEVICE" --json "$OUT/profile.json" 2>&1 | tee "$OUT/profile.log"
$DLSWM profile "$GAME" --preset "$PRESET" --device "$DEVICE" --set compile=off --json "$OUT/profile-eager.json" \
  2>&1 | tee "$OUT/profile-eager.log"
# As much of a run as fits: interrupted at TRAIN_S seconds (SIGINT: a run stops cleanly and keeps its
# finished iterations); its log and metrics come back.
rm -rf /tmp/gpu-run
timeout -s INT "$TRAIN_S" $DLSWM train "$GAME" --preset "$PRESET" --device "$DEVICE" --seed 0 --out /tmp/gpu-run \
  > "$OUT/train.log" 2>&1
echo "train exit $? after at most $TRAIN_S s" | tee -a "$OUT/train.log"
cp /tmp/gpu-run/metrics.jsonl "$OUT/" 2>/dev/null || true
tail -n 30 "$OUT/train.log"
