//! A minimal QMP client (QEMU's JSON control protocol, one object per line) over the
//! unix socket QEMU listens on (`-qmp unix:...,server=on,wait=off`): capabilities
//! negotiation, then one command at a time (`stop`, `cont`). Events QEMU
//! sends in between are skipped. Lines are capped: QEMU is ours, but a runaway reply
//! must not grow our memory without bound.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest QMP line read (replies here are a few hundred bytes).
const MAX_LINE: usize = 1 << 20;
/// How long one command may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connect (retrying for up to `wait`: QEMU creates the socket as it starts) and
    /// negotiate capabilities.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Qmp, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("QMP socket {}: {e}", path.display()))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (rd, wr) = stream.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd),
            wr,
        };
        let greeting = q.read_line().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: unexpected greeting {greeting}"));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    /// Run one command; its `return` value, or QEMU's error description.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, String> {
        let mut req = json!({ "execute": command });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.wr
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("QMP {command}: {e}"))?;
        let answer = async {
            loop {
                let v = self.read_line().await?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    let desc = e.get("desc").and_then(Value::as_str).unwrap_or("error");
                    return Err(format!("QMP {command}: {desc}"));
                }
                // an event ({"event": ...}): not our answer
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, answer)
            .await
            .map_err(|_| format!("QMP {command}: no answer in {REPLY_TIMEOUT:?}"))?
    }

    async fn read_line(&mut self) -> Result<Value, String> {
        let mut buf = Vec::new();
        let n = (&mut self.rd)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| format!("QMP: {e}"))?;
        if n == 0 {
            return Err("QMP: QEMU closed the connection".into());
        }
        if !buf.ends_with(b"\n") {
            return Err(format!("QMP: a line over {MAX_LINE} bytes"));
        }
        serde_json::from_slice(&buf).map_err(|e| format!("QMP: not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, answers capabilities, emits an event before each answer.
    async fn fake(listener: UnixListener) {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut line = String::new();
        while rd.read_line(&mut line).await.unwrap() > 0 {
            let v: Value = serde_json::from_str(&line).unwrap();
            wr.write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\n")
                .await
                .unwrap();
            let reply = match v["execute"].as_str().unwrap() {
                "query-status" => json!({"return": {"status": "paused", "running": false}}),
                "bogus" => json!({"error": {"class": "CommandNotFound", "desc": "no bogus"}}),
                _ => json!({"return": {}}),
            };
            wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            line.clear();
        }
        let mut rest = Vec::new();
        let _ = rd.read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("msb-qmp-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake(listener));
        let mut q = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(q.execute("stop", None).await.unwrap(), json!({}));
        assert_eq!(
            q.execute("query-status", None).await.unwrap()["status"],
            "paused"
        );
        assert_eq!(
            q.execute("bogus", None).await.unwrap_err(),
            "QMP bogus: no bogus"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
