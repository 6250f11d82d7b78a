//! A node's life after its files are written: boot and wait until its applications run,
//! `rabbitmqctl` calls, stop (SIGTERM, then SIGKILL), kill, and the reason a start failed
//! found in its logs.

use std::fmt::Write as _;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{CTL_TIMEOUT, KILL_TIMEOUT, Node, STOP_TIMEOUT, StartFailure, VM_APPEAR_TIMEOUT};
use crate::diagnose::{diagnose, last_lines, read_from};
use crate::error::Error;
use crate::process;

impl Node {
    /// Launches the node and waits until its applications run.
    pub(crate) fn boot(&self, timeout: Duration) -> Result<(), StartFailure> {
        self.clear_run_files();
        let log_offset = std::fs::metadata(self.log_file()).map_or(0, |m| m.len());
        let out = process::run(
            self.command("rabbitmq-server").arg("-detached"),
            Duration::from_secs(30),
            "rabbitmq-server -detached",
        )?;
        let _ = std::fs::write(self.startup_log(), out.combined());
        if !out.status.success() {
            return Err(self.failure(
                log_offset,
                format!("rabbitmq-server -detached exited with {}", out.status),
            ));
        }
        match self.wait_booted(timeout) {
            Ok(()) => {
                self.save_state(self.pid())?;
                Ok(())
            }
            Err(observed) => {
                let failure = self.failure(log_offset, observed);
                self.kill_leftovers();
                Err(failure)
            }
        }
    }

    /// Waits for the pid file, then lets `rabbitmqctl wait` watch the boot; returns what
    /// was observed when the node does not make it.
    fn wait_booted(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if self.pid().is_some() {
                break;
            }
            let pid_file_written = std::fs::read_to_string(self.pid_file())
                .is_ok_and(|text| text.trim().parse::<i32>().is_ok());
            if pid_file_written {
                return Err("the node's process exited during the boot".to_owned());
            }
            if started.elapsed() > VM_APPEAR_TIMEOUT && process::find_vm(&self.dir).is_none() {
                // The VM may have written the pid file and exited between the two looks.
                if self.pid().is_none() {
                    return Err(
                        "the Erlang VM exited before RabbitMQ wrote its pid file".to_owned()
                    );
                }
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("no pid file after {timeout:?}"));
            }
            sleep(Duration::from_millis(50));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.ctl_wait(left).map_err(|e| e.to_string())
    }

    /// `rabbitmqctl wait`: returns once the node runs its applications, fails as soon as
    /// the node's process is gone, and is bounded by `timeout`.
    pub(crate) fn ctl_wait(&self, timeout: Duration) -> Result<(), Error> {
        let secs = timeout.as_secs().max(1);
        let pid_file = self.pid_file();
        let mut cmd = self.command("rabbitmqctl");
        cmd.arg("-n")
            .arg(&self.name)
            .args(["-q", "wait", "--timeout", &secs.to_string()])
            .arg(&pid_file);
        let out = process::run(
            &mut cmd,
            timeout + Duration::from_secs(10),
            "rabbitmqctl wait",
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Command {
                command: format!("rabbitmqctl wait {}", pid_file.display()),
                status: out.status.to_string(),
                output: out.combined(),
            })
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` and returns its standard output.
    pub(crate) fn ctl(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = self.command("rabbitmqctl");
        cmd.arg("-n").arg(&self.name).args(args);
        let line = format!("rabbitmqctl {}", args.join(" "));
        let out = process::run(&mut cmd, CTL_TIMEOUT, &line)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(Error::Command {
                command: line,
                status: out.status.to_string(),
                output: out.combined(),
            })
        }
    }

    /// SIGKILLs the node (and a VM that never wrote its pid file) and waits until gone.
    pub(crate) fn kill_leftovers(&self) {
        for pid in [self.pid(), process::find_vm(&self.dir)]
            .into_iter()
            .flatten()
        {
            let _ = process::send(pid, Signal::SIGKILL);
            let _ = process::wait_gone(pid, KILL_TIMEOUT);
        }
    }

    /// SIGKILL, then wait until the process is gone.
    pub(crate) fn kill(&self) -> Result<(), Error> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        process::send(pid, Signal::SIGKILL)?;
        if process::wait_gone(pid, KILL_TIMEOUT) {
            Ok(())
        } else {
            Err(Error::State(format!(
                "node {} (pid {pid}) is still alive {KILL_TIMEOUT:?} after SIGKILL",
                self.name
            )))
        }
    }

    /// SIGTERM (RabbitMQ then shuts down in order), SIGKILL after [`STOP_TIMEOUT`].
    pub(crate) fn stop(&self) -> Result<(), Error> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        // A paused node cannot act on SIGTERM.
        process::send(pid, Signal::SIGCONT)?;
        process::send(pid, Signal::SIGTERM)?;
        if process::wait_gone(pid, STOP_TIMEOUT) {
            return Ok(());
        }
        self.kill()
    }

    pub(crate) fn signal(&self, sig: Signal) -> Result<(), Error> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::State(format!("node {} is not running", self.name)))?;
        process::send(pid, sig)
    }

    /// Builds the error for a failed start from what the node wrote after `log_offset`.
    fn failure(&self, log_offset: u64, observed: String) -> StartFailure {
        let log = read_from(&self.log_file(), log_offset);
        let startup = std::fs::read_to_string(self.startup_log()).unwrap_or_default();
        let slogan = std::fs::read_to_string(self.crash_dump())
            .ok()
            .and_then(|dump| {
                dump.lines()
                    .find(|l| l.starts_with("Slogan:"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let (reason, port_conflict) = diagnose(&[&log, &startup, &slogan], &observed);
        let unexplained = log.trim().is_empty() && startup.trim().is_empty() && slogan.is_empty();
        let mut tail = String::new();
        for (path, text) in [
            (self.log_file(), log.as_str()),
            (self.startup_log(), startup.as_str()),
        ] {
            if !text.trim().is_empty() {
                let _ = writeln!(tail, "---- last lines of {} ----", path.display());
                tail.push_str(&last_lines(text, 20));
            }
        }
        if !slogan.is_empty() {
            let _ = writeln!(tail, "---- {} ----", self.crash_dump().display());
            tail.push_str(&slogan.chars().take(600).collect::<String>());
            tail.push('\n');
        }
        StartFailure {
            error: Error::Start {
                node: self.name.clone(),
                reason,
                log_tail: tail,
            },
            retry: port_conflict || unexplained,
        }
    }
}
