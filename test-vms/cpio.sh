# Sourced by build.sh and verify.sh: writes uncompressed newc archives
# without root. Needs EPOCH (the mtime of every entry) and LC_ALL=C.

# One newc header (+ name and padding) on stdout. Used for entries that need
# no file on disk: /dev/console (mknod needs root) and the trailer.
newc_entry() { # NAME MODE(octal) RDEVMAJOR RDEVMINOR INO
  local name=$1 mode=$2 maj=$3 min=$4 ino=$5 nlen=$((${#1} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$ino" "$((8#$mode))" 0 0 1 "$EPOCH" 0 0 0 "$maj" "$min" "$nlen" 0
  printf '%s\0' "$name"
  head -c $(((4 - (110 + nlen) % 4) % 4)) /dev/zero
}

# make_cpio DIR OUT: uncompressed newc archive of DIR (owner root, fixed
# mtimes, sorted) followed by a second archive holding /dev/console (5,1).
# The kernel unpacks concatenated archives in order.
make_cpio() {
  local dir=$1 out=$2
  find "$dir" -exec touch -h -d "@$EPOCH" {} +
  {
    (cd "$dir" && find . -mindepth 1 -printf '%P\0' | sort -z |
      cpio --quiet --null -o -H newc --reproducible -R 0:0)
    newc_entry dev/console 020600 5 1 900000
    newc_entry TRAILER!!! 0 0 0 0
  } >"$out.tmp"
  mv "$out.tmp" "$out"
}
