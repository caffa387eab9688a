/** Platform selection in OCI indexes and Docker manifest lists. */
import { OciError } from "./errors.js";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const NODE_ARCH: Record<string, string> = {
  x64: "amd64",
  arm64: "arm64",
  arm: "arm",
  ia32: "386",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  loong64: "loong64",
};

/** linux + the host's architecture in OCI terms (amd64 on x64, arm64 on arm64). */
export function hostPlatform(): Platform {
  const architecture = NODE_ARCH[process.arch] ?? process.arch;
  return architecture === "arm64" ? { os: "linux", architecture, variant: "v8" } : { os: "linux", architecture };
}

const ARCH_ALIASES: Record<string, string> = { x86_64: "amd64", "x86-64": "amd64", aarch64: "arm64", i386: "386" };

/** Canonical form: lowercase, Go architecture names, arm64's implied variant v8. */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase();
  let architecture = p.architecture.toLowerCase();
  architecture = ARCH_ALIASES[architecture] ?? architecture;
  let variant = p.variant?.toLowerCase() || undefined;
  if (architecture === "arm64" && variant === undefined) variant = "v8";
  if (architecture === "arm" && variant === undefined) variant = "v7";
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

/** Parse "linux/arm64/v8" (the CLI's --platform). */
export function parsePlatform(s: string): Platform {
  const parts = s.trim().split("/");
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => x === "")) {
    throw new OciError("invalidConfig", `invalid platform "${s}": expected os/architecture[/variant], e.g. linux/arm64`, {
      field: "platform",
    });
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return variant === undefined ? { os, architecture } : { os, architecture, variant };
}

export interface PlatformCandidate<T> {
  platform?: Platform | undefined;
  item: T;
}

/**
 * Pick the entry of an index that fits `want`. OS and architecture must match. For the
 * variant: an entry with exactly the wanted variant wins; for arm64 (implied variant
 * v8) an entry without a variant is accepted after one that says v8. Entries without a
 * platform or with os/architecture "unknown" (attestation manifests) never match.
 * Returns undefined when nothing fits.
 */
export function selectPlatform<T>(candidates: PlatformCandidate<T>[], want: Platform): T | undefined {
  const w = normalizePlatform(want);
  let best: { score: number; item: T } | undefined;
  for (const c of candidates) {
    const p = c.platform;
    if (!p || !p.os || !p.architecture || p.os === "unknown" || p.architecture === "unknown") continue;
    const n = normalizePlatform(p);
    if (n.os !== w.os || n.architecture !== w.architecture) continue;
    let score: number;
    const raw = p.variant?.toLowerCase() || undefined;
    if (raw !== undefined && raw === w.variant) score = 3; // exactly the variant asked for
    else if (n.variant === w.variant) score = 2; // the implied variant (arm64 without one = v8)
    else if (w.variant === undefined) score = 1; // no variant asked for: any will do
    else continue;
    if (!best || score > best.score) best = { score, item: c.item };
  }
  return best?.item;
}

/** "linux/amd64, linux/arm64/v8" for error messages. */
export function describePlatforms(platforms: (Platform | undefined)[]): string {
  const names = platforms
    .filter((p): p is Platform => !!p && p.os !== "unknown" && p.architecture !== "unknown")
    .map(formatPlatform);
  return names.length ? [...new Set(names)].join(", ") : "none";
}
