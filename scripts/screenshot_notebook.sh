#!/usr/bin/env bash
# Screenshot a notebook as JupyterLab renders it (headless Chromium), to check what a reader sees:
#   scripts/screenshot_notebook.sh executed/02_train_masks/crepe_pitch_kwyn_50.ipynb /tmp/train.png [height]
# Starts a throwaway JupyterLab (no token, random free port, a fresh workspace) on the notebook's folder,
# loads the notebook (single-document mode) in a window `height` pixels tall (default 6000: tall enough for every cell to render,
# JupyterLab draws only the cells in view), saves the PNG, stops the server. Needs `jupyter` on PATH (the
# project's venv) and Debian's chromium (apt-get install chromium).
set -euo pipefail
notebook=$(realpath "$1"); png=$(realpath -m "$2"); height=${3:-6000}
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
profile=$(mktemp -d); log=$(mktemp)
mkdir -p "$profile/settings/@jupyterlab/apputils-extension"  # no "get notified about Jupyter news?" pop-up
echo '{"fetchNews": "false"}' >"$profile/settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
jupyter lab --no-browser --allow-root --port "$port" --ServerApp.token='' --ServerApp.password='' \
  --ServerApp.root_dir="$(dirname "$notebook")" --LabApp.workspaces_dir="$profile" \
  --LabApp.user_settings_dir="$profile/settings" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$profile" "$log"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/api" >/dev/null && break; sleep 1; done
name=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$(basename "$notebook")")
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile/chromium" \
  --window-size=1400,"$height" --virtual-time-budget=20000 --screenshot="$png" \
  "http://127.0.0.1:$port/doc/tree/$name?reset" 2>/dev/null
echo "$png"
