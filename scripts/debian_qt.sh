#!/usr/bin/env bash
# Debian packages for napari's headless tests (called by `make test`, also usable alone).
set -euo pipefail
# tests/test_napari.py runs napari headless under Xvfb (pytest-xvfb): the X server, the
# libraries of Qt's xcb platform plugin, GL/EGL with Mesa's software driver and a font.
# Install the ones missing (Debian names), non-interactively; nothing to do when all are
# present. Without apt-get (not Debian) it says what to install and stops.
QT_DEBS=(
    xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libfreetype6
    libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1 libxcb1 libxcb-glx0
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render0
    libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1
    libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 fonts-dejavu-core
)
missing=()
for deb in "${QT_DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$deb")
done
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "headless Qt for the napari tests needs: ${missing[*]} (Debian names)" >&2
        exit 1
    fi
    echo "installing Debian packages for headless Qt: ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

