#!/usr/bin/env bash
# Installs the reference implementations that liandan's conformance tests run
# against (W&B's sweep engine and agent, pinned) into a cached virtual
# environment outside the repository, and prints where its python is.
#
#   LIANDAN_TEST_VENV   where the venv lives (default ~/.cache/liandan/testenv-1)
#
# Output (stdout): one `export` line, so `eval "$(scripts/setup-testenv.sh)"`
# sets LIANDAN_TEST_PYTHON. Progress goes to stderr. Idempotent: a finished
# install is marked and reused; changing PACKAGES below changes the marker, so
# the next run installs again into the same venv.
set -euo pipefail

# Every reference package, pinned. PyYAML is what `wandb sweep` reads files
# with; pip resolves the engine's own dependencies (numpy<2, scipy,
# scikit-learn, jsonschema, jsonref, pydantic).
PACKAGES="sweeps==0.3.0 wandb==0.31.0 PyYAML"

# Bump when the venv must be rebuilt from scratch (the default path carries it).
ENV_VERSION=1

venv="${LIANDAN_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/liandan/testenv-$ENV_VERSION}"
# The marker holds the package list it was made with.
marker="$venv/.liandan-complete"

if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$PACKAGES" ]; then
  echo "installing $PACKAGES into $venv (about 400 MB, once)..." >&2
  if [ ! -x "$venv/bin/python" ]; then
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
  fi
  # shellcheck disable=SC2086 # PACKAGES is a list of words
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PACKAGES >&2
  "$venv/bin/python" - >&2 <<'EOF'
import importlib.metadata as md
import sweeps, wandb, yaml  # noqa: F401  (they import)
assert md.version("sweeps") == "0.3.0", md.version("sweeps")
assert md.version("wandb") == "0.31.0", md.version("wandb")
EOF
  printf '%s' "$PACKAGES" > "$marker"
fi

echo "export LIANDAN_TEST_PYTHON='$venv/bin/python'"
