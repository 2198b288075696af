#!/usr/bin/env bash
# make kit: an offline install kit for a workshop room — the wheels of the locked package set for this
# platform, the course (code, notebooks, data) and an install script that never touches the network.
#   bash scripts/make_kit.sh [KITDIR]      (default build/kit; refuses to write into an existing kit)
# Size: torch from PyPI for Linux x86-64 is the CUDA build, so the kit is several GB; a CPU-only torch wheel
# (PyTorch's own index, where reachable) makes it about ten times smaller.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-build/kit}
PY=${PY:-.venv/bin/python}
if [ -e "$KIT/install.sh" ]; then
  echo "kit: $KIT already holds a kit; remove it first (rm -r $KIT) or name another folder" >&2
  exit 2
fi
mkdir -p "$KIT/wheels"
# The locked set: exactly what the tested venv holds (lwkit itself excluded; setuptools for its build).
"$PY" -m pip freeze --exclude-editable | grep -v '^lwkit' > "$KIT/requirements-lock.txt"
echo "setuptools>=77" >> "$KIT/requirements-lock.txt"
# pip wheel: downloads the wheels, and builds one for the few packages published only as source.
"$PY" -m pip wheel --quiet --no-deps -w "$KIT/wheels" -r "$KIT/requirements-lock.txt"
git archive --format=tar --prefix=lwkit/ HEAD | tar -x -C "$KIT"
cat > "$KIT/install.sh" <<'EOS'
#!/usr/bin/env bash
# Installs the course into lwkit/.venv from the wheels beside this script; no network is used.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv lwkit/.venv
lwkit/.venv/bin/python -m pip install --quiet --no-index --find-links wheels -r requirements-lock.txt
lwkit/.venv/bin/python -m pip install --quiet --no-index --find-links wheels --no-build-isolation --no-deps -e lwkit
mkdir -p lwkit/.venv/share/jupyter/lab/settings && cp lwkit/jupyter/overrides.json lwkit/.venv/share/jupyter/lab/settings/
touch lwkit/.venv/.lwkit-installed
echo "installed: cd lwkit && make lab   (or make run)"
EOS
chmod +x "$KIT/install.sh"
du -sh "$KIT" | awk '{print "kit: " $2 " (" $1 ")"}'
