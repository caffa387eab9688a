/** `msb volume create|ls|inspect|rm` (and `msb volumes`, short for `msb volume ls`). */
import { InvalidArgumentError, type Command } from "commander";
import { Volume, type VolumeHandle } from "@microsandbox/sdk";
import { ago, table } from "./images.js";
import { formatBytes } from "./progress.js";
import { describeError } from "./run.js";

/** A parsed `msb volume ...` command. */
export type VolumeCli =
  | {
      kind: "volumeCreate";
      name: string;
      volumeKind: "dir" | "disk";
      sizeMiB?: number;
      quotaMiB?: number;
      diskFormat?: "raw" | "qcow2";
      labels: [string, string][];
      quiet: boolean;
    }
  | { kind: "volumeLs"; json: boolean; quiet: boolean }
  | { kind: "volumeInspect"; name: string }
  | { kind: "volumeRm"; names: string[]; quiet: boolean };

export interface VolumesIO {
  out(text: string): void;
  err(text: string): void;
  /** Report errors as JSON objects (`--json`). */
  json?: boolean;
}

const UNITS: Record<string, number> = { "": 1, m: 1, mb: 1, mib: 1, g: 1024, gb: 1024, gib: 1024, t: 1024 * 1024, tb: 1024 * 1024, tib: 1024 * 1024 };

/** `100M`, `1G`, `10GiB`, `512` (MiB) -> MiB. */
export function parseSizeMiB(field: string) {
  return (value: string): number => {
    const m = /^([0-9]+)\s*([a-zA-Z]*)$/.exec(value.trim());
    const unit = m ? UNITS[(m[2] as string).toLowerCase()] : undefined;
    const n = m && unit !== undefined ? Number(m[1]) * unit : NaN;
    if (!Number.isSafeInteger(n) || n < 1) {
      throw new InvalidArgumentError(`${field} must be a size such as 512M, 10G or a number of MiB (got ${JSON.stringify(value)}).`);
    }
    return n;
  };
}

export function labelPair(value: string, previous: [string, string][] | undefined): [string, string][] {
  const eq = value.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError(`label must be KEY=VALUE with a non-empty KEY (got ${JSON.stringify(value)}).`);
  return [...(previous ?? []), [value.slice(0, eq), value.slice(eq + 1)]];
}

function oneOf<T extends string>(field: string, values: readonly T[]) {
  return (value: string): T => {
    if (!(values as readonly string[]).includes(value)) throw new InvalidArgumentError(`${field} must be ${values.join(" or ")} (got ${JSON.stringify(value)}).`);
    return value as T;
  };
}

export const JSON_ERRORS = ["--json", 'report errors as one JSON object on stderr: {"error":{"code","message"}}'] as const;

/** Add `volume` (with its subcommands) and `volumes` to `program`; `done` receives the parsed command. */
export function registerVolumeCommands(program: Command, done: (r: VolumeCli) => void, usage: (message: string) => void): void {
  const volume = program.command("volume").alias("vol").description("manage named volumes ($MSB_HOME/volumes)");
  volume
    .command("create")
    .description("create a named volume: a directory (default) or an ext4 disk image (--kind disk --size 1G)")
    .argument("[NAME]", "volume name")
    .option("--name <name>", "volume name (instead of the argument)")
    .option("--kind <kind>", "dir (default) or disk", oneOf("kind", ["dir", "disk"] as const))
    .option("--size <size>", "disk capacity for --kind disk (e.g. 100M, 1G)", parseSizeMiB("size"))
    .option("--quota <size>", "storage quota recorded for a directory volume (e.g. 1G)", parseSizeMiB("quota"))
    .option("--disk-format <format>", "image format for --kind disk: raw (default) or qcow2", oneOf("disk-format", ["raw", "qcow2"] as const))
    .option("-l, --label <KEY=VALUE>", "a label (repeatable)", labelPair)
    .option("-q, --quiet", "print only the volume name")
    .option(...JSON_ERRORS)
    .addHelpText("after", "\nExamples:\n  msb volume create my-data\n  msb volume create docker-data --kind disk --size 10G\n  msb run -v my-data:/data -- sh -c 'echo hi > /data/hello'\n")
    .action(
      (
        arg: string | undefined,
        o: { name?: string; kind?: "dir" | "disk"; size?: number; quota?: number; diskFormat?: "raw" | "qcow2"; label?: [string, string][]; quiet?: boolean },
      ) => {
        const name = o.name ?? arg;
        if (name === undefined) return usage("missing volume name: msb volume create NAME");
        if (o.name !== undefined && arg !== undefined && o.name !== arg) return usage("give the volume name once (NAME or --name)");
        const r: VolumeCli = { kind: "volumeCreate", name, volumeKind: o.kind ?? "dir", labels: o.label ?? [], quiet: o.quiet === true };
        if (o.size !== undefined) r.sizeMiB = o.size;
        if (o.quota !== undefined) r.quotaMiB = o.quota;
        if (o.diskFormat !== undefined) r.diskFormat = o.diskFormat;
        done(r);
      },
    );
  const ls = (cmd: Command) =>
    cmd
      .option("--json", "print JSON instead of a table")
      .option("--format <format>", "output format: json", oneOf("format", ["json"] as const))
      .option("-q, --quiet", "print only the volume names")
      .action((o: { json?: boolean; format?: string; quiet?: boolean }) => done({ kind: "volumeLs", json: o.json === true || o.format === "json", quiet: o.quiet === true }));
  ls(volume.command("ls").alias("list").description("list volumes"));
  ls(program.command("volumes").description("list volumes (msb volume ls)"));
  volume
    .command("inspect")
    .description("print a volume's metadata as JSON")
    .argument("<NAME>", "volume name")
    .option(...JSON_ERRORS)
    .action((name: string) => done({ kind: "volumeInspect", name }));
  volume
    .command("rm")
    .alias("remove")
    .description("remove volumes and their files (not while a running sandbox mounts them)")
    .argument("<NAME...>", "volume names")
    .option("-q, --quiet", "print nothing")
    .option(...JSON_ERRORS)
    .action((names: string[], o: { quiet?: boolean }) => done({ kind: "volumeRm", names, quiet: o.quiet === true }));
}

function toJson(h: VolumeHandle): Record<string, unknown> {
  return {
    name: h.name,
    kind: h.kind,
    path: h.path,
    quotaMib: h.quotaMib,
    usedBytes: h.usedBytes,
    capacityBytes: h.capacityBytes,
    diskFormat: h.diskFormat,
    diskFstype: h.diskFstype,
    labels: Object.fromEntries(h.labels),
    createdAt: h.createdAt?.toISOString() ?? null,
  };
}

export function formatVolumes(vols: VolumeHandle[], json: boolean, quiet: boolean, now = new Date()): string {
  if (quiet) return vols.map((v) => `${v.name}\n`).join("");
  if (json) return JSON.stringify(vols.map(toJson), null, 2) + "\n";
  return table(
    ["NAME", "KIND", "USED", "CAPACITY", "LABELS", "CREATED"],
    vols.map((v) => [
      v.name,
      v.kind === "disk" ? `disk (${v.diskFormat ?? "raw"})` : "dir",
      formatBytes(v.usedBytes),
      v.capacityBytes !== null ? formatBytes(v.capacityBytes) : v.quotaMib !== null ? `quota ${formatBytes(v.quotaMib * 1024 * 1024)}` : "-",
      v.labels.map(([k, val]) => `${k}=${val}`).join(",") || "-",
      v.createdAt ? ago(v.createdAt, now) : "-",
    ]),
  );
}

/** Run a parsed volume command; resolves to the exit code. */
export async function volumeCommand(r: VolumeCli, io: VolumesIO): Promise<number> {
  const fail = (e: unknown): number => {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  };
  switch (r.kind) {
    case "volumeCreate":
      try {
        const b = Volume.builder(r.name);
        if (r.volumeKind === "disk") b.disk();
        if (r.sizeMiB !== undefined) b.size(r.sizeMiB);
        if (r.quotaMiB !== undefined) b.quota(r.quotaMiB);
        if (r.diskFormat !== undefined) b.format(r.diskFormat);
        for (const [k, v] of r.labels) b.label(k, v);
        const v = await b.create();
        io.out(`${v.name}\n`);
        return 0;
      } catch (e) {
        return fail(e);
      }
    case "volumeLs":
      try {
        io.out(formatVolumes(await Volume.list(), r.json, r.quiet));
        return 0;
      } catch (e) {
        return fail(e);
      }
    case "volumeInspect":
      try {
        io.out(JSON.stringify(toJson(await Volume.get(r.name)), null, 2) + "\n");
        return 0;
      } catch (e) {
        return fail(e);
      }
    case "volumeRm": {
      let code = 0;
      for (const name of r.names) {
        try {
          await Volume.remove(name);
          if (!r.quiet) io.out(`removed ${name}\n`);
        } catch (e) {
          code = fail(e);
        }
      }
      return code;
    }
  }
}
