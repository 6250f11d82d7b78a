//! Named connection profiles, like rabbitmqadmin's: an INI-style file whose sections are
//! profiles and whose keys are the connection options.
//!
//! ```text
//! # ~/.config/lepus/lepus.conf
//! [default]
//! amqp_url = amqp://guest:guest@127.0.0.1:5672/%2f
//!
//! [prod]
//! amqp_url = amqps://app:secret@rabbit-a:5671/shop, amqps://app:secret@rabbit-b:5671/shop
//! management_url = https://app:secret@rabbit-a:15672
//! tls_ca = /etc/shop/ca.pem
//! ```
//!
//! Keys: `amqp_url` (commas for several), `management_url`, `tls_ca`, `tls_cert`,
//! `tls_key`, `tls_server_name`. The command line and the environment win over the file;
//! without `--profile` the `[default]` section applies if there is one. A profile that was
//! asked for and is not there is an error, never a silent fall back to localhost.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// One profile's values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    /// `amqp_url`, split at commas.
    pub urls: Vec<String>,
    /// `management_url`.
    pub management_url: Option<String>,
    /// `tls_ca`.
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`.
    pub tls_key: Option<PathBuf>,
    /// `tls_server_name`.
    pub tls_server_name: Option<String>,
}

/// Where the config file is when `--config` does not say.
pub(crate) fn default_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("lepus").join("lepus.conf"))
}

impl Profile {
    /// The profile `name` (or `default`) from `path` (or the default file). `None` when no
    /// profile was asked for and there is no file or no `[default]` in it.
    pub(crate) fn load(path: Option<&Path>, name: Option<&str>) -> anyhow::Result<Option<Profile>> {
        let explicit = path.is_some();
        let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
            return match name {
                Some(name) => bail!("profile '{name}' asked for, but no config file (no HOME)"),
                None => Ok(None),
            };
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return match name {
                    Some(name) => bail!(
                        "profile '{name}' asked for, but there is no config file {}",
                        path.display()
                    ),
                    None => Ok(None),
                };
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let wanted = name.unwrap_or("default");
        match parse(&text, wanted).with_context(|| format!("in {}", path.display()))? {
            Some(profile) => Ok(Some(profile)),
            None if name.is_some() => bail!("no profile [{wanted}] in {}", path.display()),
            None => Ok(None),
        }
    }
}

/// The section `wanted` of an INI text, if present.
fn parse(text: &str, wanted: &str) -> anyhow::Result<Option<Profile>> {
    let mut found = None;
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim().to_owned();
            if section == wanted {
                found.get_or_insert_with(Profile::default);
            }
            current = Some(section);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected key = value", n + 1);
        };
        if current.as_deref() != Some(wanted) {
            continue;
        }
        let (key, value) = (key.trim(), value.trim().to_owned());
        let Some(p) = found.as_mut() else { continue };
        match key {
            "amqp_url" => {
                p.urls = value
                    .split(',')
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
            }
            "management_url" => p.management_url = Some(value),
            "tls_ca" => p.tls_ca = Some(value.into()),
            "tls_cert" => p.tls_cert = Some(value.into()),
            "tls_key" => p.tls_key = Some(value.into()),
            "tls_server_name" => p.tls_server_name = Some(value),
            other => bail!("line {}: unknown key '{other}'", n + 1),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = "# comment\n[default]\namqp_url = amqp://a\n\n[prod]\namqp_url = amqps://x, amqps://y\nmanagement_url = http://m:15672\ntls_ca = /ca.pem\n";

    #[test]
    fn sections_are_profiles() {
        let prod = parse(FILE, "prod").unwrap().unwrap();
        assert_eq!(prod.urls, vec!["amqps://x", "amqps://y"]);
        assert_eq!(prod.management_url.as_deref(), Some("http://m:15672"));
        assert_eq!(prod.tls_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            parse(FILE, "default").unwrap().unwrap().urls,
            vec!["amqp://a"]
        );
        assert_eq!(parse(FILE, "staging").unwrap(), None);
    }

    #[test]
    fn unknown_keys_and_garbage_are_errors() {
        assert!(parse("[p]\npasword = x\n", "p").is_err());
        assert!(parse("[p]\njust text\n", "p").is_err());
    }
}
