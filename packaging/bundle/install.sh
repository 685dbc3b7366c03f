#!/bin/sh
# Put ilastik-desktop into your applications menu and on your PATH, without root:
# a launcher in ~/.local/share/applications, the icon, and links in ~/.local/bin.
set -eu
here=$(dirname "$(readlink -f "$0")")
data=${XDG_DATA_HOME:-$HOME/.local/share}
bin=$HOME/.local/bin
mkdir -p "$data/applications" "$data/icons/hicolor/scalable/apps" "$bin"
cp "$here/icon.svg" "$data/icons/hicolor/scalable/apps/ilastik-desktop.svg"
sed "s|^Exec=.*|Exec=\"$here/ilastik-desktop/ilastik-desktop\" %f|" "$here/ilastik-desktop.desktop" \
    > "$data/applications/ilastik-desktop.desktop"
ln -sf "$here/ilastik-desktop/ilastik-desktop" "$bin/ilastik-desktop"
ln -sf "$here/ilastik-worker" "$bin/ilastik-worker"
echo "installed: menu entry in $data/applications, commands ilastik-desktop and ilastik-worker in $bin"
case ":$PATH:" in *":$bin:"*) ;; *) echo "add $bin to your PATH to run them from a terminal";; esac
