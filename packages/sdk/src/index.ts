// Must stay the first import: installs Symbol.asyncDispose on Node 20.
import "./polyfill.js";

export { Sandbox } from "./sandbox.js";
export { SandboxBuilder } from "./builder.js";
export { DEFAULT_SHELL, DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
export { SandboxHandle } from "./handle.js";
export type { StartOptions } from "./launch.js";
export type { SandboxStatus } from "./lifecycle.js";
export { MetricsStream, type SandboxMetrics } from "./metrics.js";
// Lifecycle parity (issue 14): labels and paged lists, ping/touch, modify, all metrics.
export { allSandboxMetrics, ALL_METRICS_CONCURRENCY } from "./metrics.js";
export { SandboxListBuilder, DEFAULT_SANDBOX_LIST_LIMIT, MAX_SANDBOX_LIST_LIMIT, type SandboxPage, type SandboxList } from "./list.js";
export type { SandboxPingResult, SandboxTouchResult } from "./lifecycle.js";
export { InitOptionsBuilder } from "./builder.js";
export { RESERVED_LABEL_PREFIXES, MAX_LABELS, MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, type ThpPolicy, type InitConfig } from "./config.js";
export type {
  ChangeKind,
  ConfigPlannedChange,
  ModificationConflict,
  ModificationDisposition,
  ModificationPolicy,
  ModificationWarning,
  ModifyOptions,
  PlannedChange,
  ResourceConvergenceState,
  ResourceKind,
  ResourceResizeStatus,
  SandboxModificationPlan,
  SecretChangeKind,
  SecretModifySpec,
  SecretPlannedChange,
} from "./modify.js";
export {
  LogEntry,
  LogStream,
  LOG_SOURCES,
  DEFAULT_LOG_SOURCES,
  type LogSource,
  type LogReadSource,
  type LogReadOptions,
  type LogStreamOptions,
} from "./logs.js";
export { ExecHandle, ExecOutput, ExecStdin, type ExecEvent, type ExitStatus } from "./exec.js";
export {
  DEFAULT_MAX_OUTPUT_BYTES,
  MAX_ARG_BYTES,
  MAX_ENV_ENTRY_BYTES,
  MAX_PATH_BYTES,
  MAX_USER_BYTES,
  MAX_REQUEST_BYTES,
  MAX_FRAME_PAYLOAD_BYTES,
} from "./limits.js";
export { ExecOptionsBuilder, RLIMIT_RESOURCES, type RlimitResource } from "./exec-options.js";
export { PatchBuilder, MountBuilder, ImageBuilder, type PatchModeOptions } from "./builders.js";
export {
  NetworkBuilder,
  NetworkPolicy,
  NetworkPolicyBuilder,
  RuleBuilder,
  TargetBuilder,
  NetworkConfigError,
  SecretBuilder,
  TlsBuilder,
  ViolationActionBuilder,
  VIOLATION_KINDS,
  DEFAULT_INTERCEPTED_PORTS,
  MAX_PLACEHOLDER_LEN,
  MAX_SECRET_VALUE_LEN,
  MAX_SECRETS,
  type SecretEntry,
  type SecretInjection,
  type SecretRule,
  type TlsConfig,
  type ViolationAction,
  type ViolationKind,
  type NetConfig,
  type Policy as NetworkPolicyJson,
  type Rule as NetworkRule,
  type Target as NetworkTarget,
  type Group as NetworkGroup,
  type PublishedPort,
} from "@microsandbox/netstack";
export {
  SandboxFs,
  FsReadStream,
  FsWriteStream,
  type FsEntry,
  type FsEntryKind,
  type FsReadOptions,
  type FsWriteOptions,
  type FsMkdirOptions,
  type FsRemoveDirOptions,
} from "./fs.js";
export type {
  SandboxConfig,
  PullPolicy,
  RegistryAuth,
  ConfigRegistryAuth,
  LogLevel,
  VolumeMount,
  PatchRecord,
  PatchKind,
} from "./config.js";
export { Images, type ImagePullOptions, type ImageInfo, type PulledImage, type ImagePullProgress } from "./images.js";
export {
  Image,
  ImageHandle,
  type ImageConfigDetail,
  type ImageDetail,
  type ImageLayerDetail,
  type ImagePruneReport,
  type ImageRemoveOptions,
  type ImageSaveOptions,
  type ImageLoadOptions,
} from "./image.js";
export { PullProgressCreate, PullProgressStream, type PullProgress, type PullProgressEvent, type ReferencePullProgress } from "./pull-progress.js";
export {
  MicrosandboxError,
  InvalidConfigError,
  SandboxNotFoundError,
  SandboxAlreadyExistsError,
  SandboxStillRunningError,
  SandboxNotRunningError,
  SandboxDrainingError,
  SandboxPausedError,
  CorruptConfigError,
  ImageNotFoundError,
  ImageError,
  ImageInUseError,
  RegistryAuthError,
  KernelNotFoundError,
  QemuNotFoundError,
  AgentTimeoutError,
  RuntimeError,
  ProtocolError,
  ExecFailedError,
  ExecTimeoutError,
  OutputLimitError,
  StdinUnavailableError,
  SandboxFsOpsError,
  InvalidCursorError,
  MissedRotationError,
  VolumeNotFoundError,
  VolumeAlreadyExistsError,
  SnapshotNotFoundError,
  SnapshotAlreadyExistsError,
  SnapshotIntegrityError,
  fromNative,
  fromOci,
} from "./errors.js";
// Exec, filesystem, errors and network rules parity (issue 14): the reference SDK's names.
export { ExecSink } from "./exec.js";
export {
  Stdin,
  type StdinSpec,
  type StdinSpec as StdinMode,
  type Rlimit,
  type ExecCallOptions,
  type ExecOptionsInput,
  type ExecOptionsSnapshot,
} from "./exec-options.js";
export { FsWriteSink, SandboxFsOps, type FsMetadata } from "./fs.js";
export {
  LibkrunfwNotFoundError,
  IoError,
  HttpError,
  CloudHttpError,
  DatabaseError,
  NoDefaultCommandError,
  JsonError,
  NixError,
  TerminalError,
  PatchFailedError,
  MetricsDisabledError,
  MetricsUnavailableError,
  UnsupportedOperationError,
  UnsupportedError,
  CustomError,
  type MicrosandboxErrorCode,
} from "./errors.js";
export {
  Destination,
  PortRange,
  PolicyRules,
  RuleDestinationBuilder,
  policyFromSpec,
  targetOf,
  MAX_POLICY_RULES,
  type DestinationInput,
  type Direction,
  type PolicyProtocol,
  type PolicyRule,
  type PolicySpec,
  type Action,
  type Protocol,
  type Group as DestinationGroup,
  GROUPS as DestinationGroups,
} from "@microsandbox/netstack";
import { PolicyRules as _PolicyRules, type PolicyRule as _PolicyRule } from "@microsandbox/netstack";
/** The reference SDK's `Rule` factory (`Rule.allowEgress("1.1.1.1")`); the type is one rule of a `PolicySpec`. */
export const Rule = _PolicyRules;
export type Rule = _PolicyRule;
export {
  Volume,
  VolumeBuilder,
  VolumeHandle,
  VolumeFs,
  VolumeFsReadStream,
  VolumeFsWriteSink,
  MAX_VOLUME_LABELS,
  MAX_DISK_VOLUME_MIB,
  type VolumeConfig,
  type VolumeKind,
  type VolumeDiskFormat,
  type VolumeFsEntry,
  type VolumeFsEntryKind,
  type VolumeFsMetadata,
  type VolumeFsReadOptions,
} from "./volume.js";
export {
  Snapshot,
  SnapshotBuilder,
  SnapshotHandle,
  SPARSE_SHA256,
  MAX_SNAPSHOT_LABELS,
  type SnapshotConfig,
  type SnapshotScope,
  type SnapshotState,
  type SnapshotVerifyReport,
} from "./snapshot.js";
export { type SaveOpts } from "./snapshot-archive.js";
export { type WarmupOptions, type WarmupResult } from "./warmup.js";
export { type ForkOptions } from "./fork.js";
export { doctor, doctorExitCode, MIN_QEMU_VERSION, MIN_E2FSPROGS_VERSION, DOCTOR_INSTALL_ALL, type DoctorCheck, type DoctorReport, type DoctorStatus, type DoctorOptions, type DoctorAssets } from "./doctor.js";
