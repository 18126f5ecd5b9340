#!/usr/bin/env bash
# vitkit as users install it: build the wheel, install it in a fresh environment with its
# declared dependencies only (torch from local disk, as scripts/install_torch.sh does), run
# `vitkit demo` to the end, and check that a command needing an extra names it in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
python3 -m venv "$work/venv"
bash scripts/install_torch.sh "$work/venv/bin/python"
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/vitkit-*.whl
for dev_only in sklearn skimage transformers timm pytest; do
    if "$work/venv/bin/python" -c "import $dev_only" 2>/dev/null; then
        echo "wheel install: $dev_only is importable, but it is not a declared dependency" >&2
        exit 1
    fi
done
cd "$work"
"$work/venv/bin/vitkit" demo
# Without the extra, --engine ray answers with one line naming it (no traceback).
if "$work/venv/bin/vitkit" predict runs/demo/data/test --model runs/demo/run/best \
    --engine ray --out ray-out >ray.log 2>&1; then
    echo "wheel install: --engine ray ran without Ray installed?" >&2
    exit 1
fi
if grep -q Traceback ray.log || ! grep -q "pip install 'vitkit\[ray\]'" ray.log; then
    echo "wheel install: --engine ray without the extra did not name it:" >&2
    cat ray.log >&2
    exit 1
fi
echo "wheel install: vitkit demo ran from the wheel; --engine ray names its extra"
