#!/usr/bin/env python3
"""Helpers for build-images.sh: layer tarballs and OCI layout edits umoci cannot do.

Layers are written by hand (tarfile) rather than by `umoci repack` because they need
entries umoci will not produce from a directory, or not as a non-root user: device
nodes, setuid files and 1000:1000 ownership (any user can write these into a tar),
an opaque-directory marker, and the malicious entries of the evil:* images. Every
entry has a fixed mtime and numeric owner only, so the tars (and therefore digests)
are the same on every build.

Subcommands (see build-images.sh for the calls):
  layer KIND OUT.tar [BUSYBOX APPLETS]  write one uncompressed layer tar
  recompress LAYOUT SRC DST zstd|plain  copy tag SRC as DST with its layers re-encoded
  index LAYOUT DST TAG[/VARIANT]...     make DST an OCI image index of those tags
                                        (the source tags are removed from index.json)
  facts OUT.json OCI_DIR BUSYBOX_AMD64 BUSYBOX_ARM64   digests the tests can assert on
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

MTIME = 1704067200  # 2024-01-01T00:00:00Z, same as test-vms/build.sh

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "plain": "application/vnd.oci.image.layer.v1.tar",
}
REF = "org.opencontainers.image.ref.name"


# ---------------------------------------------------------------- tar writing
class Layer:
    """A tar being built; every helper takes the path without a leading slash."""

    def __init__(self, out):
        self.tar = tarfile.open(out, "w", format=tarfile.PAX_FORMAT)

    def _add(self, name, kind, mode, uid=0, gid=0, data=None, **extra):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""  # numeric ownership only
        ti.mtime = MTIME
        for k, v in extra.items():
            setattr(ti, k, v)
        if data is not None:
            ti.size = len(data)
            self.tar.addfile(ti, io.BytesIO(data))
        else:
            self.tar.addfile(ti)

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self._add(name.rstrip("/") + "/", tarfile.DIRTYPE, mode, uid, gid)

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        self._add(name, tarfile.REGTYPE, mode, uid, gid, data)

    def symlink(self, name, target):
        self._add(name, tarfile.SYMTYPE, 0o777, linkname=target)

    def hardlink(self, name, target):
        self._add(name, tarfile.LNKTYPE, 0o644, linkname=target)

    def chardev(self, name, major, minor, mode=0o666):
        self._add(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor)

    def close(self):
        self.tar.close()


PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000::/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


def layer_base(t, busybox, applets):
    """busybox layer 1: /bin/busybox, one absolute symlink per applet, users, /tmp."""
    with open(busybox, "rb") as f:
        bb = f.read()
    with open(applets) as f:
        links = sorted({l.strip() for l in f if l.strip() and l.strip() != "bin/busybox"} | {"bin/sh"})
    dirs = {"bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "usr/bin",
            "usr/sbin", "sbin", "var", "var/tmp"}
    dirs |= {os.path.dirname(p) for p in links} - {""}
    for p in links:  # applets at the top level (linuxrc)
        if os.path.dirname(p) == "":
            t.symlink(p, "/bin/busybox")
    for d in sorted(dirs):
        mode = {"root": 0o700, "tmp": 0o1777, "var/tmp": 0o1777}.get(d, 0o755)
        t.dir(d, mode)
        if d == "bin":
            t.file("bin/busybox", bb, 0o755)
        if d == "etc":
            t.file("etc/passwd", PASSWD)
            t.file("etc/group", GROUP)
            t.file("etc/image-marker", "busybox-fixture\n")
        if d == "home":
            t.dir("home/app", 0o755, 1000, 1000)
        for p in links:
            if os.path.dirname(p) == d:
                t.symlink(p, "/bin/busybox")


def layer_data(t):
    """busybox layer 2: files that layer 3 removes or hides, links, setuid, devices."""
    t.dir("dev")
    # /dev in the guest is a devtmpfs that hides the image's /dev: opt/dev/msbnull is the
    # same node where a test inside the VM can see it.
    t.chardev("dev/msbnull", 1, 3)
    t.dir("opt")
    t.dir("opt/data")
    t.file("opt/data/keep.txt", "keep\n")
    t.file("opt/data/gone.txt", "gone\n")
    t.file("opt/data/replaced.txt", "v1\n")
    t.file("opt/data/app-owned.txt", "app\n", 0o600, 1000, 1000)
    t.hardlink("opt/data/hard.txt", "opt/data/keep.txt")
    t.symlink("opt/data/link", "keep.txt")
    t.dir("opt/dev")
    t.chardev("opt/dev/msbnull", 1, 3)
    t.dir("opt/opaque")
    t.file("opt/opaque/old.txt", "old\n")
    t.dir("opt/opaque/sub")
    t.file("opt/opaque/sub/old2.txt", "old2\n")
    t.dir("usr")
    t.dir("usr/bin")
    t.file("usr/bin/suid-file", "#!/bin/sh\necho suid-file\n", 0o4755)


def layer_whiteouts(t):
    """busybox layer 3: whiteout, opaque directory, a replaced file."""
    t.dir("opt")
    t.dir("opt/data")
    t.file("opt/data/.wh.gone.txt", b"")
    t.file("opt/data/replaced.txt", "v2\n")
    t.dir("opt/opaque")
    # new.txt comes BEFORE the opaque marker on purpose: the marker hides only what the
    # lower layers put in the directory, never entries of its own layer, whatever the order.
    t.file("opt/opaque/new.txt", "new\n")
    t.file("opt/opaque/.wh..wh..opq", b"")


def layer_evil(t, kind):
    t.file("safe.txt", "a harmless entry before the bad one\n")
    if kind == "dotdot":
        t.file("../escape.txt", "escaped\n")
    elif kind == "dotdot-nested":
        t.dir("opt")
        t.file("opt/../../escape-nested.txt", "escaped\n")
    elif kind == "abs":
        t.file("/../../abs-escape.txt", "escaped\n")
    elif kind == "symlink":
        # A symlink that points above the root, then a file written through it.
        t.dir("opt")
        t.symlink("opt/esc", "../../../..")
        t.file("opt/esc/pwned.txt", "pwned\n")
    elif kind == "symlink-abs-1":
        # Two-layer variant: absolute target here, the write in the next layer.
        t.dir("opt")
        t.symlink("opt/esc2", "/tmp/..//..")
    elif kind == "symlink-abs-2":
        t.dir("opt")
        t.file("opt/esc2/pwned-abs.txt", "pwned\n")
    elif kind == "hardlink":
        # A hard link whose target lies outside the root.
        t.hardlink("hl-passwd", "../../../../../../../../etc/passwd")
    elif kind == "corrupt":
        # Unique content (no other fixture shares this blob) and stored uncompressed, so
        # corrupting bytes inside data.txt leaves a parseable tar: only the digest check
        # can catch it.
        t.dir("corrupt")
        t.file("corrupt/data.txt", "corrupt-fixture 0123456789abcdef\n" * 128)
    else:
        sys.exit(f"unknown evil layer {kind}")


def cmd_layer(args):
    kind, out = args[0], args[1]
    t = Layer(out)
    if kind == "base":
        layer_base(t, args[2], args[3])
    elif kind == "data":
        layer_data(t)
    elif kind == "whiteouts":
        layer_whiteouts(t)
    elif kind.startswith("evil-"):
        layer_evil(t, kind[5:])
    else:
        sys.exit(f"unknown layer kind {kind}")
    t.close()


# ---------------------------------------------------------------- OCI layout edits
def blob_path(layout, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def read_blob(layout, digest):
    with open(blob_path(layout, digest), "rb") as f:
        return f.read()


def write_blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob_path(layout, digest)
    if not os.path.exists(p):
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        os.rename(p + ".tmp", p)
    return digest, len(data)


def load_index(layout):
    with open(os.path.join(layout, "index.json")) as f:
        return json.load(f)


def save_index(layout, idx):
    p = os.path.join(layout, "index.json")
    with open(p + ".tmp", "w") as f:
        json.dump(idx, f, separators=(",", ":"))
    os.rename(p + ".tmp", p)


def find_ref(idx, tag):
    for d in idx["manifests"]:
        if d.get("annotations", {}).get(REF) == tag:
            return d
    sys.exit(f"tag {tag} not in index.json")


def set_ref(layout, tag, media_type, digest, size, drop=()):
    idx = load_index(layout)
    idx["manifests"] = [d for d in idx["manifests"]
                        if d.get("annotations", {}).get(REF) not in (tag, *drop)]
    idx["manifests"].append({"mediaType": media_type, "digest": digest, "size": size,
                             "annotations": {REF: tag}})
    save_index(layout, idx)


def dump(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def cmd_recompress(args):
    """Same image (same config, so the same diff_ids) with zstd or uncompressed layers."""
    layout, src, dst, mode = args
    m = json.loads(read_blob(layout, find_ref(load_index(layout), src)["digest"]))
    layers = []
    for l in m["layers"]:
        raw = read_blob(layout, l["digest"])
        if l["mediaType"].endswith("+gzip"):
            raw = gzip.decompress(raw)
        if mode == "zstd":
            # zstd frames with the content checksum (the zstd CLI default), level 19.
            data = subprocess.run(["zstd", "-q", "-19", "-c"], input=raw, check=True,
                                  stdout=subprocess.PIPE).stdout
        else:
            data = raw
        digest, size = write_blob(layout, data)
        layers.append({"mediaType": LAYER_TYPES[mode], "digest": digest, "size": size})
    out = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": m["config"], "layers": layers}
    digest, size = write_blob(layout, dump(out))
    set_ref(layout, dst, OCI_MANIFEST, digest, size)


def cmd_index(args):
    layout, dst, srcs = args[0], args[1], args[2:]
    idx = load_index(layout)
    entries, tags = [], []
    for s in srcs:
        tag, _, variant = s.partition("/")
        tags.append(tag)
        ref = find_ref(idx, tag)
        m = json.loads(read_blob(layout, ref["digest"]))
        cfg = json.loads(read_blob(layout, m["config"]["digest"]))
        platform = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if variant:
            platform["variant"] = variant
        entries.append({"mediaType": OCI_MANIFEST, "digest": ref["digest"],
                        "size": ref["size"], "platform": platform})
    digest, size = write_blob(layout, dump({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": entries}))
    set_ref(layout, dst, OCI_INDEX, digest, size, drop=tags)


def cmd_facts(args):
    """Writes what the puller tests can compare with (all also computable at test time)."""
    out, oci, bb_amd64, bb_arm64 = args

    def sha_file(p):
        with open(p, "rb") as f:
            return "sha256:" + hashlib.sha256(f.read()).hexdigest()

    facts = {"busyboxSha256": {"amd64": sha_file(bb_amd64), "arm64": sha_file(bb_arm64)},
             "images": {}}
    for repo in sorted(os.listdir(oci)):
        layout = os.path.join(oci, repo)
        if not os.path.exists(os.path.join(layout, "index.json")):
            continue
        for ref in load_index(layout)["manifests"]:
            tag = ref["annotations"][REF]
            info = {"layout": layout, "mediaType": ref["mediaType"], "digest": ref["digest"],
                    "size": ref["size"]}
            doc = json.loads(read_blob(layout, ref["digest"]))
            if ref["mediaType"] == OCI_INDEX:
                info["manifests"] = [{"digest": d["digest"], "platform": d["platform"]}
                                     for d in doc["manifests"]]
            else:
                info["config"] = doc["config"]["digest"]
                info["layers"] = [{"digest": l["digest"], "size": l["size"],
                                   "mediaType": l["mediaType"]} for l in doc["layers"]]
                cfg = json.loads(read_blob(layout, doc["config"]["digest"]))
                info["diffIds"] = cfg["rootfs"]["diff_ids"]
            facts["images"][f"{repo}:{tag}"] = info
    with open(out + ".tmp", "w") as f:
        json.dump(facts, f, indent=2)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    cmds = {"layer": cmd_layer, "recompress": cmd_recompress, "index": cmd_index,
            "facts": cmd_facts}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])
