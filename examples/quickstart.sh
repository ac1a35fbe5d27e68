#!/usr/bin/env bash
# The whole flow in one command, from a fresh clone: a virtual environment (.venv), a generated
# sample image set (no download beyond PyPI packages), then embed, head train, predict, export,
# eval and the HTML report, all in quickstart/ (its cache/ and runs/ too).
#
#   bash examples/quickstart.sh               # install into .venv, then run the flow
#   bash examples/quickstart.sh --no-install  # run the flow with the `headstart` on PATH
#
# QUICKSTART_DIR moves the work folder, QUICKSTART_VENV the virtual environment. Weights:
# ResNet50 with RANDOM weights (--weights none) at 96 px, whose features are O(1): the machinery is real, the accuracy is not. With network
# access, drop `--weights none` to get the ImageNet weights (downloaded once by Keras).
# --runtime tf skips the one-off LiteRT conversion of the backbone (about a minute for ResNet50
# on 2 cores), which pays for itself only on more images than these 84.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${QUICKSTART_DIR:-$repo/quickstart}"
venv="${QUICKSTART_VENV:-$repo/.venv}"
started=$SECONDS
step() { echo; echo "== $* ($((SECONDS - started)) s so far)"; }

if [[ "${1:-}" == "--no-install" ]]; then
  command -v headstart >/dev/null || { echo "quickstart: no headstart on PATH; activate its environment, or run without --no-install" >&2; exit 2; }
  python=python3
  activate=""
else
  step "set-up: $venv with headstart and its dependencies (TensorFlow is most of the time)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # --no-compile: pip would byte-compile every module of TensorFlow & co. (~30 s on 2 cores);
  # Python compiles the ones a command imports, once, on first use instead. Not where
  # PYTHONDONTWRITEBYTECODE is set: nothing compiled would be kept, and every command would
  # compile TensorFlow again (~10 s each).
  compile_flag="--no-compile"
  [[ -n "${PYTHONDONTWRITEBYTECODE:-}" ]] && compile_flag="--compile"
  "$venv/bin/python" -m pip install -q "$compile_flag" -e "$repo"
  export PATH="$venv/bin:$PATH"
  python="$venv/bin/python"
  activate="source $venv/bin/activate"
fi

mkdir -p "$work"
cd "$work"
step "sample images: 3 classes, 20 each to train on, 8 new ones each to evaluate on"
"$python" "$repo/examples/make_sample_images.py" images --per-class 20 --seed 0
"$python" "$repo/examples/make_sample_images.py" new_images --per-class 8 --seed 1

step "embed: the backbone runs once over every image, into cache/"
headstart embed run images --backbone ResNet50 --weights none --image-size 96 --runtime tf -q
step "head train: a dense head on the cached features, in seconds"
headstart head train --head dense --out runs/dense
step "predict: class probabilities for new images"
headstart predict new_images --run runs/dense -o predictions.csv --runtime tf -q
head -n 4 predictions.csv
step "export: one Keras model, any-size RGB images in, probabilities out"
headstart export runs/dense --out model
step "eval: the run on the new labelled images (metrics, confusion.png, the mistakes)"
headstart eval runs/dense new_images --out runs/dense/evals/new_images --runtime tf
step "report: runs/dense/report.html"
headstart report runs/dense

echo
echo "Done in $((SECONDS - started)) s; everything is in $work."
echo "Next:"
if [[ -n "$activate" ]]; then
  echo "  $activate    # puts headstart on PATH (every README example assumes it)"
fi
echo "  cd $work"
echo "  headstart head sweep --head dense,logreg,svm,ncm   # several heads, one leaderboard"
echo "  headstart finetune --from runs/dense --epochs 2    # end to end, warm-started from the head"
echo "  headstart inspect duplicates                       # near-copies leaking across train/val"
echo "  headstart cache list                               # what is kept on disk"
echo "  open runs/dense/report.html in a browser"
