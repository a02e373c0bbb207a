# Shared by the benchmarks that start their own daemon: sourced, not run.

# import_busybox REF: a busybox rootfs built from the host's busybox-static, imported as REF
# (no registry and no internet needed). Uses $WORK and $DCPP of the sourcing script.
import_busybox() {
  local rootfs="$WORK/rootfs"
  mkdir -p "$rootfs"/{bin,etc,tmp}
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do [[ "$a" == busybox ]] || ln -s busybox "$rootfs/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  "$DCPP" image import "$rootfs" "$1" >/dev/null
}
