//! CPU use of the VMM process, measured on the host (the guest cannot lie about it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Samples {
    /// (when, utime + stime in clock ticks)
    points: VecDeque<(Instant, u64)>,
}

#[derive(Clone)]
pub struct CpuSampler {
    samples: Arc<Mutex<Samples>>,
    vcpus: u32,
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl CpuSampler {
    /// Sample `pid` in the background for as long as the runtime lives.
    pub fn start(pid: u32, vcpus: u32) -> CpuSampler {
        let s = CpuSampler {
            samples: Arc::default(),
            vcpus: vcpus.max(1),
        };
        let bg = s.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(t) = cpu_ticks(pid) else { return };
                let mut g = bg.samples.lock().unwrap();
                let now = Instant::now();
                g.points.push_back((now, t));
                while g.points.len() > 2
                    && now.duration_since(g.points[0].0) > WINDOW + SAMPLE_EVERY
                {
                    g.points.pop_front();
                }
            }
        });
        s
    }

    /// Percent of the sandbox's vCPUs used over the last second, 0..=100.
    pub fn percent(&self) -> f64 {
        let g = self.samples.lock().unwrap();
        let (Some(first), Some(last)) = (g.points.front(), g.points.back()) else {
            return 0.0;
        };
        let dt = last.0.duration_since(first.0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let used = (last.1.saturating_sub(first.1)) as f64 / hz;
        (used / dt / self.vcpus as f64 * 100.0).clamp(0.0, 100.0)
    }
}
