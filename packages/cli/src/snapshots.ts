/** `msb snapshot create|ls|inspect|rm|verify|save|load` (and `msb snapshots`, short for `msb snapshot ls`). */
import { stat } from "node:fs/promises";
import type { Command } from "commander";
import { Snapshot, type SnapshotHandle } from "@microsandbox/sdk";
import { ago, table } from "./images.js";
import { formatBytes } from "./progress.js";
import { describeError } from "./run.js";
import { JSON_ERRORS, labelPair } from "./volumes.js";

/** A parsed `msb snapshot ...` command. */
export type SnapshotCli =
  | { kind: "snapshotCreate"; name: string; from: string; labels: [string, string][]; force: boolean; integrity: boolean; quiet: boolean }
  | { kind: "snapshotLs"; json: boolean; quiet: boolean }
  | { kind: "snapshotInspect"; name: string }
  | { kind: "snapshotRm"; names: string[]; quiet: boolean }
  | { kind: "snapshotVerify"; name: string; json: boolean }
  | { kind: "snapshotSave"; name: string; out: string; withImage: boolean; quiet: boolean }
  | { kind: "snapshotLoad"; archive: string; dest: string | undefined; json: boolean; quiet: boolean };

export interface SnapshotsIO {
  out(text: string): void;
  err(text: string): void;
  json?: boolean;
}

/** Add `snapshot` (with its subcommands) and `snapshots` to `program`. */
export function registerSnapshotCommands(program: Command, done: (r: SnapshotCli) => void): void {
  const snapshot = program.command("snapshot").description("manage disk snapshots of stopped sandboxes ($MSB_HOME/snapshots)");
  snapshot
    .command("create")
    .description("capture a stopped sandbox's writable disk; boot copies of it with Sandbox.builder(n).fromSnapshot(NAME)")
    .argument("<NAME>", "snapshot name")
    .requiredOption("--from <SANDBOX>", "the stopped sandbox to capture")
    .option("-l, --label <KEY=VALUE>", "a label (repeatable)", labelPair)
    .option("-f, --force", "replace a snapshot of the same name")
    .option("--integrity", "record the disk's content digest, checked by msb snapshot verify")
    .option("-q, --quiet", "print only the digest")
    .option(...JSON_ERRORS)
    .addHelpText("after", "\nExamples:\n  msb stop base && msb snapshot create clean --from base --integrity\n")
    .action((name: string, o: { from: string; label?: [string, string][]; force?: boolean; integrity?: boolean; quiet?: boolean }) =>
      done({ kind: "snapshotCreate", name, from: o.from, labels: o.label ?? [], force: o.force === true, integrity: o.integrity === true, quiet: o.quiet === true }),
    );
  const ls = (cmd: Command) =>
    cmd
      .option("--json", "print JSON instead of a table")
      .option("-q, --quiet", "print only the snapshot names")
      .action((o: { json?: boolean; quiet?: boolean }) => done({ kind: "snapshotLs", json: o.json === true, quiet: o.quiet === true }));
  ls(snapshot.command("ls").alias("list").description("list snapshots"));
  ls(program.command("snapshots").description("list snapshots (msb snapshot ls)"));
  snapshot
    .command("inspect")
    .description("print a snapshot's manifest fields as JSON")
    .argument("<NAME>", "snapshot name, digest or path")
    .option(...JSON_ERRORS)
    .action((name: string) => done({ kind: "snapshotInspect", name }));
  snapshot
    .command("rm")
    .alias("remove")
    .description("remove snapshots (damaged ones too)")
    .argument("<NAME...>", "snapshot names, digests or paths")
    .option("-q, --quiet", "print nothing")
    .option(...JSON_ERRORS)
    .action((names: string[], o: { quiet?: boolean }) => done({ kind: "snapshotRm", names, quiet: o.quiet === true }));
  snapshot
    .command("verify")
    .description("recompute the disk's content digest and compare it with the recorded one (exit 1 on a mismatch)")
    .argument("<NAME>", "snapshot name, digest or path")
    .option("--json", "print the report as JSON")
    .action((name: string, o: { json?: boolean }) => done({ kind: "snapshotVerify", name, json: o.json === true }));
  snapshot
    .command("save")
    .description("write a snapshot to a portable archive (a tar of its manifest and the disk's data, holes left out)")
    .argument("<NAME>", "snapshot name, digest or path")
    .argument("<OUT>", "the archive to write (must not exist)")
    .option("--with-image", "include the snapshot's OCI image, so that the archive boots on a host without its registry")
    .option("-q, --quiet", "print nothing")
    .option(...JSON_ERRORS)
    .addHelpText("after", "\nExamples:\n  msb snapshot save clean clean.tar --with-image\n  scp clean.tar other: && ssh other msb snapshot load clean.tar\n")
    .action((name: string, out: string, o: { withImage?: boolean; quiet?: boolean }) => done({ kind: "snapshotSave", name, out, withImage: o.withImage === true, quiet: o.quiet === true }));
  snapshot
    .command("load")
    .description("unpack an archive made by msb snapshot save (checked before anything is written)")
    .argument("<ARCHIVE>", "the archive")
    .option("--dest <DIR>", "unpack under DIR instead of the snapshots directory")
    .option("--json", "print the loaded snapshot as JSON")
    .option("-q, --quiet", "print only the digest")
    .action((archive: string, o: { dest?: string; json?: boolean; quiet?: boolean }) => done({ kind: "snapshotLoad", archive, dest: o.dest, json: o.json === true, quiet: o.quiet === true }));
}

function toJson(h: SnapshotHandle): Record<string, unknown> {
  return {
    name: h.name,
    digest: h.digest,
    path: h.path,
    imageRef: h.imageRef,
    scope: h.scope,
    format: h.format,
    fstype: h.fstype,
    sizeBytes: h.sizeBytes === null ? null : Number(h.sizeBytes),
    createdAt: h.createdAt.toISOString(),
  };
}

export function formatSnapshots(list: SnapshotHandle[], json: boolean, quiet: boolean, now = new Date()): string {
  if (quiet) return list.map((s) => `${s.name ?? s.digest}\n`).join("");
  if (json) return JSON.stringify(list.map(toJson), null, 2) + "\n";
  return table(
    ["NAME", "DIGEST", "IMAGE", "SIZE", "CREATED"],
    list.map((s) => [s.name ?? "-", s.digest.slice(0, 19), s.imageRef || "(default)", s.sizeBytes === null ? "-" : formatBytes(Number(s.sizeBytes)), ago(s.createdAt, now)]),
  );
}

/** Run a parsed snapshot command; resolves to the exit code. */
export async function snapshotCommand(r: SnapshotCli, io: SnapshotsIO): Promise<number> {
  const fail = (e: unknown): number => {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  };
  try {
    switch (r.kind) {
      case "snapshotCreate": {
        const b = Snapshot.builder(r.name).fromSandbox(r.from);
        for (const [k, v] of r.labels) b.label(k, v);
        if (r.force) b.force();
        if (r.integrity) b.recordIntegrity();
        const s = await b.create();
        io.out(r.quiet ? `${s.digest}\n` : `${s.name} ${s.digest}\n`);
        return 0;
      }
      case "snapshotLs":
        io.out(formatSnapshots(await Snapshot.list(), r.json, r.quiet));
        return 0;
      case "snapshotInspect": {
        const s = await Snapshot.open((await Snapshot.get(r.name)).path);
        io.out(
          JSON.stringify(
            {
              name: s.name,
              digest: s.digest,
              path: s.path,
              imageRef: s.imageRef,
              imageManifestDigest: s.imageManifestDigest,
              scope: s.scope,
              sizeBytes: Number(s.sizeBytes),
              integrity: s.state.upper.integrity,
              labels: Object.fromEntries(s.labels),
              sourceSandbox: s.sourceSandbox,
              createdAt: s.createdAt,
            },
            null,
            2,
          ) + "\n",
        );
        return 0;
      }
      case "snapshotRm": {
        let code = 0;
        for (const name of r.names) {
          try {
            await Snapshot.remove(name);
            if (!r.quiet) io.out(`removed ${name}\n`);
          } catch (e) {
            code = fail(e);
          }
        }
        return code;
      }
      case "snapshotVerify": {
        const s = await Snapshot.open((await Snapshot.get(r.name)).path);
        const report = await s.verify();
        if (r.json) io.out(JSON.stringify(report, null, 2) + "\n");
        else io.out(report.upper.kind === "verified" ? `${s.name}: verified ${report.upper.digest}\n` : `${s.name}: no digest recorded (create it with --integrity)\n`);
        return 0;
      }
      case "snapshotSave": {
        await Snapshot.save(r.name, r.out, { withImage: r.withImage });
        if (!r.quiet) io.out(`saved ${r.name} to ${r.out} (${formatBytes((await stat(r.out)).size)})\n`);
        return 0;
      }
      case "snapshotLoad": {
        const h = await Snapshot.load(r.archive, r.dest);
        if (r.json) io.out(JSON.stringify(toJson(h), null, 2) + "\n");
        else io.out(r.quiet ? `${h.digest}\n` : `loaded ${h.name} ${h.digest}\n`);
        return 0;
      }
    }
  } catch (e) {
    return fail(e);
  }
}
