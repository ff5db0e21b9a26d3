#!/usr/bin/env bash
# check_disk.sh DIR GIB: exit 1 with a message naming DIR when its filesystem has less
# than GIB GiB free. The Makefile runs it before a fresh .venv is installed, so a full
# disk fails up front with the reason and the figures, not halfway through pip with
# "[Errno 28] No space left on device". Measured with df every 2 s over a fresh-clone CI
# run: the install peaks at its final 5.7 GiB, and the test suite writes up to 1.1 GiB
# more (temporary files); the Makefile asks for 7.
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
