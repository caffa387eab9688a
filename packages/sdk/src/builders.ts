/**
 * Sub-builders of {@link SandboxBuilder}: `.patch(p => ...)`, `.volume(path, m => ...)`
 * and `.imageWith(i => ...)`. They only record what they are given; everything is
 * validated (zod) when the sandbox is created.
 */
import type { RawPatch, RawVolume } from "./config.js";

/** Options of a patch step that writes a file or makes a directory. */
export interface PatchModeOptions {
  /** Permission bits, e.g. `0o755`. */
  mode?: number;
}

/**
 * Changes to the sandbox's root filesystem, applied in order right after the first
 * boot, before `create()` resolves (so before any command of yours runs). They go into
 * the sandbox's own writable layer: the image (and every other sandbox made from it) is
 * untouched. A restarted sandbox keeps them (its writable layer is kept); they are not
 * applied again. Guest paths are absolute; missing parent directories are created.
 */
export class PatchBuilder {
  /** @internal */
  readonly steps: RawPatch[] = [];

  /** Write a text file (UTF-8). Default mode 0o644. */
  text(path: string, content: string, options: PatchModeOptions = {}): this {
    this.steps.push({ kind: "text", path, content, mode: options.mode });
    return this;
  }

  /** Write a file with these bytes. Default mode 0o644. */
  file(path: string, content: Uint8Array, options: PatchModeOptions = {}): this {
    this.steps.push({ kind: "file", path, content, mode: options.mode });
    return this;
  }

  /** Copy a host file into the guest (its mode unless `mode` is given). The host file must exist when `create()` is called. */
  copyFile(hostSrc: string, dst: string, options: PatchModeOptions = {}): this {
    this.steps.push({ kind: "copyFile", path: dst, source: hostSrc, mode: options.mode });
    return this;
  }

  /** Copy a host directory tree into the guest (modes kept, symlinks as symlinks). It must exist when `create()` is called. */
  copyDir(hostSrc: string, dst: string): this {
    this.steps.push({ kind: "copyDir", path: dst, source: hostSrc });
    return this;
  }

  /** Create a symbolic link `link` pointing to `target` (stored as given). */
  symlink(target: string, link: string): this {
    this.steps.push({ kind: "symlink", path: link, target });
    return this;
  }

  /** Create a directory (and its parents). Default mode 0o755. */
  mkdir(path: string, options: PatchModeOptions = {}): this {
    this.steps.push({ kind: "mkdir", path, mode: options.mode });
    return this;
  }

  /** Remove a file, symlink or directory tree; nothing happens when it does not exist. */
  remove(path: string): this {
    this.steps.push({ kind: "remove", path });
    return this;
  }

  /** Append text (UTF-8) or bytes to a file, creating it when missing. */
  append(path: string, content: string | Uint8Array): this {
    this.steps.push({ kind: "append", path, content });
    return this;
  }
}

/**
 * What a volume is: exactly one of {@link bind}, {@link named} or {@link tmpfs},
 * optionally {@link readonly}.
 */
export class MountBuilder {
  /** @internal */
  readonly raw: RawVolume;

  /** @internal Use `builder.volume(guestPath, m => ...)`. */
  constructor(guestPath: unknown) {
    this.raw = { guestPath, kinds: [] };
  }

  /** Share an existing host directory (virtiofs): changes are visible on both sides while the sandbox runs. */
  bind(hostDir: string): this {
    this.raw.kinds.push("bind");
    this.raw.source = hostDir;
    return this;
  }

  /**
   * A named volume, kept under `$MSB_HOME/volumes/<name>` (created on first use): its
   * data outlives the sandbox and can be mounted by other sandboxes.
   */
  named(name: string): this {
    this.raw.kinds.push("named");
    this.raw.source = name;
    return this;
  }

  /** A tmpfs (in the guest's memory), capped at `sizeMiB` when given: writing past the cap fails with ENOSPC. */
  tmpfs(options: { sizeMiB?: number } = {}): this {
    this.raw.kinds.push("tmpfs");
    this.raw.source = undefined;
    this.raw.sizeMiB = options.sizeMiB;
    return this;
  }

  /** Mount read-only: writes in the guest fail with EROFS. */
  readonly(readonly = true): this {
    this.raw.readonly = readonly;
    return this;
  }
}

/** A root filesystem given explicitly: `.imageWith(i => i.disk(path).fstype("ext4"))`. */
export class ImageBuilder {
  /** @internal */
  disk_: unknown;
  /** @internal */
  fstype_: unknown;

  /** A disk image file on the host (raw or qcow2), taken as a path whatever its name looks like. */
  disk(path: string): this {
    this.disk_ = path;
    return this;
  }

  /** The filesystem inside the disk image (e.g. `"ext4"`), for when detection cannot tell. */
  fstype(fstype: string): this {
    this.fstype_ = fstype;
    return this;
  }
}
