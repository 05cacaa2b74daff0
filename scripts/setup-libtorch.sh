#!/usr/bin/env bash
# Installs libtorch (torch==2.11.0 from PyPI) into a cached virtual environment
# outside the repository and prints the environment that builds `trainer`.
#
#   LIANDAN_TORCH_VENV   where the venv lives (default ~/.cache/liandan/torch-2.11.0)
#   LIBTORCH             an existing libtorch; honoured as is, nothing is installed
#
# Output (stdout): shell `export` lines, so `eval "$(scripts/setup-libtorch.sh)"` works.
# Progress goes to stderr. Idempotent: a finished install is marked and reused.
set -euo pipefail

TORCH_VERSION=2.11.0

if [ -n "${LIBTORCH:-}" ]; then
  if [ ! -d "$LIBTORCH/lib" ]; then
    echo "error: LIBTORCH=$LIBTORCH has no lib/ directory; unset it or point it at a libtorch tree" >&2
    exit 1
  fi
  echo "export LIBTORCH='$LIBTORCH'"
  exit 0
fi

venv="${LIANDAN_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/liandan/torch-$TORCH_VERSION}"
marker="$venv/.liandan-complete"

if [ ! -f "$marker" ]; then
  echo "installing torch==$TORCH_VERSION into $venv (about 2.6 GB, once)..." >&2
  if ! python3 -m venv "$venv" >&2; then
    # Debian's python3 ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 cannot create a virtual environment; installing python3-venv" >&2
      apt-get install -y python3-venv >&2 && python3 -m venv "$venv" >&2
    else
      echo "error: python3 cannot create a virtual environment; install it (Debian: sudo apt-get install python3-venv) and run again" >&2
      exit 1
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" >&2
  "$venv/bin/python" -c 'import torch; assert torch.__version__.startswith("'"$TORCH_VERSION"'"), torch.__version__' >&2
  touch "$marker"
fi

# torch-sys runs `python` when VIRTUAL_ENV is set, else `python3`.
echo "export LIBTORCH_USE_PYTORCH=1"
echo "export VIRTUAL_ENV='$venv'"
echo "export PATH='$venv/bin':\"\$PATH\""
echo "export LIANDAN_TORCH_PYTHON='$venv/bin/python'"
