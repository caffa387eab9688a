#!/usr/bin/env bash
# Boots the built guest assets under QEMU and checks them:
#   1. floor.cpio reaches /init and QEMU exits (reboot + -no-reboot); prints wall time.
#   2. a throwaway busybox initramfs (build/check.cpio) loads every module in
#      /etc/msb/modules, finds the virtio port "agent" and the disks by serial,
#      mounts the default image read-only and an overlay on top of it.
#
# Usage: test-vms/verify.sh [OUT_DIR] [RUNS]   (run build.sh first)
# Env:   MSB_MACHINE  QEMU machine (default: microvm)
#        MSB_ACCEL    tcg (default) or kvm
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin # mke2fs

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(cd "${1:-$HERE/../packages/guest-linux-x64}" && pwd)
RUNS=${2:-3}
WORK=$HERE/build
MACHINE=${MSB_MACHINE:-microvm}
# TCG by default: on these build machines /dev/kvm exists but KVM guests do not
# run (QEMU aborts setting MSR 0x10a, or the guest hangs silently).
MSB_ACCEL=${MSB_ACCEL:-tcg}
CPU=max
[[ $MSB_ACCEL != kvm ]] || CPU=host

die() { printf 'verify.sh: error: %s\n' "$*" >&2; exit 1; }
for f in vmlinux floor.cpio rootfs.ext4; do [[ -f $OUT/$f ]] || die "missing $OUT/$f (run build.sh)"; done
[[ -d $WORK/initramfs-root/lib/modules ]] || die "missing $WORK/initramfs-root (run build.sh with the agent built)"
[[ -x $WORK/busybox-pkg/bin/busybox ]] || die "missing $WORK/busybox-pkg (run build.sh)"
if ! command -v qemu-system-x86_64 >/dev/null; then # fresh CI machine
  [[ $(id -u) == 0 ]] || die "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends qemu-system-x86 ||
    { apt-get update -qq && apt-get install -y --no-install-recommends qemu-system-x86; }
fi

# microvm has no reference clock under TCG: hand the kernel the host TSC rate.
KHZ=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
APPEND="console=ttyS0 quiet tsc_early_khz=$KHZ tsc=reliable lpj=$((KHZ * 4)) no_timer_check i8042.noaux mitigations=off cryptomgr.notests random.trust_cpu=on audit=0 apparmor=0 security=none 8250.nr_uarts=1 nokaslr pci=off reboot=t panic=-1"
QEMU=(qemu-system-x86_64 -M "$MACHINE" -accel "$MSB_ACCEL" -cpu "$CPU" -m 512 -smp 1 -nodefaults
  -no-user-config -display none -no-reboot -serial stdio -kernel "$OUT/vmlinux")

echo "== kernel $(cat "$OUT/kernel-version" 2>/dev/null), machine $MACHINE, accel $MSB_ACCEL, tsc $KHZ kHz"
echo "   -append \"$APPEND\""

# ---- 1. floor
echo "== floor.cpio ($RUNS runs)"
for i in $(seq "$RUNS"); do
  t0=$(date +%s%N)
  log=$(timeout 120 "${QEMU[@]}" -initrd "$OUT/floor.cpio" -append "$APPEND" 2>&1) || die "floor run $i: QEMU failed or timed out: $log"
  t1=$(date +%s%N)
  grep -q 'floor: init reached' <<<"$log" || die "floor run $i: no 'floor: init reached' line. Output: $log"
  printf '   run %d: QEMU start to exit %d ms\n' "$i" $(((t1 - t0) / 1000000))
done

# ---- 2. module / device check with a throwaway busybox initramfs
C=$WORK/check-root
rm -rf "$C"
mkdir -p "$C"/{bin,dev,proc,sys,mnt,newroot,tmp,upper,etc/msb,lib}
cp -a "$WORK/initramfs-root/lib/modules" "$C/lib/"
cp "$WORK/initramfs-root/etc/msb/modules" "$C/etc/msb/modules"
cp "$WORK/busybox-pkg/bin/busybox" "$C/bin/busybox"
cat >"$C/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "check: init reached at uptime $(cut -d' ' -f1 /proc/uptime) s"
fail=0
while read -r m; do
  if insmod "$m" 2>/tmp/err; then echo "check: insmod $m ok"; else echo "check: insmod $m FAILED: $(cat /tmp/err)"; fail=1; fi
done </etc/msb/modules
echo "check: modules done at uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "check: virtio-ports: $(ls /sys/class/virtio-ports | tr '\n' ' ')"
for p in /sys/class/virtio-ports/*; do echo "check: port $(basename $p) name=$(cat $p/name) dev=$(cat $p/dev)"; done
echo "check: block: $(ls /sys/block | tr '\n' ' ')"
lower= upper=
for b in /sys/block/vd*; do
  s=$(cat $b/serial); echo "check: disk $(basename $b) serial=$s ro=$(cat $b/ro) size=$(cat $b/size)"
  [ "$s" = lower ] && lower=/dev/$(basename $b)
  [ "$s" = upper ] && upper=/dev/$(basename $b)
done
echo "check: net: $(ls /sys/class/net | tr '\n' ' ')"
mount -t ext4 -o ro "$lower" /mnt && echo "check: lower mounted ro: $(ls /mnt | tr '\n' ' ')" || fail=1
mount -t ext4 "$upper" /upper && mkdir -p /upper/data /upper/work && echo "check: upper mounted rw" || fail=1
if mount -t overlay overlay -o lowerdir=/mnt,upperdir=/upper/data,workdir=/upper/work /newroot; then
  echo hello >/newroot/etc/overlay-test
  echo "check: overlay ok: $(cat /newroot/etc/overlay-test), upper has $(ls /upper/data/etc)"
  echo "check: chroot: $(chroot /newroot /bin/sh -c 'id; cat /etc/hostname')"
else fail=1; fi
dmesg | grep -iE 'error|fail|taint|warn' | sed 's/^/check: dmesg: /'
echo "check: result fail=$fail at uptime $(cut -d' ' -f1 /proc/uptime) s"
sync
reboot -f
EOF
chmod 0755 "$C/init"
( export LC_ALL=C; EPOCH=1704067200; source "$HERE/cpio.sh"; make_cpio "$C" "$WORK/check.cpio" )
rm -f "$WORK/check-upper.ext4"
truncate -s 64M "$WORK/check-upper.ext4"
mke2fs -q -t ext4 "$WORK/check-upper.ext4"

echo "== check.cpio (modules, devices, mounts)"
SOCKDIR=$(mktemp -d) # short path: Unix socket paths are limited to 108 bytes
SOCK=$SOCKDIR/agent.sock
t0=$(date +%s%N)
log=$(timeout 180 "${QEMU[@]}" -initrd "$WORK/check.cpio" -append "$APPEND" \
  -device virtio-serial-device \
  -chardev "socket,id=agent,path=$SOCK,server=on,wait=off" \
  -device virtserialport,chardev=agent,name=agent \
  -drive "id=lower,file=$OUT/rootfs.ext4,format=raw,if=none,readonly=on" \
  -device virtio-blk-device,drive=lower,serial=lower \
  -drive "id=upper,file=$WORK/check-upper.ext4,format=raw,if=none" \
  -device virtio-blk-device,drive=upper,serial=upper \
  -netdev user,id=n0 -device virtio-net-device,netdev=n0 2>&1) || die "check: QEMU failed or timed out: $log"
t1=$(date +%s%N)
rm -rf "$SOCKDIR"
tr -d '\r' <<<"$log" | grep -v '^$'
printf '   QEMU start to exit %d ms\n' $(((t1 - t0) / 1000000))
grep -q 'check: result fail=0' <<<"$log" || die "check failed"
grep -q 'name=agent' <<<"$log" || die "no virtio port named agent"
grep -q 'serial=lower' <<<"$log" || die "no disk with serial lower"
echo "== all checks passed"
