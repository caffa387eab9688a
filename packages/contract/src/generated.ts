// Generated from the Rust types by crates/contract: do not edit.
// Regenerate with `MSB_BLESS=1 cargo test -p msb-contract`; the test fails while
// this file differs from what the types give.

export type Action = "allow" | "deny";

export type ErrorCode = "invalidConfig" | "sandboxNotFound" | "sandboxAlreadyExists" | "sandboxStillRunning" | "sandboxNotRunning" | "sandboxDraining" | "sandboxPaused" | "imageNotFound" | "image" | "registryAuth" | "kernelNotFound" | "qemuNotFound" | "agentTimeout" | "runtime" | "protocol";

/**
 * A command to run. The SDK builds it; `AgentClient.exec` takes it as is.
 */
export type ExecRequest = { cmd: string, args: Array<string>, 
/**
 * Merged over the sandbox's environment.
 */
env: Array<[string, string]>, cwd: string | null, 
/**
 * A user name from the guest's /etc/passwd, or `uid[:gid]`.
 */
user: string | null, 
/**
 * Stdin is a pipe fed by `Stdin` messages (else /dev/null).
 */
stdin: boolean, 
/**
 * Run on a pseudo-terminal of this size (stdout carries the terminal's output).
 */
tty: TtySize | null, 
/**
 * Resource limits (names from [`crate::RLIMIT_NAMES`]), soft and hard. 64-bit: `u64::MAX` is RLIM_INFINITY (a `bigint` in TypeScript).
 */
rlimits: Array<[string, bigint]>, };

/**
 * One directory entry or `stat` result. Untrusted (the guest makes it).
 */
export type FsEntry = { name: string, 
/**
 * "file" | "dir" | "symlink" | "other"
 */
kind: "file" | "dir" | "symlink" | "other", size: number, 
/**
 * Permission bits (`mode & 0o7777`).
 */
mode: number, 
/**
 * Milliseconds since the epoch.
 */
modifiedMs: number, };

/**
 * Filesystem operations of `sb.fs()`. Paths are guest paths, resolved in the guest.
 */
export type FsOp = { "read": { path: string, } } | { "write": { path: string, mode: number | null, append: boolean, } } | { "list": { path: string, } } | { "stat": { path: string, } } | { "exists": { path: string, } } | { "mkdir": { path: string, mode: number | null, recursive: boolean, } } | { "remove": { path: string, } } | { "remove_dir": { path: string, recursive: boolean, } } | { "copy": { src: string, dst: string, } } | { "rename": { src: string, dst: string, } } | { "symlink": { target: string, link: string, } };

/**
 * Address groups. See [`crate::policy::classify`] for the exact ranges.
 */
export type Group = "public" | "private" | "loopback" | "link-local" | "metadata" | "host" | "any";

/**
 * One metrics sample as msb-runtime reports it (runtime -> client only). The counters
 * cross as floating point numbers: exact to 2^53, and a plain `number` in JavaScript.
 */
export type MetricsReport = { 
/**
 * Percent of the sandbox's vCPUs (0..=100) used over the last second, from the host's
 * accounting of the VMM process.
 */
cpuPercent: number, memoryBytes: number, memoryLimitBytes: number, diskReadBytes: number, diskWriteBytes: number, netRxBytes: number, netTxBytes: number, 
/**
 * Milliseconds since the epoch.
 */
timestampMs: number, uptimeMs: number, };

export type Mode = "create" | "start";

/**
 * A volume as msb-runtime takes it.
 */
export type MountConfig = { 
/**
 * Absolute path inside the guest.
 */
guestPath: string, kind: MountKind, 
/**
 * bind: absolute host directory; named: volume name; tmpfs: none.
 */
source: string | null, readonly: boolean, 
/**
 * tmpfs only: size cap in MiB (None: the guest's default).
 */
sizeMiB: number | null, };

export type MountKind = "bind" | "named" | "tmpfs";

/**
 * One sandbox's network.
 */
export type NetConfig = { 
/**
 * The guest NIC's MAC (QEMU `-device virtio-net-device,mac=`). Used as the
 * destination of frames until the guest has sent one.
 */
guestMac: string, 
/**
 * The stack's own MAC (what the guest sees for every address it reaches).
 */
gatewayMac?: string, guestIp: string, 
/**
 * The guest's default gateway and DNS server.
 */
gatewayIp: string, 
/**
 * The address that stands for the host's loopback (`host.microsandbox.internal`).
 * Default: the last usable address of the subnet (`.254` in a /24).
 */
hostIp?: string, prefixLen: number, mtu: number, 
/**
 * Answer DNS at `gateway_ip:53` (UDP).
 */
dns: boolean, policy: Policy, ports: Array<PublishedPort>, 
/**
 * Cap on concurrent TCP flows (guest-initiated, pending connects and published
 * connections together). A SYN beyond it gets a RST; a published connection beyond
 * it is closed.
 */
maxConnections: number, 
/**
 * Cap on concurrent UDP flows; datagrams for new flows beyond it are dropped.
 */
maxUdpFlows?: number, 
/**
 * TLS interception (secrets need it); None: no flow is ever terminated.
 */
tls?: TlsConfig, 
/**
 * Secrets substituted into intercepted requests (their values travel apart, in
 * `RuntimeConfig.secretValues`).
 */
secrets?: Array<SecretRule>, };

/**
 * Egress and ingress rules. Ordered, first match wins; `default_action` applies to egress
 * when no rule matches. Ingress rules filter published ports (no match: allowed, since
 * publishing a port is itself the opt-in).
 */
export type Policy = { defaultAction: Action, egress: Array<Rule>, ingress: Array<Rule>, };

export type Proto = "tcp" | "udp" | "icmp";

/**
 * A port published on the host's loopback and carried into the guest.
 */
export type PublishedPort = { protocol: Proto, 
/**
 * Port on 127.0.0.1; 0 picks a free one (see [`crate::NetStack::published`]).
 */
hostPort: number, guestPort: number, };

/**
 * One policy rule. JSON: `{"action":"allow","protocol":"tcp","ports":[80,443],
 * "target":{"group":"public"}}`; `protocol` and `ports` are optional (any). A rule with
 * `ports` only matches TCP and UDP.
 */
export type Rule = { action: Action, protocol?: Proto, 
/**
 * Inclusive port range.
 */
ports?: [number, number], target: Target, };

export type RuntimeConfig = { name: string, msbHome: string, 
/**
 * msb-runtime's own path: used by the addon to start it (the runtime ignores it).
 */
runtimePath: string, kernel: string, initramfs: string, image: string, cpus: number, memoryMib: number, env: Array<[string, string]>, workdir: string | null, 
/**
 * Default user of commands (`name`, `uid` or `uid:gid`); root when absent.
 */
user: string | null, hostname: string | null, 
/**
 * false: detached (msb-runtime calls setsid and outlives the creating process).
 */
attached: boolean, 
/**
 * When the VM ends, however it ends (a stop, kill, drain, idle timeout, the creator
 * exiting, a crash of the guest), remove the sandbox (row, disks, logs) instead of
 * leaving it stopped. Attached or detached.
 */
ephemeral: boolean, 
/**
 * Boot from a memory template of this sandbox's shape when there is one, and make
 * one when there is not (msb-runtime's `MSB_TEMPLATES=off` turns them off for all).
 */
memoryTemplate: boolean, bootTimeoutMs: number, mode: Mode, idleTimeoutSecs: number | null, maxDurationSecs: number | null, 
/**
 * The SDK's view of the configuration, stored verbatim as the sandbox's config
 * (opaque here; never a registry password).
 */
sdkConfig: unknown, 
/**
 * Volumes (virtiofs for bind and named ones, tmpfs in the guest).
 */
mounts: Array<MountConfig>, 
/**
 * Create mode only: the new sandbox's writable disk starts as a copy of this file (a
 * disk snapshot's `upper.ext4`, copied sparse or reflinked) instead of an empty one.
 */
upperSource: string | null, 
/**
 * Create mode only: a fork. The directory a running sandbox saved itself into
 * (`Fork`): the new sandbox restores that memory and device state instead of booting,
 * on `upper_source` (the parent's disk copied at the same moment).
 */
forkFrom: string | null, 
/**
 * Filesystem of a disk image when detection cannot tell (e.g. qcow2); None: detect.
 */
imageFstype: string | null, 
/**
 * Verbosity of msb-runtime's log (one of [`LOG_LEVELS`]); None: info.
 */
logLevel: "trace" | "debug" | "info" | "warn" | "error" | null, 
/**
 * The network (`msb_netstack::NetConfig`, checked by the stack); None: no NIC at all.
 */
network: NetConfig | null, 
/**
 * The values of `network.secrets`, by env var. Only ever on msb-runtime's stdin:
 * never stored, logged or passed to the guest. A secret without a value here has its
 * placeholder blocked everywhere.
 */
secretValues?: Array<SecretValue>, };

/**
 * The status values of a sandbox, as stored and as the SDK reports them. The one list:
 * the TypeScript union `SandboxStatus` is generated from it (crates/contract).
 */
export type SandboxStatus = "starting" | "running" | "draining" | "paused" | "stopped" | "crashed";

/**
 * Where in a request a secret may be substituted.
 */
export type SecretInjection = { 
/**
 * Header values (HTTP/1 header lines, HTTP/2 header blocks).
 */
headers: boolean, 
/**
 * Inside `Authorization: Basic` credentials (decoded, substituted, re-encoded).
 */
basicAuth: boolean, 
/**
 * The query part of the request target.
 */
queryParams: boolean, 
/**
 * Identity-encoded request bodies (Content-Length up to 16 MiB, or chunked).
 */
body: boolean, };

/**
 * One secret, without its value.
 */
export type SecretRule = { 
/**
 * The guest environment variable that holds the placeholder.
 */
envVar: string, 
/**
 * What the guest sees instead of the value (default `$MSB_<envVar>`).
 */
placeholder: string, 
/**
 * Exact host names that receive the value.
 */
allowedHosts: Array<string>, 
/**
 * `*.suffix` patterns (also matching `suffix`) that receive the value.
 */
allowedHostPatterns: Array<string>, 
/**
 * Every host receives the value (dangerous).
 */
allowAnyHost: boolean, 
/**
 * Substitute only over an upstream whose certificate was verified.
 */
requireTlsIdentity: boolean, injection: SecretInjection, onViolation: ViolationAction, };

/**
 * A secret's value, by env var. Held zeroized; `Debug` never prints it; it is never
 * serialized back (TypeScript writes it, only msb-runtime reads it).
 */
export type SecretValue = { envVar: string, value: string, };

export type SessionEvent = { "kind": "started", pid: number, } | { "kind": "stdout", data: Buffer, } | { "kind": "stderr", data: Buffer, } | { "kind": "exited", code: number, signal: number | null, } | { "kind": "failed", reason: string, } | { "kind": "fsData", data: Buffer, } | { "kind": "fsEnd" } | { "kind": "fsDone" } | { "kind": "fsExists", exists: boolean, } | { "kind": "fsStat", entry: FsEntry, } | { "kind": "fsEntries", entries: Array<FsEntry>, } | { "kind": "fsError", errno: string, message: string, };

/**
 * `Target` as JSON (and, generated from this, as TypeScript).
 */
export type Target = { "ip": string } | { "cidr": string } | { "domain": string } | { "domainSuffix": string } | { "group": Group };

/**
 * TLS interception. Present (`Some`) exactly when the sandbox has secrets or asked for
 * `tls(...)`; absent, every flow is spliced as before and nothing of this runs.
 */
export type TlsConfig = { 
/**
 * Host names (exact, or `*.suffix`, which also matches `suffix`) whose TLS is never
 * terminated: spliced through untouched (certificate-pinning clients).
 */
bypass: Array<string>, 
/**
 * Verify the upstream's certificate (host roots plus `upstreamCaCertPaths`).
 * Substitution additionally needs a verified upstream when a secret requires TLS
 * identity.
 */
verifyUpstream: boolean, 
/**
 * Destination ports whose TLS is intercepted (default `[443]`).
 */
interceptedPorts: Array<number>, 
/**
 * Drop UDP to intercepted ports (QUIC), so that clients fall back to TCP.
 */
blockQuic: boolean, 
/**
 * Extra trust anchors for upstream verification: PEM files on the host.
 */
upstreamCaCertPaths: Array<string>, };

export type TtySize = { rows: number, cols: number, };

/**
 * A violation action: what to do, and the hosts that may receive the placeholder as
 * is (unsubstituted) without it being a violation.
 */
export type ViolationAction = { action: ViolationKind, passthroughHosts: Array<string>, 
/**
 * `*.suffix` patterns (also matching `suffix`).
 */
passthroughHostPatterns: Array<string>, passthroughAllHosts: boolean, };

/**
 * What happens when a placeholder is headed to a host that may not receive it.
 */
export type ViolationKind = "block" | "block-and-log" | "block-and-terminate";

/** Every error code of the native side. */
export const ERROR_CODES = ["invalidConfig", "sandboxNotFound", "sandboxAlreadyExists", "sandboxStillRunning", "sandboxNotRunning", "sandboxDraining", "sandboxPaused", "imageNotFound", "image", "registryAuth", "kernelNotFound", "qemuNotFound", "agentTimeout", "runtime", "protocol"] as const satisfies readonly ErrorCode[];
/** Every status a sandbox can have. */
export const SANDBOX_STATUSES = ["starting", "running", "draining", "paused", "stopped", "crashed"] as const satisfies readonly SandboxStatus[];
/** The address groups a network rule can name. */
export const GROUPS = ["public", "private", "loopback", "link-local", "metadata", "host", "any"] as const satisfies readonly Group[];
/** The volume kinds msb-runtime mounts. */
export const MOUNT_KINDS = ["bind", "named", "tmpfs"] as const satisfies readonly MountKind[];
/** The verbosity levels of msb-runtime's log. */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const satisfies readonly NonNullable<RuntimeConfig["logLevel"]>[];
/** The resource limits an exec request may set (setrlimit's RLIMIT_*, lower case). */
export const RLIMIT_RESOURCES = ["nofile", "nproc", "as", "cpu", "fsize", "core", "stack", "memlock", "data"] as const satisfies readonly string[];
/** What a secret violation does. */
export const VIOLATION_KINDS = ["block", "block-and-log", "block-and-terminate"] as const satisfies readonly ViolationKind[];
/** Ports whose TLS is intercepted when `tls.interceptedPorts` is not given. */
export const DEFAULT_INTERCEPTED_PORTS = [443] as const satisfies readonly number[];
/** Longest secret placeholder, in bytes. */
export const MAX_PLACEHOLDER_LEN = 1024;
/** Longest secret value, in bytes. */
export const MAX_SECRET_VALUE_LEN = 65536;
/** Most secrets per sandbox. */
export const MAX_SECRETS = 64;
/** Boot timeout msb-runtime applies when the config gives none. */
export const DEFAULT_BOOT_TIMEOUT_MS = 60000;
/** Smallest guest memory msb-runtime accepts, in MiB. */
export const MIN_MEMORY_MIB = 128;
/** Version of the host <-> guest protocol of this build. */
export const PROTOCOL_VERSION = 8;
