#!/usr/bin/env bash
# Build the two reference environments for compare.py (each library in its own virtualenv; both
# would clash with this package's name or its pins). Usage: bash setup.sh DIR
#   DIR/recbole/             RecBole 1.2.1 (+ numpy<2, pandas<2.2, setuptools<70 for its ray import,
#                            scipy<1.13: LightGCN, CKE and other graph models call dok_matrix._update,
#                            which scipy 1.13 removed; faiss-cpu<1.9 for NCL's k-means)
#   DIR/recstudio-0.0.2a1/   the original RecStudio wheel without its CUDA-only pins (faiss-gpu,
#                            dgl-cu102): BPR never touches dgl; recstudio_orig_bpr.py stubs it
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU wheel on this machine).
set -euo pipefail
DIR=${1:?usage: setup.sh DIR}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3}
mkdir -p "$DIR"

"$PY" -m venv "$DIR/recbole"
"$DIR/recbole/bin/pip" install -q "$TORCH_SPEC" recbole==1.2.1 "numpy<2" "pandas<2.2" "scipy<1.13"
"$DIR/recbole/bin/pip" install -q "setuptools<70"  # ray (imported by recbole) needs pkg_resources
"$DIR/recbole/bin/pip" install -q "faiss-cpu<1.9"   # NCL's prototype k-means; 1.8 still takes numpy<2

"$PY" -m venv "$DIR/recstudio-0.0.2a1"
"$DIR/recstudio-0.0.2a1/bin/pip" install -q "$TORCH_SPEC" "numpy<2" scipy "pandas<2.2" tqdm \
    colorlog==4.7.2 colorama pyyaml tensorboard scikit-learn requests faiss-cpu \
    torchmetrics==0.7.3 pyDeprecate==0.3.2
"$DIR/recstudio-0.0.2a1/bin/pip" install -q --no-deps recstudio==0.0.2a1
"$DIR/recstudio-0.0.2a1/bin/pip" install -q "setuptools<70"
echo "reference environments ready under $DIR"
