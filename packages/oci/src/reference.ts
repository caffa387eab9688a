/**
 * Image references, normalised the way Docker does it (distribution/reference):
 *   alpine                      -> docker.io/library/alpine:latest
 *   user/repo:1.0               -> docker.io/user/repo:1.0
 *   host:5000/team/repo         -> host:5000/team/repo:latest
 *   localhost/repo              -> localhost/repo:latest
 *   repo@sha256:<64 hex>        -> docker.io/library/repo@sha256:<64 hex>
 *   repo:tag@sha256:<64 hex>    -> both kept; the digest is what gets pulled
 */
import { OciError } from "./errors.js";

export const DOCKER_HUB = "docker.io";
/** Where docker.io's registry API actually lives. */
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";

export interface Reference {
  /** Registry host[:port], normalised (`docker.io` for Docker Hub). */
  readonly registry: string;
  /** Repository path, e.g. `library/alpine`. */
  readonly repository: string;
  /** Tag; `latest` when neither tag nor digest was given. */
  readonly tag?: string;
  /** `sha256:<hex>` when the reference pins a digest. */
  readonly digest?: string;
  /** The normalised reference, e.g. `docker.io/library/alpine:latest`. */
  toString(): string;
}

class ImageReference implements Reference {
  readonly registry: string;
  readonly repository: string;
  readonly tag?: string;
  readonly digest?: string;

  constructor(registry: string, repository: string, tag: string | undefined, digest: string | undefined) {
    this.registry = registry;
    this.repository = repository;
    if (tag !== undefined) this.tag = tag;
    if (digest !== undefined) this.digest = digest;
  }

  toString(): string {
    return `${this.registry}/${this.repository}${this.tag !== undefined ? `:${this.tag}` : ""}${
      this.digest !== undefined ? `@${this.digest}` : ""
    }`;
  }

  toJSON(): string {
    return this.toString();
  }
}

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6 = /^\[[0-9a-fA-F:.]+(?:%[\w.-]+)?\]$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const SHA256 = /^sha256:[a-f0-9]{64}$/;
const MAX_NAME = 255;

function invalid(s: string, why: string): OciError {
  return new OciError("invalidConfig", `invalid image reference "${s}": ${why}`, { field: "image" });
}

function validDomain(domain: string): boolean {
  if (domain.startsWith("[")) {
    const end = domain.indexOf("]");
    if (end < 0) return false;
    const rest = domain.slice(end + 1);
    return IPV6.test(domain.slice(0, end + 1)) && (rest === "" || /^:\d+$/.test(rest));
  }
  const m = /^([^:]*)(?::(\d+))?$/.exec(domain);
  const host = m?.[1] ?? "";
  return host !== "" && host.split(".").every((c) => DOMAIN_COMPONENT.test(c));
}

/** Parse and normalise an image reference. Throws OciError `invalidConfig` (field "image"). */
export function parseReference(input: string): Reference {
  const s = input.trim();
  if (s === "") throw invalid(input, "it is empty");
  if (/^[a-f0-9]{64}$/.test(s)) throw invalid(input, "a bare 64-character hex string is an image ID, not a reference");

  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw invalid(input, `"${digest}" is not a digest (expected sha256:<64 hex digits>)`);
    if (!digest.startsWith("sha256:")) throw invalid(input, `only sha256 digests are supported, not ${digest.split(":")[0]}`);
    if (!SHA256.test(digest)) throw invalid(input, `"${digest}" is not a sha256 digest (64 lowercase hex digits)`);
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `"${tag}" is not a valid tag`);
  }
  if (rest === "") throw invalid(input, "the repository name is missing");

  let registry: string;
  let repository: string;
  const slash = rest.indexOf("/");
  const first = slash >= 0 ? rest.slice(0, slash) : "";
  if (slash < 0 || (!/[.:]/.test(first) && first !== "localhost" && first.toLowerCase() === first)) {
    registry = DOCKER_HUB;
    repository = rest;
  } else {
    registry = first;
    repository = rest.slice(slash + 1);
    if (!validDomain(registry)) throw invalid(input, `"${registry}" is not a valid registry host`);
  }
  if (registry === "index.docker.io") registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;

  if (repository.toLowerCase() !== repository) throw invalid(input, "repository names must be lowercase");
  const comps = repository.split("/");
  for (const c of comps) {
    if (!PATH_COMPONENT.test(c)) {
      throw invalid(
        input,
        c === "" ? "the repository has an empty path component" : `"${c}" is not a valid repository path component`,
      );
    }
  }
  if (registry.length + 1 + repository.length > MAX_NAME) throw invalid(input, `the name is longer than ${MAX_NAME} characters`);
  if (tag === undefined && digest === undefined) tag = "latest";
  return new ImageReference(registry, repository, tag, digest);
}

/** The host[:port] to send registry API requests to. */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry;
}

/** Hostname of a registry (no port, no IPv6 brackets). */
export function registryHostname(registry: string): string {
  if (registry.startsWith("[")) return registry.slice(1, registry.indexOf("]"));
  const i = registry.lastIndexOf(":");
  return i >= 0 ? registry.slice(0, i) : registry;
}

/** Registries on this machine (`localhost`, 127.0.0.0/8, ::1): plain HTTP allowed, as Docker does. */
export function isLoopbackRegistry(registry: string): boolean {
  const h = registryHostname(registry).toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return m !== null && m.slice(1).every((o) => Number(o) <= 255);
}

const DISK_IMAGE_EXT = /\.(ext[234]|img|raw|erofs|squashfs|sqfs|qcow2|iso|tar)$/i;

/**
 * Heuristic for `.image(x)`: is `x` an image reference (rather than a path to a local
 * root filesystem)? Paths that start with `/`, `./`, `../` or `~` are never references,
 * nor is anything that does not parse as one, nor a bare name that ends like a disk
 * image file (`rootfs.ext4`). A bare word like `my-rootfs` is a valid reference: callers
 * that also accept relative directories should check whether such a path exists first.
 */
export function looksLikeImageReference(s: string): boolean {
  const t = s.trim();
  if (t === "" || t === "." || t === ".." || t === "~") return false;
  if (t.startsWith("/") || t.startsWith("./") || t.startsWith("../") || t.startsWith("~")) return false;
  if (t.includes("\\") || /\s/.test(t)) return false;
  let ref: Reference;
  try {
    ref = parseReference(t);
  } catch {
    return false;
  }
  if (!t.includes(":") && !t.includes("@") && DISK_IMAGE_EXT.test(t)) return false;
  return ref.repository.length > 0;
}
