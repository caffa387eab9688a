//! Starting a command: `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`, then exec.
//!
//! The child is born in the commands' memory cgroup (memcg.rs) and borrows the agent's
//! memory until it execs, as posix_spawn's vfork does: no page tables copied, no move
//! between cgroups (measured under TCG: the first command ~7 ms and every later one
//! ~2 ms shorter than std's fork + a write to `cgroup.procs`). glibc 2.36's posix_spawn
//! cannot name a cgroup, so the clone is ours.
//!
//! The child shares the agent's memory and runs on its own small stack until exec: it
//! only makes system calls (no allocation, no locks, no panics), on data the parent
//! prepared. Credentials change through raw system calls: glibc's setuid/setgid would
//! signal every thread of the agent (they change a whole process's credentials), which
//! from a child sharing the agent's memory would corrupt it.

use std::ffi::{CString, NulError};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use libc::{c_char, c_int, c_void};

/// `CLONE_INTO_CGROUP` (Linux 5.7), not in the libc crate's list.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The child's stack until exec: its frames, a sigaction and a few syscalls.
const CHILD_STACK: usize = 64 * 1024;

/// `struct clone_args` (linux/sched.h), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How the child's session is set up.
pub enum Session {
    /// Its own process group (the host signals the group).
    Group,
    /// Its own session, with the terminal on fd 0 as controlling terminal.
    Terminal,
}

/// Everything a command needs, as C strings, made before the clone.
pub struct Plan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The fds that become the child's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    pub session: Session,
    /// `(uid, gid)` to switch to.
    pub ids: Option<(u32, u32)>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The cgroup to be born in (an O_DIRECTORY fd).
    pub cgroup: Option<RawFd>,
}

impl Plan {
    /// `path` run with `argv` (argv[0] included) and the environment `env`.
    pub fn new(path: &str, argv: &[&str], env: &[(String, String)]) -> Result<Plan, NulError> {
        let mut plan = Plan {
            path: CString::default(),
            argv: Vec::new(),
            envp: env
                .iter()
                .map(|(k, v)| CString::new(format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            stdio: [0, 1, 2],
            session: Session::Group,
            ids: None,
            rlimits: Vec::new(),
            cgroup: None,
        };
        plan.retarget(path, argv)?;
        Ok(plan)
    }

    /// Another program and argv, the rest as planned.
    pub fn retarget(&mut self, path: &str, argv: &[&str]) -> Result<(), NulError> {
        self.path = CString::new(path)?;
        self.argv = argv
            .iter()
            .map(|a| CString::new(*a))
            .collect::<Result<_, _>>()?;
        Ok(())
    }
}

/// What the child reads: raw pointers into a [`Plan`] the parent keeps alive (it waits,
/// CLONE_VFORK) and the slot the child leaves its errno in when it cannot exec.
struct ChildView {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdio: [RawFd; 3],
    terminal: bool,
    ids: Option<(u32, u32)>,
    rlimits: *const (libc::__rlimit_resource_t, u64),
    rlimits_len: usize,
    errno: AtomicI32,
}

/// Starts the plan's command; returns its pid once it has exec'd. An exec that fails
/// (ENOENT, EACCES, ...) is this error: the child is gone by then (the reaper reaps it).
pub fn spawn(plan: &Plan) -> io::Result<u32> {
    // NULL-terminated arrays of pointers into the plan's strings, as execve takes them.
    let pointers = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (argv, envp) = (pointers(&plan.argv), pointers(&plan.envp));
    let view = ChildView {
        path: plan.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: plan.stdio,
        terminal: matches!(plan.session, Session::Terminal),
        ids: plan.ids,
        rlimits: plan.rlimits.as_ptr(),
        rlimits_len: plan.rlimits.len(),
        errno: AtomicI32::new(0),
    };
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: CHILD_STACK as u64,
        ..Default::default()
    };
    if let Some(fd) = plan.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // All signals blocked across the clone: no handler of the agent may run in the child
    // (it would run on the agent's memory); the child resets them before unblocking.
    // SAFETY: sigset out-pointers are valid; the clone's child only runs `child_main`
    // on `stack`, reading `view`, both alive until the clone returns (CLONE_VFORK).
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let view_ptr = &view as *const ChildView as *mut c_void;
        let mut pid = clone3_run(&mut args, child_main, view_ptr);
        if pid < 0 && args.flags & CLONE_INTO_CGROUP != 0 {
            // The cgroup went away (a root command can remove it once it is empty): the
            // command runs in the root cgroup, as it did before there was one.
            args.flags &= !CLONE_INTO_CGROUP;
            args.cgroup = 0;
            pid = clone3_run(&mut args, child_main, view_ptr);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    drop(stack);
    if pid < 0 {
        return Err(io::Error::from_raw_os_error(-pid as i32));
    }
    match view.errno.load(Ordering::Acquire) {
        0 => Ok(pid as u32),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The clone3 system call; in the child (on the new stack) `child(arg)`, which never
/// returns. The parent gets the child's pid or -errno.
///
/// # Safety
/// `args` must name a valid stack for the child; `arg` must stay valid until the child
/// execs or exits (CLONE_VFORK makes the parent wait for that).
unsafe fn clone3_run(
    args: &mut CloneArgs,
    child: extern "C" fn(*mut c_void) -> !,
    arg: *mut c_void,
) -> isize {
    let ret: isize;
    // SAFETY: see the function's contract. The child path never comes back into this
    // frame: it starts `child` on the fresh stack with a zero frame pointer.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The child, until exec: stdio, credentials, session, limits, signals, exec.
extern "C" fn child_main(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the parent's ChildView, alive while the parent waits; only
    // system calls follow.
    unsafe {
        let v = &*(arg as *const ChildView);
        let fail = |v: &ChildView| -> ! {
            v.errno.store(*libc::__errno_location(), Ordering::Release);
            libc::_exit(127)
        };
        // Handlers go back to the default (they belong to the agent); SIGPIPE too, which
        // Rust's runtime ignores. Other ignored signals stay ignored, as with std.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        for (target, &fd) in v.stdio.iter().enumerate() {
            let target = target as c_int;
            let rc = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if rc < 0 {
                fail(v);
            }
        }
        // As std does: the group first, supplementary groups dropped, then the user.
        if let Some((uid, gid)) = v.ids {
            if libc::syscall(libc::SYS_setgid, gid as libc::c_long) != 0 {
                fail(v);
            }
            if libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            ) != 0
                && *libc::__errno_location() != libc::EPERM
            {
                fail(v);
            }
            if libc::syscall(libc::SYS_setuid, uid as libc::c_long) != 0 {
                fail(v);
            }
        }
        if v.terminal {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        } else {
            libc::setpgid(0, 0);
        }
        for i in 0..v.rlimits_len {
            let (res, n) = *v.rlimits.add(i);
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(res, &lim) != 0 {
                fail(v);
            }
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8 as libc::c_long,
        );
        libc::execve(v.path, v.argv, v.envp);
        fail(v)
    }
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// /dev/null, read-write and close-on-exec (a command's stdin without one).
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        assert_eq!(
            unsafe { libc::waitpid(pid as i32, &mut status, 0) },
            pid as i32
        );
        status
    }

    fn run(path: &str, argv: &[&str], env: &[(String, String)]) -> (String, String, i32) {
        let mut plan = Plan::new(path, argv, env).unwrap();
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let null = dev_null().unwrap();
        plan.stdio = [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let pid = spawn(&plan).unwrap();
        drop((out_w, err_w, null));
        let (mut out, mut err) = (String::new(), String::new());
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        std::fs::File::from(err_r).read_to_string(&mut err).unwrap();
        (out, err, wait(pid))
    }

    use std::os::fd::AsRawFd;

    #[test]
    fn runs_a_command_with_exactly_its_argv_env_and_stdio() {
        let env = [("GREETING".to_string(), "hi there".to_string())];
        let (out, err, status) = run(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "echo \"$GREETING|$0|$1|$(cat)\"; echo oops >&2; env | wc -l; exit 3",
                "one",
            ],
            &env,
        );
        // $0 is argv[1] of `sh -c` and the environment has nothing but GREETING (and
        // what sh itself sets: PWD, SHLVL); stdin is /dev/null.
        assert_eq!(out.lines().next(), Some("hi there|one||"));
        let vars: usize = out.lines().nth(1).unwrap().trim().parse().unwrap();
        assert!((1..=4).contains(&vars), "{out}");
        assert_eq!(err, "oops\n");
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 3);
    }

    #[test]
    fn the_child_has_its_own_process_group_and_default_sigpipe() {
        let (out, _, _) = run(
            "/bin/sh",
            &["sh", "-c", "ps -o pgid= -p $$ 2>/dev/null || cut -d' ' -f5 /proc/$$/stat; grep SigIgn /proc/$$/status"],
            &[],
        );
        let mut lines = out.lines();
        let pgid: i32 = lines.next().unwrap().trim().parse().unwrap();
        // SAFETY: getpgrp has no preconditions.
        assert_ne!(pgid, unsafe { libc::getpgrp() });
        // SIGPIPE (13) is bit 12: not ignored in the child although the test runner ignores it.
        let ign = u64::from_str_radix(lines.next().unwrap().split_whitespace().nth(1).unwrap(), 16)
            .unwrap();
        assert_eq!(ign & (1 << 12), 0, "SigIgn {ign:x}");
    }

    #[test]
    fn an_exec_that_fails_is_the_error_of_spawn() {
        let plan = Plan::new("/nonexistent/program", &["program"], &[]).unwrap();
        let e = spawn(&plan).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("msb-spawn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-program");
        std::fs::write(&file, "no #! line\n").unwrap();
        let path = file.to_str().unwrap();
        for (mode, errno) in [(0o644, libc::EACCES), (0o755, libc::ENOEXEC)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let plan = Plan::new(path, &["not-a-program"], &[]).unwrap();
            assert_eq!(
                spawn(&plan).unwrap_err().raw_os_error(),
                Some(errno),
                "mode {mode:o}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // The failed children are gone (exited 127); reap them so the runner stays clean.
        let mut status = 0;
        // SAFETY: waitpid on any child of this test process.
        while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
    }

    #[test]
    fn a_cgroup_fd_that_is_no_cgroup_leaves_the_command_where_the_agent_is() {
        // Not a cgroup directory: clone3 refuses CLONE_INTO_CGROUP, the command still runs.
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let mut plan = Plan::new("/bin/sh", &["sh", "-c", "cat /proc/self/cgroup"], &[]).unwrap();
        plan.cgroup = Some(dir.as_raw_fd());
        let (out_r, out_w) = pipe().unwrap();
        let null = dev_null().unwrap();
        plan.stdio = [null.as_raw_fd(), out_w.as_raw_fd(), null.as_raw_fd()];
        let pid = spawn(&plan).unwrap();
        drop(out_w);
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert!(libc::WIFEXITED(wait(pid)));
        assert_eq!(out, std::fs::read_to_string("/proc/self/cgroup").unwrap());
    }

    #[test]
    fn a_nul_byte_is_refused_before_anything_runs() {
        assert!(Plan::new("/bin/sh", &["sh", "-c\0"], &[]).is_err());
        assert!(Plan::new("/bin/sh", &["sh"], &[("A".into(), "b\0".into())]).is_err());
    }
}
