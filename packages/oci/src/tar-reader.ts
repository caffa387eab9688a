/**
 * A strict reader of tar archives that come from anywhere (`loadImage`): it reads
 * headers with positional reads from an open file and never writes anything. Names are
 * normalised to archive paths ("a/b/c"); a path that is absolute or has a `..` component
 * is refused, links are kept as aliases inside the archive (a link that leads outside it
 * is refused), every header and entry has a size limit, and an archive that ends before
 * its end-of-archive block is refused as truncated.
 */
import type { FileHandle } from "node:fs/promises";
import { OciError } from "./errors.js";

export interface TarFileEntry {
  /** Normalised archive path. */
  path: string;
  /** Offset of the entry's data in the archive. */
  offset: number;
  size: number;
}

export interface TarLimits {
  /** Most entries (headers of any kind) the archive may have. */
  maxEntries: number;
  /** Largest pax / GNU long-name header. */
  maxHeaderBytes: number;
  /** Largest file entry. */
  maxEntryBytes: number;
  /** Longest path (after pax / GNU long names). */
  maxPathBytes: number;
}

export const TAR_LIMITS: TarLimits = {
  maxEntries: 100_000,
  maxHeaderBytes: 1 << 20,
  maxEntryBytes: 10 * 1024 ** 3,
  maxPathBytes: 4096,
};

const BLOCK = 512;
const MAX_LINK_HOPS = 40;

export class TarIndex {
  readonly files = new Map<string, TarFileEntry>();
  /** archive path -> archive path it is a link to (resolved relative to the root). */
  readonly links = new Map<string, string>();

  /** The file an archive path names, following links inside the archive. */
  resolve(path: string): TarFileEntry | undefined {
    let p = normalizeRelative(path);
    if (p === undefined) return undefined;
    for (let i = 0; i <= MAX_LINK_HOPS; i++) {
      const f = this.files.get(p);
      if (f) return f;
      const next = this.links.get(p);
      if (next === undefined) return undefined;
      p = next;
    }
    return undefined;
  }
}

function fail(archive: string, why: string): OciError {
  return new OciError("image", `image archive ${archive}: ${why}; nothing was loaded`);
}

/** "./a//b/" -> "a/b"; undefined for an absolute path or one with a ".." component. */
function normalizeRelative(name: string): string | undefined {
  if (name.startsWith("/")) return undefined;
  const comps = name.split("/").filter((c) => c !== "" && c !== ".");
  if (comps.some((c) => c === ".." || c.includes("\0"))) return undefined;
  return comps.join("/");
}

/** A link target, ".." resolved lexically; undefined when it climbs above the root. */
function resolveLexical(path: string): string | undefined {
  const out: string[] = [];
  for (const c of path.split("/")) {
    if (c === "" || c === ".") continue;
    if (c.includes("\0")) return undefined;
    if (c === "..") {
      if (out.length === 0) return undefined;
      out.pop();
    } else out.push(c);
  }
  return out.join("/");
}

function cstr(b: Buffer, start: number, len: number): string {
  const s = b.subarray(start, start + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString("utf8");
}

/** A numeric field: octal text, or GNU base-256 (high bit set). */
function num(b: Buffer, start: number, len: number, what: string, archive: string): number {
  const f = b.subarray(start, start + len);
  if (f[0]! & 0x80) {
    if (f[0] === 0xff) throw fail(archive, `a header has a negative ${what}`);
    let v = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) {
      v = v * 256 + f[i]!;
      if (v > Number.MAX_SAFE_INTEGER) throw fail(archive, `a header's ${what} is too large`);
    }
    return v;
  }
  const t = f.toString("latin1").replace(/\0.*$/s, "").trim();
  if (t === "") return 0;
  if (!/^[0-7]+$/.test(t)) throw fail(archive, `a header's ${what} is not a number`);
  const v = parseInt(t, 8);
  if (!Number.isSafeInteger(v)) throw fail(archive, `a header's ${what} is too large`);
  return v;
}

function checksumOk(b: Buffer, archive: string): boolean {
  const want = num(b, 148, 8, "checksum", archive);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
  return sum === want;
}

/** pax records: "<len> key=value\n" ... */
function parsePax(data: Buffer, archive: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) break;
    const len = Number(data.subarray(i, sp).toString("latin1"));
    if (!Number.isInteger(len) || len <= sp - i + 1 || i + len > data.length) throw fail(archive, "a pax header is malformed");
    const rec = data.subarray(sp + 1, i + len - 1).toString("utf8");
    const eq = rec.indexOf("=");
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

/**
 * Read every header of the archive: regular files (with their data offset) and links.
 * Directories are skipped; devices, fifos and unknown types are refused.
 */
export async function indexTar(fh: FileHandle, fileSize: number, archive: string, limits: TarLimits = TAR_LIMITS): Promise<TarIndex> {
  const index = new TarIndex();
  const hdr = Buffer.alloc(BLOCK);
  let pos = 0;
  let count = 0;
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax: Map<string, string> | undefined;

  const readAt = async (buf: Buffer, len: number, at: number): Promise<void> => {
    if (at + len > fileSize) throw fail(archive, "it is truncated (an entry runs past its end)");
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh.read(buf, done, len - done, at + done);
      if (bytesRead === 0) throw fail(archive, "it is truncated (an entry runs past its end)");
      done += bytesRead;
    }
  };
  const readMeta = async (size: number, at: number, what: string): Promise<Buffer> => {
    if (size > limits.maxHeaderBytes) throw fail(archive, `a ${what} header of ${size} bytes is larger than the limit of ${limits.maxHeaderBytes}`);
    const b = Buffer.alloc(size);
    await readAt(b, size, at);
    return b;
  };

  for (;;) {
    if (pos + BLOCK > fileSize) throw fail(archive, "it is truncated (no end-of-archive marker)");
    await readAt(hdr, BLOCK, pos);
    if (hdr.every((x) => x === 0)) break; // end of archive
    if (++count > limits.maxEntries) throw fail(archive, `it has more than ${limits.maxEntries} entries`);
    if (!checksumOk(hdr, archive)) throw fail(archive, `the header at offset ${pos} is corrupt (checksum mismatch); is it a tar archive?`);
    const type = String.fromCharCode(hdr[156]!);
    let size = num(hdr, 124, 12, "size", archive);
    const dataAt = pos + BLOCK;
    if (type === "x" || type === "g" || type === "L" || type === "K") {
      const data = await readMeta(size, dataAt, type === "L" || type === "K" ? "GNU long name" : "pax");
      if (type === "x") pax = parsePax(data, archive);
      else if (type === "L") longName = cstr(data, 0, data.length);
      else if (type === "K") longLink = cstr(data, 0, data.length);
      // a global pax header ("g") carries nothing we use
      pos = dataAt + Math.ceil(size / BLOCK) * BLOCK;
      continue;
    }
    const ustar = hdr.subarray(257, 262).toString("latin1") === "ustar";
    const prefix = ustar ? cstr(hdr, 345, 155) : "";
    let name = longName ?? pax?.get("path") ?? (prefix ? `${prefix}/${cstr(hdr, 0, 100)}` : cstr(hdr, 0, 100));
    const linkname = longLink ?? pax?.get("linkpath") ?? cstr(hdr, 157, 100);
    const paxSize = pax?.get("size");
    if (paxSize !== undefined) {
      if (!/^[0-9]+$/.test(paxSize) || !Number.isSafeInteger(Number(paxSize))) throw fail(archive, `entry "${name}" has a bad pax size`);
      size = Number(paxSize);
    }
    longName = longLink = pax = undefined;
    if (Buffer.byteLength(name) > limits.maxPathBytes) throw fail(archive, `an entry name is longer than ${limits.maxPathBytes} bytes`);
    const path = normalizeRelative(name);
    if (path === undefined) throw fail(archive, `entry "${name}" escapes the archive (absolute path or a ".." component)`);
    name = path;
    if (type === "0" || type === "\0" || type === "7") {
      if (size > limits.maxEntryBytes) throw fail(archive, `entry "${name}" (${size} bytes) is larger than the limit of ${limits.maxEntryBytes} bytes`);
      if (dataAt + size > fileSize) throw fail(archive, `it is truncated (entry "${name}" runs past its end)`);
      index.links.delete(name);
      index.files.set(name, { path: name, offset: dataAt, size });
      pos = dataAt + Math.ceil(size / BLOCK) * BLOCK;
    } else if (type === "5") {
      pos = dataAt; // directories carry no data
    } else if (type === "1" || type === "2") {
      // a hardlink names an archive path; a symlink is relative to its own directory
      const base = type === "2" ? name.split("/").slice(0, -1).join("/") : "";
      const target = linkname.startsWith("/") ? undefined : resolveLexical(base ? `${base}/${linkname}` : linkname);
      if (target === undefined || target === "") throw fail(archive, `entry "${name}" is a link to "${linkname}", outside the archive`);
      index.files.delete(name);
      index.links.set(name, target);
      pos = dataAt;
    } else {
      throw fail(archive, `entry "${name}" has type "${type.replace(/\0/g, "\\0")}" (devices, fifos and other special files are not allowed in an image archive)`);
    }
  }
  return index;
}
