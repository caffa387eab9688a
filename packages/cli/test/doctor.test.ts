// `msb doctor [--json]`: parsing, the text and JSON reports and the exit codes (a fake
// report), and one run of the real checks on this host. No VM.
import { describe, expect, it } from "vitest";
import type { DoctorReport } from "@microsandbox/sdk";
import { parseCli } from "../src/args.js";
import { doctorCommand, formatDoctor } from "../src/doctor.js";
import { main } from "../src/main.js";

function parse(...argv: string[]) {
  let err = "";
  const result = parseCli(argv, "1", { out: () => {}, err: (s) => void (err += s) });
  return { result, err };
}

const healthy: DoctorReport = {
  ok: true,
  checks: [
    { name: "qemu", status: "ok", path: "/usr/bin/qemu-system-x86_64", version: "7.2.22", detail: "QEMU 7.2.22 at /usr/bin/qemu-system-x86_64 (7.2 or newer needed)" },
    { name: "kvm", status: "warn", path: "/dev/kvm", detail: "/dev/kvm is not usable (ENOENT): TCG", fix: "for KVM: enable hardware virtualization" },
    { name: "passt", status: "ok", detail: "not needed" },
  ],
};

const broken: DoctorReport = {
  ok: false,
  checks: [
    {
      name: "qemu",
      status: "fail",
      detail: "qemu-system-x86_64 was not found on PATH",
      fix: "install QEMU, or set MSB_QEMU",
      install: { debian: "sudo apt-get install -y qemu-system-x86", fedora: "sudo dnf install -y qemu-system-x86-core" },
    },
    { name: "e2fsprogs", status: "ok", detail: "mke2fs 1.47.0 at /usr/sbin/mke2fs" },
  ],
};

function io() {
  const o = { out: "", err: "" };
  return { o, io: { out: (s: string) => void (o.out += s), err: (s: string) => void (o.err += s) } };
}

describe("msb doctor", () => {
  it("parses, with and without --json; a command after -- is a usage error", () => {
    expect(parse("doctor").result).toEqual({ kind: "doctor", json: false });
    expect(parse("doctor", "--json").result).toEqual({ kind: "doctor", json: true });
    const bad = parse("doctor", "--", "x");
    expect(bad.result).toEqual({ kind: "exit", code: 2 });
    expect(bad.err).toBe("msb: msb doctor takes no command after --\n");
  });

  it("text: one line per check, fix hints and install commands below; exit 0 with warnings only", async () => {
    const { o, io: w } = io();
    expect(await doctorCommand(false, w, async () => healthy)).toBe(0);
    expect(o.out).toBe(
      [
        "[ok  ] qemu   QEMU 7.2.22 at /usr/bin/qemu-system-x86_64 (7.2 or newer needed)",
        "[warn] kvm    /dev/kvm is not usable (ENOENT): TCG",
        "               fix: for KVM: enable hardware virtualization",
        "[ok  ] passt  not needed",
        "",
        "A sandbox can start here (1 warning).",
        "",
      ].join("\n"),
    );
    expect(o.err).toBe("");
  });

  it("text: a failed check exits 1, with the install commands for Debian/Ubuntu and Fedora", async () => {
    const { o, io: w } = io();
    expect(await doctorCommand(false, w, async () => broken)).toBe(1);
    expect(o.out).toBe(
      [
        "[FAIL] qemu       qemu-system-x86_64 was not found on PATH",
        "                   fix: install QEMU, or set MSB_QEMU",
        "                   Debian/Ubuntu: sudo apt-get install -y qemu-system-x86",
        "                   Fedora:        sudo dnf install -y qemu-system-x86-core",
        "[ok  ] e2fsprogs  mke2fs 1.47.0 at /usr/sbin/mke2fs",
        "",
        "Everything msb uses, in one command:",
        "  Debian/Ubuntu: sudo apt-get install -y qemu-system-x86 qemu-utils e2fsprogs virtiofsd",
        "  Fedora:        sudo dnf install -y qemu-system-x86-core qemu-img e2fsprogs virtiofsd",
        "Sandboxes cannot start here: 1 check failed (0 warnings).",
        "",
      ].join("\n"),
    );
  });

  it("--json: { ok, checks } on stdout, the same exit codes", async () => {
    const a = io();
    expect(await doctorCommand(true, a.io, async () => healthy)).toBe(0);
    expect(JSON.parse(a.o.out)).toEqual({ ok: true, checks: healthy.checks });
    const b = io();
    expect(await doctorCommand(true, b.io, async () => broken)).toBe(1);
    expect(JSON.parse(b.o.out)).toEqual({ ok: false, checks: broken.checks });
  });

  it("checks that throw: one error line, exit 1", async () => {
    const a = io();
    expect(await doctorCommand(true, a.io, async () => Promise.reject(new Error("boom")))).toBe(1);
    expect(a.o.err).toBe('{"error":{"code":"internal","message":"boom"}}\n');
    expect(a.o.out).toBe("");
  });

  it("formatDoctor counts warnings and failures", () => {
    expect(formatDoctor({ ok: false, checks: [...broken.checks, broken.checks[0]!] })).toContain("2 checks failed (0 warnings)");
  });

  it("main: the real checks on this host, text and --json agree with the exit code", async () => {
    const j = io();
    const code = await main(["doctor", "--json"], { ...j.io, writeOut: async () => {}, writeErr: async () => {} });
    const report = JSON.parse(j.o.out) as DoctorReport;
    expect(code).toBe(report.ok ? 0 : 1);
    expect(report.checks.map((c) => c.name)).toContain("qemu");
    expect(report.checks.every((c) => ["ok", "warn", "fail"].includes(c.status) && c.detail.length > 0)).toBe(true);
    const t = io();
    expect(await main(["doctor"], { ...t.io, writeOut: async () => {}, writeErr: async () => {} })).toBe(code);
    expect(t.o.out).toMatch(/^\[(ok {2}|warn|FAIL)\] platform/);
    expect(t.o.out).toMatch(report.ok ? /A sandbox can start here/ : /Sandboxes cannot start here/);
  });
});
