import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
process.env.MSB_HOME = "/tmp/msb-dbg";
const sb = await Sandbox.builder("dbg").replace().network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.allowHost()).build())).create();
try {
  const r = await sb.exec("sh", ["-c", "cat /proc/uptime; for i in $(seq 1 40); do echo $(cut -d' ' -f1 /proc/uptime) $(cat /sys/class/net/eth0/carrier) $(cat /sys/class/net/eth0/operstate); grep -q up /sys/class/net/eth0/operstate && break; sleep 0.05; done; dmesg | grep -i -E 'virtio_net|eth0|link' | tail -5"]);
  console.log(r.stdout(), r.stderr());
} finally { await sb.stop(); }
process.exit(0);
