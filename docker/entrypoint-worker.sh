#!/usr/bin/env bash
# Worker container: claim a worker slot, pin its GPU, then run `recstudio tune` on the shared study.
#
# Configuration (environment; docker-compose.yml fills it from .env):
#   RECSTUDIO_OPTUNA_STORAGE  study storage, e.g. postgresql+psycopg://recstudio@postgres:5432/optuna
#   PGPASSWORD                the database password (kept out of URLs and command lines)
#   MLFLOW_TRACKING_URI       e.g. http://mlflow:5000
#   RECSTUDIO_MODEL, RECSTUDIO_DATASET, RECSTUDIO_STUDY   what to tune and the study's name
#   RECSTUDIO_TRIALS          trials this worker runs (each worker runs its own; default 20)
#   RECSTUDIO_TUNE_ARGS       more `recstudio tune` options, split on spaces (e.g. "--sampler tpe --seed 1")
#   RECSTUDIO_WORKER_GPU      pin this GPU index (or a list such as 0,1 for --devices 2) instead of slot % number-of-GPUs
#   RECSTUDIO_STUDY_WAIT_S    how long workers other than slot 0 wait for the study to exist (default 600)
#
# Arguments: none -> `recstudio tune ...` from the variables above; starting with '-' -> appended
# to that command; anything else -> run as a command (after the GPU is pinned), e.g.
#   docker compose run --rm worker recstudio datasets list
set -euo pipefail

log() { echo "[worker${SLOT:+ $SLOT}] $*" >&2; }

SLOTS_DIR="${RECSTUDIO_SLOTS_DIR:-/data/.workers}"
MAX_SLOTS="${RECSTUDIO_MAX_SLOTS:-64}"
mkdir -p "$SLOTS_DIR" "${RECSTUDIO_DATA_DIR:-/data/datasets}" "${RECSTUDIO_CACHE_DIR:-/data/cache}"

# --- worker slot: the lowest free index among the replicas sharing /data. The flock is held by an
# open file descriptor that `exec` passes on, so the slot is released exactly when this container's
# process ends (a restarted or replaced worker takes it again).
SLOT=""
for ((i = 0; i < MAX_SLOTS; i++)); do
  exec {slot_fd}>"$SLOTS_DIR/slot-$i.lock"
  if flock -n "$slot_fd"; then
    SLOT=$i
    echo "$(hostname) $$ $(date -u +%FT%TZ)" >"$SLOTS_DIR/slot-$i.owner"
    break
  fi
  exec {slot_fd}>&-
done
if [[ -z "$SLOT" ]]; then
  log "no free worker slot among $MAX_SLOTS in $SLOTS_DIR"
  exit 1
fi
export RECSTUDIO_WORKER_SLOT="$SLOT"

# --- GPU: one per worker, slot modulo the GPUs this container was given (compose reserves all)
count_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    python - <<'EOF' 2>/dev/null || echo 0
import torch
print(torch.cuda.device_count())
EOF
  fi
}
if [[ -n "${RECSTUDIO_WORKER_GPU:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$RECSTUDIO_WORKER_GPU"
  log "GPU $CUDA_VISIBLE_DEVICES (RECSTUDIO_WORKER_GPU)"
elif [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  NGPU="$(count_gpus)"
  if [[ "${NGPU:-0}" -gt 0 ]]; then
    export CUDA_VISIBLE_DEVICES=$((SLOT % NGPU))
    if ((SLOT >= NGPU)); then
      log "warning: $((SLOT + 1)) or more workers on $NGPU GPU(s): GPU $CUDA_VISIBLE_DEVICES is shared"
    fi
    log "GPU $CUDA_VISIBLE_DEVICES of $NGPU"
  else
    log "warning: no GPU visible (is the NVIDIA container toolkit installed?); training on CPU"
  fi
fi

# --- an explicit command runs as is
if [[ $# -gt 0 && "$1" != -* ]]; then
  exec "$@"
fi

: "${RECSTUDIO_OPTUNA_STORAGE:?set RECSTUDIO_OPTUNA_STORAGE (the study storage URL)}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI (the tracking server URL)}"
MODEL="${RECSTUDIO_MODEL:?set RECSTUDIO_MODEL}"
DATASET="${RECSTUDIO_DATASET:?set RECSTUDIO_DATASET}"
# default as `recstudio tune` names it: MODEL-<dataset file stem>, e.g. BPR-ml-100k
ds_name="${DATASET##*/}"
ds_name="${ds_name%.yaml}"
STUDY="${RECSTUDIO_STUDY:-$MODEL-${ds_name%.yml}}"
TRIALS="${RECSTUDIO_TRIALS:-20}"

# --- replicas start together: slot 0 creates the study (schema, study, MLflow parent run); the
# others wait until it exists so they join it instead of racing to create it.
if ((SLOT > 0)); then
  log "waiting for study '$STUDY' to be created by worker 0"
  STUDY="$STUDY" WAIT_S="${RECSTUDIO_STUDY_WAIT_S:-600}" python - <<'EOF' || true
import os, time
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
name, url = os.environ["STUDY"], os.environ["RECSTUDIO_OPTUNA_STORAGE"]
deadline = time.monotonic() + float(os.environ["WAIT_S"])
while time.monotonic() < deadline:
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=True)
        if name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            if study.user_attrs.get("mlflow_parent_run_id") or study.trials:
                break
    except Exception:
        pass  # tables or study not there yet
    time.sleep(3)
else:
    print(f"study {name!r} not ready after {os.environ['WAIT_S']} s; starting anyway")
EOF
fi

# word-splitting RECSTUDIO_TUNE_ARGS is intended
# shellcheck disable=SC2206
EXTRA=(${RECSTUDIO_TUNE_ARGS:-})
CMD=(recstudio tune --model "$MODEL" --dataset "$DATASET" --study-name "$STUDY" --trials "$TRIALS"
  --workers 1 "${EXTRA[@]}" "$@")
log "${CMD[*]}"
exec "${CMD[@]}"
