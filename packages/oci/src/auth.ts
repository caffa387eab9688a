/** Registry authentication: WWW-Authenticate challenges and the Bearer token cache. */

export type RegistryAuth = { kind: "basic"; username: string; password: string };

export interface Challenge {
  /** Lowercase scheme: "bearer", "basic", ... */
  scheme: string;
  /** Parameters, keys lowercased (realm, service, scope, error, ...). */
  params: Record<string, string>;
}

/**
 * Parse a WWW-Authenticate header (RFC 7235): one or more challenges, each a scheme
 * followed by comma-separated auth-params whose values may be quoted strings (with
 * backslash escapes, and commas inside, e.g. scope="repository:a:pull,push").
 */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => {
    while (i < n && (header[i] === " " || header[i] === "\t")) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  let current: Challenge | undefined;
  while (i < n) {
    skipWs();
    if (header[i] === ",") {
      i++;
      continue;
    }
    const word = token();
    if (word === "") {
      i++; // junk character: skip it
      continue;
    }
    skipWs();
    if (header[i] === "=" && current) {
      // auth-param of the current challenge (token68 values are not used by registries)
      i++;
      skipWs();
      let value = "";
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === "\\" && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++; // closing quote
      } else {
        const vs = i;
        while (i < n && header[i] !== "," && header[i] !== " " && header[i] !== "\t") i++;
        value = header.slice(vs, i);
      }
      current.params[word.toLowerCase()] = value;
      continue;
    }
    if (header[i] === "=" && !current) {
      i++;
      continue;
    }
    current = { scheme: word.toLowerCase(), params: {} };
    out.push(current);
  }
  return out;
}

export function basicHeader(auth: RegistryAuth): string {
  return `Basic ${Buffer.from(`${auth.username}:${auth.password}`, "utf8").toString("base64")}`;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/**
 * Bearer tokens by realm + service + scope + user, for this process. A token is reused
 * until 30 s before it expires (registries default to 60 s when they give no lifetime).
 */
export class TokenCache {
  private readonly map = new Map<string, CachedToken>();

  static key(params: Record<string, string>, scope: string, user: string | undefined): string {
    return JSON.stringify([params.realm ?? "", params.service ?? "", scope, user ?? ""]);
  }

  get(key: string, now = Date.now()): string | undefined {
    const t = this.map.get(key);
    if (!t) return undefined;
    if (t.expiresAt - 30_000 <= now) {
      this.map.delete(key);
      return undefined;
    }
    return t.token;
  }

  set(key: string, token: string, expiresInSec: number | undefined, issuedAt?: string, now = Date.now()): void {
    let start = now;
    if (issuedAt) {
      const t = Date.parse(issuedAt);
      if (Number.isFinite(t) && t <= now) start = t;
    }
    const life = expiresInSec && expiresInSec > 0 ? expiresInSec : 60;
    this.map.set(key, { token, expiresAt: start + life * 1000 });
  }

  clear(): void {
    this.map.clear();
  }
}

export const tokenCache = new TokenCache();
