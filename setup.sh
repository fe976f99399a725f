#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine: system packages, then a venv with duetmc.
#   fluidsynth + soundfonts   render the synthetic corpus (duetmc synth / quickstart)
#   slurm + munge             a real local SLURM cluster for the tests (not needed on a real cluster)
#   libsndfile1               audio decoding for soundfile
#   chromium                  the web app's tests drive it headless through Playwright (no browser download)
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    fluidsynth fluid-soundfont-gm timgm6mb-soundfont \
    slurmctld slurmd slurm-client munge libsndfile1 chromium >/dev/null
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
# musicnn ships the pretrained TF1 checkpoints we read; its declared tensorflow dependency is unusable
# and not needed (duetmc has its own reader and PyTorch port), hence --no-deps.
.venv/bin/pip install -q --no-deps 'musicnn==0.1.0'
echo "duetmc installed in $(pwd)/.venv"
