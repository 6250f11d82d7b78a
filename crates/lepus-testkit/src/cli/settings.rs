//! The environment `lepus-broker` reads, and the fixed layout it puts nodes in: node `i`
//! is `<prefix><i>@localhost` in `<dir>/<prefix><i>`, with ports `5662+10*i` (AMQP),
//! `5661+10*i` (amqps), `15662+10*i` (management) and `25662+10*i` (distribution), all
//! plus the offset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::node::{Node, Ports};
use crate::tls::ServerTls;

/// The environment every command reads.
pub(super) struct Settings {
    pub(super) base: PathBuf,
    pub(super) prefix: String,
    offset: u32,
    pub(super) start_timeout: Duration,
}

impl Settings {
    pub(super) fn from_env() -> anyhow::Result<Settings> {
        let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let base = match var("LEPUS_BROKER_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/rabbitmq"),
        };
        let base = if base.is_absolute() {
            base
        } else {
            std::env::current_dir()
                .context("reading the current directory")?
                .join(base)
        };
        let prefix = var("LEPUS_BROKER_PREFIX").unwrap_or_else(|| "n".to_owned());
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "LEPUS_BROKER_PREFIX may hold only letters, digits, '-' and '_' (got '{prefix}')"
            );
        }
        let offset = match var("LEPUS_BROKER_PORT_OFFSET") {
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|o| *o <= 30000)
                .with_context(|| {
                    format!("LEPUS_BROKER_PORT_OFFSET must be a non-negative number (got '{v}')")
                })?,
            None => 0,
        };
        let start_timeout = match var("LEPUS_BROKER_START_TIMEOUT") {
            Some(v) => Duration::from_secs(v.parse::<u64>().with_context(|| {
                format!("LEPUS_BROKER_START_TIMEOUT must be a number of seconds (got '{v}')")
            })?),
            None => Duration::from_secs(90),
        };
        Ok(Settings {
            base: normalize(&base),
            prefix,
            offset,
            start_timeout,
        })
    }

    pub(super) fn name(&self, i: u32) -> String {
        format!("{}{i}@localhost", self.prefix)
    }

    pub(super) fn dir(&self, i: u32) -> PathBuf {
        self.base.join(format!("{}{i}", self.prefix))
    }

    pub(super) fn tls_dir(&self) -> PathBuf {
        self.base.join("tls")
    }

    fn port(&self, base: u32, i: u32) -> anyhow::Result<u16> {
        u16::try_from(base + 10 * i + self.offset).with_context(|| {
            format!(
                "LEPUS_BROKER_PORT_OFFSET {} puts a port past 65535",
                self.offset
            )
        })
    }

    pub(super) fn ports(&self, i: u32, tls: bool) -> anyhow::Result<Ports> {
        Ok(Ports {
            amqp: self.port(5662, i)?,
            dist: self.port(25662, i)?,
            amqps: if tls { Some(self.port(5661, i)?) } else { None },
            management: Some(self.port(15662, i)?),
        })
    }

    /// Node `i` as its state file describes it; for a directory from before state files,
    /// as the port scheme and its rabbitmq.conf say.
    pub(super) fn node(&self, i: u32) -> anyhow::Result<Node> {
        let dir = self.dir(i);
        if dir.join(crate::STATE_FILE).is_file() {
            return Ok(crate::state::load(&dir)?);
        }
        let conf = std::fs::read_to_string(dir.join("rabbitmq.conf")).unwrap_or_default();
        let tls = conf.lines().any(|l| l.starts_with("listeners.ssl"));
        let files = self.tls_dir();
        Ok(Node {
            name: self.name(i),
            cookie: std::fs::read_to_string(dir.join(".erlang.cookie")).unwrap_or_default(),
            ports: self.ports(i, tls)?,
            tls: tls.then(|| {
                ServerTls::new(
                    files.join("ca.pem"),
                    files.join("server.pem"),
                    files.join("server.key"),
                )
            }),
            config: Vec::new(),
            erl_args: Vec::new(),
            placement: None,
            dir,
        })
    }

    /// Indices of the nodes with a directory under the base, in order.
    pub(super) fn known(&self) -> Vec<u32> {
        let mut found: Vec<u32> = std::fs::read_dir(&self.base)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let index = name.strip_prefix(&self.prefix)?;
                        if index.is_empty() || !index.chars().all(|c| c.is_ascii_digit()) {
                            return None;
                        }
                        index.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort_unstable();
        found
    }
}

/// `a/b/../c` as `a/c`, so the path matches what `/proc/<pid>/cmdline` shows.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
