#!/usr/bin/env bash
# One prepared GPU session: runs the GPU tests and every throughput figure BENCHMARKS.md records,
# most important first, each under its own time limit, inside an overall budget.
#
#   bash benchmarks/perf/gpu_session.sh OUT_DIR [BUDGET_S]          # on a CUDA machine, from the repo root
#   DRY=1 bash benchmarks/perf/gpu_session.sh /tmp/dry 300            # CPU rehearsal: vit_micro, few steps
#
# canbench must be importable (installed, or PYTHONPATH). Results: OUT_DIR/results.tgz (one .json /
# .out / .err per step; replaced atomically) and OUT_DIR/log.txt (the last lines of each step), rewritten
# after every step, so a run stopped at its limit still leaves what it finished.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [BUDGET_S]}
BUDGET=${2:-480}
PY=${PYTHON:-python3}
RES=$(mktemp -d)
JPEGS=${JPEGS:-/tmp/canbench_jpegs}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

if [[ ${DRY:-0} == 1 ]]; then
  DEV=cpu; B=vit_micro; L=vit_micro; BB=16; LB=16; N=2; W=1; NW=2; NJ=64; ST=3; LONG=4
else
  DEV=cuda; B=vit_base; L=vit_large; BB=128; LB=64; N=20; W=5; NW=16; NJ=4096; ST=40; LONG=10
fi
TP=("$PY" -m canbench throughput --device "$DEV" --json)

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }

step() {  # step NAME LIMIT_S CMD...: stdout -> NAME.json (or .out), stderr -> NAME.err
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 15 )); then log "SKIP $name: budget spent"; return; fi
  (( limit > left )) && limit=$left
  log "RUN $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" > "$RES/$name.out" 2> "$RES/$name.err"
  local rc=$?
  log "END $name rc=$rc"
  if (( rc != 0 )); then tail -n 15 "$RES/$name.err" | tee -a "$OUT/log.txt"; fi
  if [[ "$name" == tp_* ]] && (( rc == 0 )); then
    mv "$RES/$name.out" "$RES/$name.json"
    "$PY" - "$RES/$name.json" <<'EOF' | tee -a "$OUT/log.txt"
import json, sys
r = json.load(open(sys.argv[1]))
for m in r["rows"]:
    mfu = m.get("mfu")
    mem = m.get("peak_mem_bytes") or 0
    print(f"  {m['method']:<7}{m['arch']:<11}b{m['batch']:<4} compile={int(m['compile'])} data={m['data'][:12]:<12} "
          f"{m['img_per_s']:>8.1f} img/s  wall {m['img_per_s_wall']:>8.1f}  "
          f"mfu {'-' if mfu is None else f'{mfu:.3f}'}  mem {mem / 2**30:.1f} GiB")
EOF
  else
    tail -n 12 "$RES/$name.out" | tee -a "$OUT/log.txt"
  fi
  tar czf "$OUT/.results.tgz.tmp" -C "$RES" . 2>/dev/null && mv -f "$OUT/.results.tgz.tmp" "$OUT/results.tgz"
}

step env 60 bash -c "nvidia-smi || true; $PY -c 'import torch, torchvision, timm, canbench; \
print(torch.__version__, torch.version.cuda, torchvision.__version__, timm.__version__, canbench.__file__); \
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no cuda\")'; nproc"
step jpegs 120 "$PY" -m canbench.benchmarks.perf.make_jpegs "$JPEGS" --images "$NJ" --workers "$NW"
if [[ $DEV == cuda ]]; then
  step pytest_gpu 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_throughput.py tests/test_gpu_pipeline.py
fi
# 1. model step only (targets: CAN ViT-B >= 2,300 img/s; ViT-L >= 900)
step tp_vitb_eager 180 "${TP[@]}" --arch "$B" --methods can,simclr,mae --batch "$BB" --steps "$N" --warmup "$W"
# 2. end to end from JPEG files, GPU decode + augmentation (target: >= 90% of step 1's CAN)
step tp_vitb_e2e_gpu 150 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --data "jpeg-gpu:$JPEGS" \
  --workers "$NW" --steps "$ST" --warmup "$LONG"
step tp_vitb_compile_can 240 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --compile --steps "$N" --warmup "$W"
step tp_vitl_eager 180 "${TP[@]}" --arch "$L" --methods can,simclr,mae --batch "$LB" --steps "$N" --warmup "$W"
step tp_vitb_pipe_gpu 90 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --data "jpeg-gpu:$JPEGS" \
  --workers "$NW" --steps "$ST" --warmup "$LONG" --data-only
step tp_vitb_e2e_cpu 120 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --data "jpeg:$JPEGS" \
  --workers "$NW" --steps "$ST" --warmup "$LONG"
step tp_vitb_compile_simclr_mae 300 "${TP[@]}" --arch "$B" --methods simclr,mae --batch "$BB" --compile \
  --steps "$N" --warmup "$W"
step tp_vitl_compile_can 240 "${TP[@]}" --arch "$L" --methods can --batch "$LB" --compile --steps "$N" --warmup "$W"
step tp_vitb_e2e_gpu_roi 120 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --data "jpeg-gpu:$JPEGS" \
  --workers "$NW" --steps "$ST" --warmup "$LONG" --resize roi_align
step tp_vitb_e2e_cpu_compile 240 "${TP[@]}" --arch "$B" --methods can --batch "$BB" --data "jpeg:$JPEGS" \
  --workers "$NW" --steps "$ST" --warmup "$LONG" --compile
log "done"
rm -rf "$RES"
