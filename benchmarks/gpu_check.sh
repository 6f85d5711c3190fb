#!/usr/bin/env bash
# GPU check for a CUDA machine: the `gpu` tests, then the speed benchmark on CUDA; one table at the end.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        (run from anywhere; default OUTDIR: $OUT or ./gpu_check)
#
# Needs the project importable (pip install -e ".[gpu,dev]", or PYTHONPATH) and a CUDA build of torch.
# Settings (environment):
#   GPU_CHECK_RUNS       speed runs as MODEL:DATASET[:BATCH] (BATCH 0 = the model's default), space-
#                        separated; default "BPR:experiments/datasets/ml-1m-pairs.yaml:2048
#                        SASRec:ml-100k:0". Raw files from $RECSTUDIO_DATA_DIR, else ../shared/datasets
#   GPU_CHECK_EPOCHS     epochs per speed run (default 5)
#   GPU_CHECK_TEST_TIMEOUT / GPU_CHECK_SPEED_TIMEOUT   seconds (default 240 / 180 per speed run)
#   GPU_CHECK_DEVICE=cpu dry run of the script itself where there is no GPU
# Writes OUTDIR/gpu-tests.log, gpu-tests.xml, speed-<model>.json/.log and summary.txt. Exit status:
# 0 all ran and passed, 1 a check failed, 2 no CUDA device.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-$(command -v python || command -v python3)}"
OUTDIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
RUNS="${GPU_CHECK_RUNS:-BPR:experiments/datasets/ml-1m-pairs.yaml:2048 SASRec:ml-100k:0}"
EPOCHS="${GPU_CHECK_EPOCHS:-5}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-240}"
SPEED_TIMEOUT="${GPU_CHECK_SPEED_TIMEOUT:-180}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}" # cpu: dry run of this script on a machine without a GPU
export GPU_CHECK_DEVICE="$DEVICE"
export PYTHONUNBUFFERED=1 RECSTUDIO_CI=1
export RECSTUDIO_CACHE_DIR="${RECSTUDIO_CACHE_DIR:-$OUTDIR/cache}"
if [[ -z "${RECSTUDIO_DATA_DIR:-}" && -d ../shared/datasets ]]; then
  RECSTUDIO_DATA_DIR="$(cd ../shared/datasets && pwd)"
  export RECSTUDIO_DATA_DIR
fi

ROWS="$OUTDIR/rows.tsv" # check \t status \t seconds \t detail
: >"$ROWS"
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }
FAILED=0

# --- 1. the device
t0=$SECONDS
if GPU_INFO="$("$PY" - 2>&1 <<'EOF'
import os, torch
if os.environ.get("GPU_CHECK_DEVICE") == "cpu":
    raise SystemExit(f"dry run on CPU (GPU_CHECK_DEVICE=cpu), torch {torch.__version__}")
if not torch.cuda.is_available():
    raise SystemExit(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.device_count()}x {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF
)"; then
  row "cuda device" ok $((SECONDS - t0)) "$GPU_INFO"
  NO_GPU=0
elif [[ "$DEVICE" == cpu ]]; then
  row "cuda device" skip $((SECONDS - t0)) "$(echo "$GPU_INFO" | tail -n 1)"
  NO_GPU=0
else
  row "cuda device" FAIL $((SECONDS - t0)) "$(echo "$GPU_INFO" | tail -n 1)"
  NO_GPU=1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUTDIR/nvidia-smi.csv" 2>&1 || true
fi

# --- 2. the gpu-marked tests
if [[ $NO_GPU == 0 ]]; then
  t0=$SECONDS
  timeout -k 10 "$TEST_TIMEOUT" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$OUTDIR/gpu-tests.xml" >"$OUTDIR/gpu-tests.log" 2>&1
  rc=$?
  summary="$(grep -E '(passed|failed|skipped|error|no tests ran)' "$OUTDIR/gpu-tests.log" | tail -n 1 | tr -d '=' | xargs)"
  case $rc in
    0) row "pytest -m gpu" ok $((SECONDS - t0)) "$summary" ;;
    5) row "pytest -m gpu" FAIL $((SECONDS - t0)) "no gpu tests collected" ; FAILED=1 ;;
    124 | 137) row "pytest -m gpu" FAIL $((SECONDS - t0)) "timed out after ${TEST_TIMEOUT} s; $summary" ; FAILED=1 ;;
    *) row "pytest -m gpu" FAIL $((SECONDS - t0)) "exit $rc: $summary (log: gpu-tests.log)" ; FAILED=1 ;;
  esac

  # --- 3. the speed benchmark on CUDA
  for spec in $RUNS; do
    IFS=: read -r model dataset batch <<<"$spec"
    name="$model-$(basename "${dataset%.yaml}")"
    t0=$SECONDS
    timeout -k 10 "$SPEED_TIMEOUT" "$PY" benchmarks/speed.py --device "$DEVICE" --model "$model" \
      --dataset "$dataset" --batch-size "${batch:-2048}" --epochs "$EPOCHS" \
      --json "$OUTDIR/speed-$name.json" >"$OUTDIR/speed-$name.log" 2>&1
    rc=$?
    if [[ $rc -eq 0 && -s "$OUTDIR/speed-$name.json" ]]; then
      "$PY" - "$OUTDIR/speed-$name.json" "$((SECONDS - t0))" >>"$ROWS" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["speed"]
for r in rows:
    detail = (f"{r.get('users')} users x {r.get('items')} items, epoch {r.get('epoch_s', 0):.3f} s, "
              f"valid {r.get('valid_s', 0):.3f} s, cache hit {r.get('cache_hit_s', 0):.3f} s, "
              f"GPU peak {r.get('gpu_peak_mb', 0):.0f} MB, test ndcg@10 {r.get('test_ndcg@10') or 0:.4f}")
    print(f"speed {r['model']} {r['dataset']} {r['device']}\tok\t{sys.argv[2]}\t{detail}")
EOF
    else
      why="exit $rc"
      [[ $rc == 124 || $rc == 137 ]] && why="timed out after ${SPEED_TIMEOUT} s"
      row "speed $name $DEVICE" FAIL $((SECONDS - t0)) "$why: $(tail -n 1 "$OUTDIR/speed-$name.log") (log: speed-$name.log)"
      FAILED=1
    fi
  done

  # --- 4. one run on two GPUs (DDP), where there are two
  if [[ "$DEVICE" == cuda ]] && "$PY" -c "import sys, torch; sys.exit(torch.cuda.device_count() < 2)"; then
    t0=$SECONDS
    if timeout -k 10 "$SPEED_TIMEOUT" "$PY" -m recstudio run -m BPR -d ml-100k --devices 2 --epochs 3 \
      --tracking-uri "sqlite:///$OUTDIR/mlflow.db" --json >"$OUTDIR/ddp.json" 2>"$OUTDIR/ddp.log"; then
      row "run --devices 2" ok $((SECONDS - t0)) "$("$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('test ndcg@10', round(r['test']['ndcg@10'], 4))" "$OUTDIR/ddp.json")"
    else
      row "run --devices 2" FAIL $((SECONDS - t0)) "$(tail -n 1 "$OUTDIR/ddp.log") (log: ddp.log)"
      FAILED=1
    fi
  else
    row "run --devices 2" skip 0 "fewer than 2 GPUs (the 2-process path is tested on CPU: tests/test_distributed.py)"
  fi
fi

# --- the table
"$PY" - "$ROWS" <<'EOF' | tee "$OUTDIR/summary.txt"
import sys
rows = [line.rstrip("\n").split("\t", 3) for line in open(sys.argv[1]) if line.strip()]
head = ["check", "status", "seconds", "detail"]
widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head[:3])]
print("\nRecStudio GPU check")
print(" | ".join(h.ljust(w) for h, w in zip(head[:3], widths)) + " | detail")
print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 40)
for r in rows:
    print(" | ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + " | " + r[3])
EOF

if [[ $NO_GPU == 1 ]]; then exit 2; fi
exit $FAILED
