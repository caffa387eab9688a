"use strict";
// Entry point: the napi-rs generated loader plus where the runtime binary and the guest
// assets live. Each path can be overridden with an environment variable.
const path = require("node:path");
const native = require("./index.js");

function assetPaths() {
  const guest = process.env.MSB_GUEST_DIR || path.join(__dirname, "guest");
  return {
    runtime: process.env.MSB_RUNTIME || path.join(__dirname, "bin", "msb-runtime"),
    kernel: process.env.MSB_KERNEL || path.join(guest, "vmlinux"),
    initramfs: process.env.MSB_INITRAMFS || path.join(guest, "initramfs.cpio"),
    defaultImage: process.env.MSB_DEFAULT_IMAGE || path.join(guest, "rootfs.ext4"),
    floorInitramfs: path.join(guest, "floor.cpio"),
  };
}

module.exports = { ...native, assetPaths };
