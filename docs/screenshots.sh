#!/usr/bin/env bash
# Reproduce the README's dashboard screenshots (docs/*.png): a real fit and a short defense sweep,
# TensorBoard served on loopback, each view captured with headless Chromium.
#
#   docs/screenshots.sh [WORK_FOLDER]        (default /tmp/leakage-screenshots)
#
# Needs chromium (Debian: apt-get install -y chromium), the package installed (`leakage`,
# `tensorboard` on PATH) and the `websockets` package (docs/cdp_shot.py); PYTHON, TENSORBOARD and CHROMIUM override the commands. Run from the
# repository root. Existing runs in WORK_FOLDER are reused (delete it to start over).
set -euo pipefail
WORK=${1:-/tmp/leakage-screenshots}
PYTHON=${PYTHON:-python}
TENSORBOARD=${TENSORBOARD:-tensorboard}
CHROMIUM=${CHROMIUM:-chromium}
PORT=${PORT:-6006}
mkdir -p "$WORK" docs

# the runs: DLG on the 20 bundled CIFAR-10 images (some victims fail), and the defense sweep on 5 images
[ -d "$WORK/logs/cifar_dlg" ] || "$PYTHON" -m leakage.cli fit --config configs/cifar_dlg.yaml \
    --trainer.logger.init_args.save_dir "$WORK/logs" --trainer.enable_progress_bar false
[ -f "$WORK/defense_sweep/report.html" ] || "$PYTHON" -m leakage.cli sweep --config configs/defense_sweep.yaml \
    --sweep.output "$WORK/defense_sweep" --sweep.refine 1 --data.num_victims 5

shoot() {  # shoot OUTPUT URL [WIDTH,HEIGHT]
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d)" --window-size="${3:-1400,1000}" --hide-scrollbars \
        --virtual-time-budget=15000 --screenshot="$1" "$2" 2>/dev/null
}

serve() {  # serve LOGDIR: TensorBoard on loopback, wait until it answers
    "$TENSORBOARD" --logdir "$1" --host 127.0.0.1 --port "$PORT" >/dev/null 2>&1 &
    TB_PID=$!
    for _ in $(seq 60); do
        "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/data/runs')" 2>/dev/null && break
        sleep 1
    done
    sleep 3  # let it load the event files
}

RUN=$(ls -d "$WORK"/logs/cifar_dlg/version_* | tail -1)
serve "$RUN"
URL="http://127.0.0.1:$PORT/"
shoot docs/tensorboard_overview.png "$URL#custom_scalars" 1400,1250
# "Show actual image size" is not in the URL: tick it over Chromium's DevTools protocol
"$PYTHON" docs/cdp_shot.py "$URL#images" docs/tensorboard_images.png 1780 1500 "Show actual image size"
shoot docs/tensorboard_summary.png "$URL#text" 1400,1000
shoot docs/tensorboard_hparams.png "$URL#hparams" 2000,330
kill "$TB_PID"; wait "$TB_PID" 2>/dev/null || true

serve "$WORK/defense_sweep"
shoot docs/tensorboard_sweep_hparams.png "$URL#hparams" 2000,700
kill "$TB_PID"; wait "$TB_PID" 2>/dev/null || true

shoot docs/report_html.png "file://$RUN/report.html" 1100,1600
shoot docs/sweep_report_html.png "file://$WORK/defense_sweep/report.html" 1100,1600
# keep the PNGs small: 256 colours
"$PYTHON" - <<'PY'
from pathlib import Path
from PIL import Image
for p in sorted(Path("docs").glob("*.png")):
    with Image.open(p) as img:
        img.convert("RGB").quantize(256).save(p, optimize=True)
    print(p, p.stat().st_size // 1024, "KB")
PY
