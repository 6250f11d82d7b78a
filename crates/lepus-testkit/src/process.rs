//! Running helper programs under a deadline, and looking at node processes by pid.
//!
//! A node is started with `rabbitmq-server -detached`, so it is not our child: all we have
//! is the pid RabbitMQ writes to its pid file. Liveness therefore comes from `/proc`, and a
//! pid only counts as our node while its command line carries the node's own directory
//! (`-home <dir>`), so a recycled pid is never signalled.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::Error;

/// What a finished helper program printed.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// Standard output and error together, trimmed, for error messages.
    pub(crate) fn combined(&self) -> String {
        let mut text = self.stdout.trim().to_owned();
        let err = self.stderr.trim();
        if !err.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(err);
        }
        text
    }
}

/// Runs `cmd` to completion, killing its whole process group once `timeout` has passed.
///
/// Output goes to anonymous files rather than pipes: a daemon the program leaves behind
/// (the detached Erlang VM) then cannot keep a pipe, or this call, open.
pub(crate) fn run(cmd: &mut Command, timeout: Duration, what: &str) -> Result<Output, Error> {
    let mut out = tempfile::tempfile().map_err(|e| Error::io("creating a temporary file", e))?;
    let mut err = tempfile::tempfile().map_err(|e| Error::io("creating a temporary file", e))?;
    let out_handle = out
        .try_clone()
        .map_err(|e| Error::io("duplicating a file handle", e))?;
    let err_handle = err
        .try_clone()
        .map_err(|e| Error::io("duplicating a file handle", e))?;
    cmd.stdin(Stdio::null())
        .stdout(out_handle)
        .stderr(err_handle)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(Error::io(format!("waiting for {what}"), e)),
        }
        let now = Instant::now();
        if now >= deadline {
            if let Ok(pgid) = i32::try_from(child.id()) {
                // Best effort: the group may already be gone.
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut detail = read_back(&mut out);
            detail.push_str(&read_back(&mut err));
            return Err(Error::Timeout {
                what: what.to_owned(),
                timeout,
                detail,
            });
        }
        sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    Ok(Output {
        status,
        stdout: read_back(&mut out),
        stderr: read_back(&mut err),
    })
}

fn read_back(file: &mut File) -> String {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// True while `pid` exists and is not a zombie waiting to be reaped by its parent.
pub(crate) fn alive(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim_start)
    };
    let leader_running = field("State:")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X');
    // A killed multi-threaded process shows its leader as a zombie while the other
    // threads are still exiting, and its sockets stay open until the last one is gone.
    let threads = field("Threads:")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    leader_running || threads > 1
}

/// True if process `pid` is an Erlang VM started with `-home <dir>`, i.e. our node.
pub(crate) fn runs_in(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let dir = dir.as_os_str().as_bytes();
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(arg) = args.next() {
        if arg == b"-home" {
            return args.next() == Some(dir);
        }
    }
    false
}

/// The pid of a live Erlang VM running with `-home <dir>`, found by scanning `/proc`.
pub(crate) fn find_vm(dir: &Path) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| runs_in(*pid, dir) && alive(*pid))
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub(crate) fn send(pid: i32, sig: Signal) -> Result<(), Error> {
    match signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(Error::io(
            format!("sending {sig} to pid {pid}"),
            std::io::Error::from(errno),
        )),
    }
}

/// Waits until `pid` is gone; false if it still lives after `timeout`.
pub(crate) fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
    true
}
