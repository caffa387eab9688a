import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// Two projects:
//   unit - fast, no VMs: `npx vitest run --project unit` (npm run test:unit)
//   e2e  - boot real microVMs (*.e2e.test.ts): `npx vitest run --project e2e`
// `npx vitest run` runs both.
//
// Unit tests import the SDK from source (alias below), so they need no build.
// e2e tests spawn the built CLI and a fixture that imports the built SDK, so the
// e2e project builds both first (global setup, incremental `tsc -b`).

const sdkSource = fileURLToPath(new URL("./packages/sdk/src/index.ts", import.meta.url));
const netstackSource = fileURLToPath(new URL("./packages/netstack/src/index.ts", import.meta.url));
const contractSource = fileURLToPath(new URL("./packages/contract/src/index.ts", import.meta.url));
const ociSource = fileURLToPath(new URL("./packages/oci/src/index.ts", import.meta.url));

export default defineConfig({
  test: {
    projects: [
      {
        resolve: { alias: { "@microsandbox/sdk": sdkSource, "@microsandbox/oci": ociSource, "@microsandbox/netstack": netstackSource, "@microsandbox/contract": contractSource } },
        test: {
          name: "unit",
          include: ["packages/*/test/**/*.test.ts"],
          exclude: ["**/node_modules/**", "**/dist/**", "**/*.e2e.test.ts"],
          environment: "node",
        },
      },
      {
        test: {
          name: "e2e",
          include: ["packages/*/test/**/*.e2e.test.ts", "test-vms/registry/**/*.e2e.test.ts", "test-vms/install/**/*.e2e.test.ts"],
          exclude: ["**/node_modules/**", "**/dist/**"],
          environment: "node",
          globalSetup: ["./vitest.e2e-setup.ts"],
          // VMs run under software emulation (TCG) on 2 cores: generous timeouts,
          // one test file at a time, each in its own process (attached sandboxes
          // are tied to the process that created them).
          testTimeout: 120_000,
          hookTimeout: 120_000,
          teardownTimeout: 120_000,
          pool: "forks",
          fileParallelism: false,
        },
      },
    ],
  },
});
