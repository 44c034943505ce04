//! Starting a converter whose whole process tree dies with us.
//!
//! `PR_SET_PDEATHSIG` reaches one process: a converter's children, and
//! anything they start in the background, would outlive a SIGKILLed builder
//! and keep writing into the cache. A PID namespace ends them all by
//! construction: when the namespace's init exits, for whatever reason, the
//! kernel SIGKILLs every other process in it, and the init's exit completes
//! only once they are gone. So the converter runs in a namespace of its own:
//!
//! ```text
//! rootfs-cache
//!  └─ supervisor      the process tokio spawned and waits for; in our namespace;
//!     │               PDEATHSIG SIGKILL; exits as the converter did
//!     └─ init (PID 1) PDEATHSIG SIGKILL; reaps orphans; exits when the converter does
//!        └─ converter (PID 2), and everything it starts
//! ```
//!
//! The converter is not the init itself: an init ignores every signal it has
//! no handler for when it comes from inside its namespace (a converter that
//! does `kill -SEGV $$` would carry on), and it inherits every orphan of the
//! tree. The init passes the converter's wait status to the supervisor
//! through a pipe, and the supervisor ends the same way (the same exit code,
//! or the same signal, with core dumps disabled), so the caller sees the
//! converter's status. On SIGTERM the supervisor SIGKILLs the init and
//! exits once it has been reaped, which is after the last process of the
//! namespace is gone: [`stop`] returns when nothing of the tree is left.
//!
//! Without privileges the namespace comes with a user namespace that maps
//! only the caller's own uid and gid onto themselves. Where neither can be
//! created (a seccomp filter, `user.max_user_namespaces = 0`), the
//! converter runs as it used to: in its own process group, with
//! PDEATHSIG, which a grandchild that leaves the group escapes; a warning
//! says so once per process.
//!
//! Between `fork` and `exec` only async-signal-safe system calls are made:
//! nothing allocates, locks or panics, everything the children need is
//! computed before the fork, and the two extra processes are created with
//! the raw `clone` system call (glibc's `fork` would run `atfork` handlers
//! and take the allocator's locks, which another thread may have held when
//! the process was forked). The supervisor and the init never exec, so they
//! close every descriptor they inherited (mounts, locks, other builds'
//! pipes) except their status pipe.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libc::{c_int, c_long, c_uint, pid_t};

/// How long a supervisor told to stop may take to tear the namespace down
/// before the whole process group is SIGKILLed instead.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Exit status of a supervisor whose parent died before it could watch it.
const EXIT_ORPHANED: c_int = 125;
/// Exit status when the init cannot fork the converter (the message is on
/// the converter's stderr).
const EXIT_NO_FORK: c_int = 126;

/// How the converter's tree is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Containment {
    /// In a PID namespace of its own: it dies with its supervisor.
    PidNamespace,
    /// In a process group with PDEATHSIG: namespaces were refused with this
    /// errno.
    ProcessGroup {
        /// Why the namespace could not be created.
        errno: i32,
    },
}

/// A started converter.
pub(crate) struct ConverterProcess {
    /// The supervisor (or, in a process group, the converter itself).
    pub(crate) child: tokio::process::Child,
    /// How its tree is held.
    pub(crate) containment: Containment,
    /// The child's PID, which is also its process group's ID.
    pid: Option<rustix::process::Pid>,
}

/// Spawns `command` as the only process of a new PID namespace (see the
/// module docs), in its own process group, with SIGKILL as its parent-death
/// signal. Its arguments, environment and standard streams are the
/// command's.
pub(crate) fn spawn(mut command: tokio::process::Command) -> io::Result<ConverterProcess> {
    let (report_read, report_write) = report_pipe()?;
    let plan = Plan {
        parent: std::process::id() as pid_t,
        report: report_write.as_raw_fd(),
        uid_map: MapLine::identity(rustix::process::geteuid().as_raw()),
        gid_map: MapLine::identity(rustix::process::getegid().as_raw()),
    };
    command.as_std_mut().process_group(0);
    // SAFETY: `Plan::enter` makes only async-signal-safe system calls on
    // data copied into the closure before the fork (see the module docs).
    unsafe {
        command.as_std_mut().pre_exec(move || plan.enter());
    }
    let child = command.spawn()?;
    drop(report_write);
    let containment = read_report(&report_read);
    if let Containment::ProcessGroup { errno } = containment {
        warn_once(errno);
    }
    let pid = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
    Ok(ConverterProcess { child, containment, pid })
}

/// Ends the converter's whole tree and returns once it is gone (in a PID
/// namespace) or has been sent SIGKILL (in a process group).
pub(crate) async fn stop(process: &mut ConverterProcess) {
    let Some(pid) = process.pid else { return };
    if process.containment == Containment::PidNamespace {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, process.child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = process.child.kill().await;
}

/// After the converter exited: in a PID namespace its tree is already gone;
/// in a process group, what is left of the group is sent SIGKILL (the group
/// ID cannot have been reused while any member lives).
pub(crate) fn end_leftovers(process: &ConverterProcess) {
    if let (Containment::ProcessGroup { .. }, Some(pid)) = (process.containment, process.pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// "killed by signal 11 (SIGSEGV)" for a status that ends in a signal.
pub(crate) fn killed_by(status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt as _;
    let signal = status.signal()?;
    Some(format!("killed by signal {signal} ({})", signal_name(signal)))
}

/// The conventional name of a signal number.
pub(crate) fn signal_name(signal: i32) -> String {
    #[rustfmt::skip]
    const NAMES: [&str; 31] = [
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL", "SIGUSR1",
        "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP",
        "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO",
        "SIGPWR", "SIGSYS",
    ];
    match usize::try_from(signal) {
        Ok(n @ 1..=31) => NAMES[n - 1].to_owned(),
        _ if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        _ => "an unknown signal".to_owned(),
    }
}

fn warn_once(errno: i32) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "cannot give converters a PID namespace ({}): a converter's descendants that leave its process group can outlive this process",
            io::Error::from_raw_os_error(errno)
        );
    }
}

/// A pipe whose read end does not block: the supervisor writes one report
/// into it before the converter is exec'd.
fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child wrote before the converter was exec'd: `N`, or `G` and
/// the errno that refused the namespace.
fn read_report(read_end: &OwnedFd) -> Containment {
    let mut report = [0u8; 5];
    match rustix::io::read(read_end, &mut report) {
        Ok(5) if report[0] == b'N' => Containment::PidNamespace,
        Ok(5) if report[0] == b'G' => {
            Containment::ProcessGroup { errno: i32::from_ne_bytes([report[1], report[2], report[3], report[4]]) }
        }
        _ => Containment::ProcessGroup { errno: libc::EPROTO },
    }
}

/// One line of a user namespace's `uid_map` or `gid_map`, formatted before
/// the fork.
#[derive(Clone, Copy)]
struct MapLine {
    bytes: [u8; 40],
    len: usize,
}

impl MapLine {
    /// `ID ID 1`: the id maps onto itself and nothing else is mapped.
    fn identity(id: u32) -> Self {
        let text = format!("{id} {id} 1\n");
        let mut bytes = [0u8; 40];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Self { bytes, len: text.len() }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Everything the forked child needs, copied into it.
#[derive(Clone, Copy)]
struct Plan {
    /// The builder, which must still be the child's parent once it has set
    /// its parent-death signal.
    parent: pid_t,
    /// The report pipe's write end.
    report: RawFd,
    uid_map: MapLine,
    gid_map: MapLine,
}

impl Plan {
    /// Runs in the forked child before exec. Returns `Ok` in the process
    /// that is to exec the converter; the supervisor never returns.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: async-signal-safe system calls only, on our own data.
        unsafe {
            die_with_parent()?;
            if libc::getppid() != self.parent {
                libc::_exit(EXIT_ORPHANED);
            }
            match self.unshare_pid_namespace()? {
                Ok(()) => {
                    self.report(b'N', 0);
                    become_supervisor()
                }
                Err(errno) => {
                    // As before namespaces: this process execs the converter,
                    // in its own process group, with PDEATHSIG.
                    self.report(b'G', errno);
                    Ok(())
                }
            }
        }
    }

    /// Makes the next child the init of a new PID namespace. `Ok(Err(errno))`
    /// when namespaces are unavailable; `Err` when a user namespace was made
    /// but could not be set up (the child must not run in it).
    unsafe fn unshare_pid_namespace(&self) -> io::Result<Result<(), i32>> {
        // SAFETY: plain system calls; see the caller.
        unsafe {
            if libc::unshare(libc::CLONE_NEWPID) == 0 {
                return Ok(Ok(()));
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID) != 0 {
                return Ok(Err(errno()));
            }
            // Only our own ids, onto themselves: setgroups must be denied
            // before an unprivileged process may write gid_map (the file is
            // missing before Linux 3.19, where no denial is needed).
            let _ = write_file(c"/proc/self/setgroups", b"deny");
            write_file(c"/proc/self/uid_map", self.uid_map.as_bytes())?;
            write_file(c"/proc/self/gid_map", self.gid_map.as_bytes())?;
            Ok(Ok(()))
        }
    }

    unsafe fn report(&self, mode: u8, errno: i32) {
        let e = errno.to_ne_bytes();
        let report = [mode, e[0], e[1], e[2], e[3]];
        // SAFETY: a write of our own buffer; the parent reads whatever came.
        unsafe { libc::write(self.report, report.as_ptr().cast(), report.len()) };
    }
}

/// Forks the namespace's init and watches it: returns `Ok` only in the
/// converter's process (PID 2), and never in the supervisor.
unsafe fn become_supervisor() -> io::Result<()> {
    // SAFETY: async-signal-safe system calls only; see the module docs.
    unsafe {
        reset_signal_dispositions();
        // SIGCHLD and SIGTERM are taken with sigwaitinfo; blocked before the
        // fork so that neither can be missed.
        let watched = signal_set(&[libc::SIGCHLD, libc::SIGTERM]);
        let mut inherited: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &watched, &mut inherited) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status_pipe = [0 as c_int; 2];
        if libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let [status_read, status_write] = status_pipe;
        match raw_fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => run_init(status_read, status_write, &inherited),
            init => {
                libc::close(status_write);
                close_all_except(status_read);
                supervise(init, status_read, &watched)
            }
        }
    }
}

/// PID 1: forks the converter, reaps every process of the namespace until
/// the converter itself exits, hands its status to the supervisor and
/// exits, which ends the namespace. Returns `Ok` only in the converter.
unsafe fn run_init(status_read: c_int, status_write: c_int, inherited: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: async-signal-safe system calls only; see the module docs.
    unsafe {
        libc::close(status_read);
        if die_with_parent().is_err() || !reader_alive(status_write) {
            // The supervisor is gone (or cannot be followed): so are we.
            libc::_exit(EXIT_ORPHANED);
        }
        match raw_fork() {
            -1 => {
                let message = b"rootfs-cache: cannot fork the converter inside its PID namespace\n";
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(EXIT_NO_FORK);
            }
            0 => {
                libc::close(status_write);
                libc::sigprocmask(libc::SIG_SETMASK, inherited, std::ptr::null_mut());
                Ok(())
            }
            converter => {
                close_all_except(status_write);
                let status = reap_until(converter).to_ne_bytes();
                libc::write(status_write, status.as_ptr().cast(), status.len());
                libc::_exit(0);
            }
        }
    }
}

/// The supervisor: waits for the init, SIGKILLs it on SIGTERM, and ends as
/// the converter did (or as the init did, when it died before telling).
unsafe fn supervise(init: pid_t, status_read: c_int, watched: &libc::sigset_t) -> ! {
    // SAFETY: async-signal-safe system calls only; see the module docs.
    unsafe {
        let mut init_status: c_int = 0;
        loop {
            if libc::sigwaitinfo(watched, std::ptr::null_mut()) == libc::SIGTERM {
                libc::kill(init, libc::SIGKILL);
            }
            match libc::waitpid(init, &mut init_status, libc::WNOHANG) {
                r if r == init => break,
                -1 if errno() != libc::EINTR => libc::_exit(EXIT_ORPHANED),
                _ => {}
            }
        }
        let mut told = [0u8; 4];
        let status = if libc::read(status_read, told.as_mut_ptr().cast(), told.len()) == 4 {
            c_int::from_ne_bytes(told)
        } else {
            init_status
        };
        exit_like(status)
    }
}

/// Reaps children until `converter` exits; returns its wait status.
unsafe fn reap_until(converter: pid_t) -> c_int {
    // SAFETY: waitpid on our own children.
    unsafe {
        loop {
            let mut status: c_int = 0;
            match libc::waitpid(-1, &mut status, 0) {
                r if r == converter => return status,
                -1 if errno() != libc::EINTR => return 1 << 8, // "exited 1": nothing left to wait for
                _ => {}
            }
        }
    }
}

/// Exits with the same status: the exit code, or death by the same signal
/// (without a core dump of this copy of the builder).
unsafe fn exit_like(status: c_int) -> ! {
    // SAFETY: async-signal-safe system calls only.
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::prctl(libc::PR_SET_DUMPABLE, 0 as c_long, 0 as c_long, 0 as c_long, 0 as c_long);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
            let none = signal_set(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(EXIT_ORPHANED)
    }
}

/// SIGKILL when the parent dies.
unsafe fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_long, 0 as c_long, 0 as c_long, 0 as c_long) }
        != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the status pipe still has its reader (the supervisor).
unsafe fn reader_alive(write_end: c_int) -> bool {
    let mut poll = libc::pollfd { fd: write_end, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready >= 0 && poll.revents & (libc::POLLERR | libc::POLLHUP) == 0
}

/// fork(2) as the bare system call: no `atfork` handlers, no locks.
unsafe fn raw_fork() -> pid_t {
    // SAFETY: clone with only the exit signal set and no new stack behaves
    // as fork; the callers use async-signal-safe calls only afterwards.
    unsafe {
        libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_long, 0 as c_long, 0 as c_long, 0 as c_long, 0 as c_long)
            as pid_t
    }
}

/// Puts every signal back to its default action, so no handler of the
/// builder ever runs in these copies of it.
unsafe fn reset_signal_dispositions() {
    // SAFETY: sigaction with a zeroed (SIG_DFL) action; numbers the kernel
    // refuses (SIGKILL, SIGSTOP, glibc's internal ones) fail harmlessly.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for signal in 1..65 {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn signal_set(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Closes every descriptor but `keep`.
unsafe fn close_all_except(keep: c_int) {
    // SAFETY: closing descriptors this process will never use again.
    unsafe {
        let keep = keep as c_uint;
        if keep > 0 {
            close_range(0, keep - 1);
        }
        close_range(keep + 1, c_uint::MAX);
    }
}

unsafe fn close_range(first: c_uint, last: c_uint) {
    // SAFETY: as `close_all_except`.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) == 0 {
            return;
        }
        // Before Linux 5.9: one by one, up to the descriptor limit.
        let mut limit: libc::rlimit = std::mem::zeroed();
        let highest = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as c_uint
        } else {
            1024
        };
        for fd in first..=last.min(highest) {
            libc::close(fd as c_int);
        }
    }
}

/// Writes `data` to the file at `path` in one call.
unsafe fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and our own buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != data.len() as isize {
            return Err(error);
        }
        Ok(())
    }
}

fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// Runs `sh -c SCRIPT` in a tree; returns its status and stderr.
    async fn run(script: &str) -> (ExitStatus, Containment, String) {
        let mut command = tokio::process::Command::new("/bin/sh");
        command.arg("-c").arg(script).arg("arg0").arg("first arg");
        command.env("TREE_TEST", "from the parent");
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut process = spawn(command).unwrap();
        let mut stderr = process.child.stderr.take().unwrap();
        let mut text = String::new();
        let (status, _) = tokio::join!(process.child.wait(), stderr.read_to_string(&mut text));
        (status.unwrap(), process.containment, text)
    }

    #[tokio::test]
    async fn the_converter_gets_its_arguments_environment_and_status() {
        let (status, _, stderr) = run("echo \"$0|$1|$TREE_TEST\" >&2; read x; echo \"stdin:$x\" >&2; exit 3").await;
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "arg0|first arg|from the parent\nstdin:\n");
    }

    #[tokio::test]
    async fn a_converter_killed_by_a_signal_is_reported_with_that_signal() {
        let (status, containment, _) = run("kill -SEGV $$").await;
        assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?} ({containment:?})");
        assert!(!status.core_dumped(), "the supervisor dumped core");
        assert_eq!(killed_by(status).as_deref(), Some("killed by signal 11 (SIGSEGV)"));
    }

    #[tokio::test]
    async fn the_converter_is_not_the_namespace_init_and_its_tree_ends_with_it() {
        // A background child that would sleep for ten minutes writes its host
        // PID (from /proc/self/stat: procfs numbers processes in the
        // namespace it was mounted in, ours) before the converter exits.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let f = file.display();
        let script = format!(
            "{{ read -r pid rest < /proc/self/stat; echo $pid > '{f}.tmp'; mv '{f}.tmp' '{f}'; exec sleep 600 2>/dev/null; }} &
             i=0; while [ ! -s '{f}' ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
             echo \"ppid:$PPID\" >&2"
        );
        let (status, containment, stderr) = run(&script).await;
        let pid: i32 = std::fs::read_to_string(&file).unwrap().trim().parse().unwrap();
        if containment != Containment::PidNamespace {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
            eprintln!("SKIPPED: no PID namespace here ({containment:?})");
            return;
        }
        assert!(status.success(), "{status:?}: {stderr}");
        assert_eq!(stderr, "ppid:1\n", "the converter's parent is the namespace's init");
        // The supervisor exits after the init, and the init's exit completes
        // once every process of its namespace is gone.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the background child {pid} survived");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(0), "an unknown signal");
    }
}
