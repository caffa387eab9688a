/** `msb doctor [--json]`: the SDK's host checks, one line each with the fixes; exit 0 only when a sandbox can start. */
import { DOCTOR_INSTALL_ALL, doctor, doctorExitCode, type DoctorReport } from "@microsandbox/sdk";
import { cliError, formatError } from "./errors.js";

export interface DoctorIO {
  out(text: string): void;
  err(text: string): void;
}

const LABEL = { ok: "ok  ", warn: "warn", fail: "FAIL" } as const;

/** The human report: one line per check, its fix hints indented below. */
export function formatDoctor(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const lines: string[] = [];
  for (const c of report.checks) {
    lines.push(`[${LABEL[c.status]}] ${c.name.padEnd(width)}  ${c.detail}`);
    const pad = " ".repeat(width + 10);
    if (c.fix !== undefined) lines.push(`${pad}fix: ${c.fix}`);
    if (c.install !== undefined) {
      lines.push(`${pad}Debian/Ubuntu: ${c.install.debian}`);
      lines.push(`${pad}Fedora:        ${c.install.fedora}`);
    }
  }
  const fails = report.checks.filter((c) => c.status === "fail").length;
  const warns = report.checks.filter((c) => c.status === "warn").length;
  lines.push("");
  if (report.checks.some((c) => c.install !== undefined)) {
    lines.push("Everything msb uses, in one command:");
    lines.push(`  Debian/Ubuntu: ${DOCTOR_INSTALL_ALL.debian}`);
    lines.push(`  Fedora:        ${DOCTOR_INSTALL_ALL.fedora}`);
  }
  const w = warns === 1 ? "1 warning" : `${warns} warnings`;
  lines.push(report.ok ? `A sandbox can start here (${w}).` : `Sandboxes cannot start here: ${fails === 1 ? "1 check failed" : `${fails} checks failed`} (${w}).`);
  return lines.join("\n") + "\n";
}

export async function doctorCommand(json: boolean, io: DoctorIO, run: () => Promise<DoctorReport> = () => doctor()): Promise<number> {
  let report: DoctorReport;
  try {
    report = await run();
  } catch (e) {
    io.err(formatError(cliError(e), json));
    return 1;
  }
  io.out(json ? `${JSON.stringify({ ok: report.ok, checks: report.checks }, null, 2)}\n` : formatDoctor(report));
  return doctorExitCode(report);
}
