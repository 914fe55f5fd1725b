#!/usr/bin/env bash
# One command for a GPU machine: train the paper notebooks' runs (`mkd regenerate --train-only`, no papermill
# or Jupyter needed), pack their records into one archive, and print the CPU-side command that renders the
# tables from it (no training there: every run is then cached, found by its key).
#
#   bash scripts/regenerate_gpu.sh [--shared DIR] [--device cuda] [--profile paper] [--out DIR] [--only ITEM...]
#   bash scripts/regenerate_gpu.sh --render ARCHIVE [--shared DIR] [--profile paper] [--results DIR] [--only ITEM...]
#       (CPU side: add the records to <results>/runs, never overwriting one, and render the notebooks)
#   bash scripts/regenerate_gpu.sh --estimate [--profile paper] [--only ITEM...]  # image passes, expected time
#
# --shared: a folder holding data/ (MNIST/raw, FashionMNIST/raw, head_ct/, brain_mri/{yes,no}, OCT2017/,
# cifar-10-batches-py/, and MVTec AD categories as mvtec*/<category>/) and weights/vgg16_features.pth; default
# ../shared if present, else ./shared. Only the items whose data is found run; the others are reported
# "skipped: no data here". --out gets runs.tar.gz (run records: no checkpoints but the final cloners, no feature
# caches) and regenerate_gpu.log (default: $OUT if set, else results/gpu).
#
# Expected GPU time, paper profile, all items (--estimate prints it): 186 runs, 71.6 M image passes (epochs x
# training images, summed), 143 M at 128-px cost (CIFAR-10 at 224 px dominates: 123 M). ASSUMPTION, NOT
# MEASURED: one H200 trains ~4,000 images/s at 128 px (source features cached, cost proportional to pixels),
# so about 10 h for everything, before scoring; 15 minutes cover about 3.6 M passes at 128 px: Table 6
# (0.8 M, ~3.4 min) and a few MVTec AD categories (~0.15 M, ~40 s each). The smoke profile: 2,816 passes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSUMED_IMG_S=4000  # at 128 px on one H200: an assumption (see above), not a measurement
SHARED="" DEVICE=cuda PROFILE=paper OUT_DIR="${OUT:-$REPO/results/gpu}" RENDER="" RESULTS="" ESTIMATE=0 WEIGHTS=""
ONLY=()

die() { echo "regenerate_gpu.sh: $*" >&2; exit 2; }
while (($#)); do
    case "$1" in
        --shared) SHARED="${2:?--shared needs a folder}"; shift 2 ;;
        --device) DEVICE="${2:?--device needs a value (cuda, cuda:1, cpu)}"; shift 2 ;;
        --profile) PROFILE="${2:?--profile needs a value (paper, smoke)}"; shift 2 ;;
        --out) OUT_DIR="${2:?--out needs a folder}"; shift 2 ;;
        --weights) WEIGHTS="${2:?--weights needs a file}"; shift 2 ;;
        --render) RENDER="${2:?--render needs the runs.tar.gz a GPU run wrote}"; shift 2 ;;
        --results) RESULTS="${2:?--results needs a folder}"; shift 2 ;;
        --estimate) ESTIMATE=1; shift ;;
        --only) shift; while (($#)) && [[ "$1" != --* ]]; do ONLY+=("$1"); shift; done
                ((${#ONLY[@]})) || die "--only needs at least one item (table3, figure6, ...)" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# mkdlib from this checkout, without installing it (an offline machine cannot pip install).
PY="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]] && PY="$REPO/.venv/bin/python"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MKDLIB_NOTEBOOKS="$REPO/notebooks"  # the checkout whose results/ this script reads and writes
ONLY_ARGS=(); ((${#ONLY[@]})) && ONLY_ARGS=(--only "${ONLY[@]}")
runs_of() {  # <results>/runs, the run cache the notebooks read (no argument: the profile's results folder)
    "$PY" -c "import sys; from mkdlib.paper.notebook import notebook_paths
print(notebook_paths(sys.argv[1], sys.argv[2] or None)[1])" "$PROFILE" "${1:-}"
}

if ((ESTIMATE)); then
    exec "$PY" - "$PROFILE" "$ASSUMED_IMG_S" "${ONLY[@]}" <<'EOF'
import sys
from mkdlib.paper.notebook import notebook_specs, select
# Training images per run (public dataset facts, not read from disk): the train split's normals; HeadCT and
# BrainMRI: their normals less the 10 held out per split.
MNIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MVTEC = dict(bottle=209, cable=224, capsule=219, carpet=280, grid=264, hazelnut=391, leather=245, metal_nut=220,
             pill=267, screw=320, tile=230, toothbrush=60, transistor=213, wood=247, zipper=240)
SIZE = {"fashionmnist": 6000, "cifar10": 5000, "retina": 26315, "headct": 90, "brainmri": 88}
profile, img_s, only = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
specs = {s.key(): s for nb in select(only) for ss in notebook_specs(nb, profile).values() for s in ss}
passes = cost = 0.0
for s in specs.values():
    cfg = s.mkd_config()
    n = {"mnist": MNIST, "mvtec": MVTEC}.get(s.dataset, {})
    n = n[s.normal_class] if n else SIZE[s.dataset]
    passes += cfg.epochs * min(n, s.max_train or n)
    cost += cfg.epochs * min(n, s.max_train or n) * (cfg.image_size / 128) ** 2
print(f"{profile}: {len(specs)} runs, {passes:,.0f} image passes ({cost:,.0f} at 128-px cost): about "
      f"{cost / img_s / 60:,.1f} min of training at an ASSUMED {img_s:,.0f} img/s at 128 px (not measured)")
EOF
fi

locations() {  # DATA: the data root mkdlib expects ($MKDLIB_DATA layout, mkdlib/datasets/roots.py) as a folder
    # of links into the shared one, the MVTec AD categories of any mvtec*/ folder as mvtec/<category>; WEIGHT_ARGS.
    [[ -n "$SHARED" ]] || { [[ -d "$REPO/../shared" ]] && SHARED="$REPO/../shared" || SHARED="$REPO/shared"; }
    [[ -d "$SHARED" ]] || die "shared folder $SHARED not found: pass --shared DIR (the folder holding data/ and weights/)"
    SHARED="$(cd "$SHARED" && pwd)"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/mkd-gpu.XXXXXX")"
    DATA="$WORK/data"
    mkdir -p "$DATA/mvtec"
    local entry category
    for entry in "$SHARED"/data/*/; do
        [[ -d "$entry" ]] || continue
        if [[ "$(basename "$entry")" == mvtec* ]]; then
            for category in "$entry"*/; do
                [[ -e "$DATA/mvtec/$(basename "$category")" ]] || ln -s "${category%/}" "$DATA/mvtec/$(basename "$category")"
            done
        else
            ln -s "${entry%/}" "$DATA/$(basename "$entry")"
        fi
    done
    echo "data ($SHARED/data): $(cd "$DATA" && ls | grep -v '^mvtec$' | tr '\n' ' ')mvtec [$(ls "$DATA/mvtec" | tr '\n' ' ')]"
    WEIGHTS="${WEIGHTS:-${MKDLIB_VGG16_WEIGHTS:-$SHARED/weights/vgg16_features.pth}}"
    WEIGHT_ARGS=()
    if [[ -f "$WEIGHTS" ]]; then
        echo "weights: $WEIGHTS"
        WEIGHT_ARGS=(--weights "$WEIGHTS")
    elif [[ "$PROFILE" == smoke ]]; then
        echo "weights: none ($WEIGHTS absent): the smoke profile uses a random source"
    else
        die "source weights $WEIGHTS not found: the $PROFILE profile needs ImageNet VGG-16 weights; pass --weights FILE"
    fi
}

render() {  # CPU side: unpack the records into the run cache the notebooks read, then render the notebooks
    [[ -f "$RENDER" ]] || die "archive $RENDER not found: pass the runs.tar.gz a GPU run wrote"
    locations
    local results_args=() runs
    [[ -n "$RESULTS" ]] && RESULTS="$(realpath -m "$RESULTS")" && results_args=(--results "$RESULTS")
    # --unpack adds the records to the run cache without overwriting any (a differing finished one is kept aside)
    exec "$PY" -m mkdlib.paper.regenerate --profile "$PROFILE" --unpack "$RENDER" --data-root "$DATA" "${WEIGHT_ARGS[@]}" \
        "${results_args[@]}" "${ONLY_ARGS[@]}"
}

check_device() {  # torch, CUDA and the GPU; --device cuda refused where torch sees no GPU
    "$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
device = sys.argv[1]
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda if cuda else 'not available'}"
      + (f", GPU {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)" if cuda else ""))
if device.startswith("cuda") and not cuda:
    sys.exit(f"regenerate_gpu.sh: --device {device} but torch sees no CUDA GPU here: run this on the GPU "
             "machine, or pass --device cpu")
PYEOF
}

train() {  # GPU side; the caller tees its output into the log
    local start code cache only="${ONLY[*]:+ --only ${ONLY[*]}}"
    start=$(date +%s)
    locations
    check_device || exit 2
    # The run cache starts as a copy of the profile's records (no checkpoints): runs finished before stay cached.
    cache="$(runs_of "")"
    mkdir -p "$WORK/runs"
    [[ ! -d "$cache" ]] || tar -C "$cache" --exclude=checkpoints --exclude=.lock -cf - . | tar -C "$WORK/runs" -xf -
    code=0
    "$PY" -m mkdlib.paper.regenerate --train-only --profile "$PROFILE" --device "$DEVICE" --runs-dir "$WORK/runs" \
        --data-root "$DATA" "${WEIGHT_ARGS[@]}" --archive "$OUT_DIR/runs.tar.gz" "${ONLY_ARGS[@]}" || code=$?
    echo "regenerate_gpu.sh: exit $code after $(( $(date +%s) - start )) s (profile $PROFILE, device $DEVICE;" \
         "the runs with their checkpoints stay in $WORK/runs)"
    [[ -f "$OUT_DIR/runs.tar.gz" ]] || return "$code"
    cat <<TXT
Render the tables on a CPU machine with papermill, from the checkout, the archive copied there (nothing retrains):
  bash scripts/regenerate_gpu.sh --render runs.tar.gz --profile $PROFILE --shared ../shared$only
which unpacks the records into the run cache and renders the notebooks:
  mkd regenerate --profile $PROFILE --unpack runs.tar.gz --data-root <data folder> --weights <vgg16_features.pth>$only
TXT
    return "$code"
}

[[ -z "$RENDER" ]] || render
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/runs.tar.gz"  # never mistake an older archive for this run's
set +e
train 2>&1 | tee "$OUT_DIR/regenerate_gpu.log"
exit "${PIPESTATUS[0]}"
