#!/usr/bin/env bash
# check_disk.sh DIR GIB: exit 1 with a message naming DIR when its filesystem has less
# than GIB GiB free. The Makefile runs it before a fresh .venv is installed (about 5.7 GB
# on disk, plus pip's unpacking), so a full disk fails up front with the reason and the
# figures, not halfway through pip with "[Errno 28] No space left on device".
set -eu
dir=$1 need=$2
free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
free_gib=$(awk -v k="$free_kib" 'BEGIN {printf "%.1f", k / 1048576}')
if awk -v k="$free_kib" -v n="$need" 'BEGIN {exit !(k < n * 1048576)}'; then
  echo "error: installing .venv needs about $need GiB free on the filesystem of $(cd "$dir" && pwd);" \
       "it has $free_gib GiB. Free some space (an old .venv or clone) and run make again." >&2
  exit 1
fi
echo "disk: $free_gib GiB free on the filesystem of $(cd "$dir" && pwd)"
