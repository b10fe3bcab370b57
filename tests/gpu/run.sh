#!/usr/bin/env bash
# The GPU tier in one command (`make test-gpu` runs it): on a host with a CUDA GPU, with that host's own python3 and
# torch, and no package registry needed. It installs the wheels `make gpu-bundle` left in .whl/ into a scratch
# directory, reads the tiny test model from .gpu-models/, and runs tests/gpu within GPU_TIER_LIMIT_S seconds. The
# summary goes to stdout and, where OUT is set, to $OUT/gpu-summary.json and $OUT/gpu-figures.md.
# LMIKIT_GPU_TIER_DEVICE=cpu rehearses the tier's own code on a CPU (it proves nothing about CUDA).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
LIMIT_S=${GPU_TIER_LIMIT_S:-480}
SITE=${GPU_TIER_SITE:-/tmp/lmikit-gpu-site}

if [ "${LMIKIT_GPU_TIER_DEVICE:-cuda}" = cuda ] &&
  ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  cat >&2 <<MESSAGE
error: the GPU tier needs CUDA, and $PYTHON here has no CUDA GPU (or no torch): nothing was run.
Run it on a CUDA host: make test-gpu (GPU_PYTHON=/path/to/python3 for a python whose torch has CUDA).
Through the device tool: make gpu-bundle here first, then run
  bash tests/gpu/run.sh
with carry [".whl", ".gpu-models"] and timeout_s 560 (README, "GPU tier").
To rehearse the tier's own code on this CPU: LMIKIT_GPU_TIER_DEVICE=cpu make test-gpu
MESSAGE
  exit 2
fi
if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "note: the wheels in .whl/ are for Python 3.12 (the GPU machine's); $PYTHON runs with its own packages"
elif compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ||
    { echo "error: the wheels in .whl/ did not install into $SITE" >&2; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/packaging:$PWD/model${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu-models ]; then export LMIKIT_CACHE=${LMIKIT_CACHE:-$PWD/.gpu-models}; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PYTHON" -c 'import transformers, starlette, uvicorn, boto3' 2>/dev/null; then
  echo "error: $PYTHON lacks transformers, starlette, uvicorn or boto3: run make gpu-bundle on a machine with a" \
    "package registry (it fills .whl/), or pip install them here" >&2
  exit 3
fi
echo "GPU tier: $("$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
  transformers.__version__)'), limit ${LIMIT_S} s; not checked here: vLLM's CUDA build and DeepSpeed (see README)"
timeout --kill-after=15 "$LIMIT_S" "$PYTHON" -m pytest --gpu-tier tests/gpu -p no:cacheprovider -q "$@"
status=$?
[ $status -eq 124 ] && echo "error: the GPU tier ran past ${LIMIT_S} s and was stopped (the summary files hold what ran)" >&2
exit $status
