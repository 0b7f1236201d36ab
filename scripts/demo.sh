#!/usr/bin/env bash
# The quick start: a loop device over a sparse file, ext4 on it, a file written and read back,
# `ublk list`, and everything torn down. Runs as root on a kernel with ublk (`npm start` picks
# the host or the test VM).
set -euo pipefail
cd "$(dirname "$0")/.."
UBLK="node dist/bundle/cli/main.js"
work=$(mktemp -d)
dev=""
cleanup() {
  set +e
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  [ -n "$dev" ] && $UBLK del -n "$dev"
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "create a 256 MiB sparse file"
truncate -s 256M "$work/disk.img"
step "ublk add -t loop -f $work/disk.img"
out=$($UBLK add -t loop -f "$work/disk.img")
echo "$out"
dev=$(echo "$out" | sed -n 's/^dev id \([0-9]*\):.*/\1/p')
step "mkfs.ext4 /dev/ublkb$dev"
mkfs.ext4 -q "/dev/ublkb$dev"
step "mount it, write a file, read it back"
mkdir "$work/mnt"
mount "/dev/ublkb$dev" "$work/mnt"
head -c 16M /dev/urandom > "$work/data"
cp "$work/data" "$work/mnt/data"
sync
cmp "$work/data" "$work/mnt/data" && echo "16 MiB written and read back: identical"
step "ublk list"
$UBLK list
step "tear down: umount, ublk del -n $dev"
umount "$work/mnt"
$UBLK del -n "$dev"
dev=""
echo "done"
