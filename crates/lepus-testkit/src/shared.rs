//! A broker for tests that need *a* broker, not one of their own.

use crate::broker::Broker;
use crate::error::Error;
use crate::tls::TlsFiles;

/// Env var with the AMQP URL of a broker already running for the whole test run.
pub const AMQP_URL_ENV: &str = "LEPUS_TEST_AMQP_URL";
/// Env var with the amqps URL of that broker's TLS listener.
pub const AMQPS_URL_ENV: &str = "LEPUS_TEST_AMQPS_URL";
/// Env var with the directory holding that broker's `ca.pem`, `client.pem`, `client.key`.
pub const TLS_DIR_ENV: &str = "LEPUS_TEST_TLS_DIR";

/// A broker a test may use but must not disturb: no kill, no restart, no node-wide
/// settings, and names of its own (see [`unique_name`](crate::unique_name)), because other
/// tests may use the same broker at the same time.
///
/// It is the broker named by the environment when `scripts/test` started one for the whole
/// run (so hundreds of tests do not each wait for a node to boot), or else a node started
/// for this guard alone and killed when it is dropped. Tests that kill, pause or
/// reconfigure the broker start their own [`Broker`] instead.
///
/// ```no_run
/// # fn main() -> Result<(), lepus_testkit::Error> {
/// let broker = lepus_testkit::shared_broker()?;
/// let queue = lepus_testkit::unique_name("orders");
/// println!("declare {queue} on {}", broker.url());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SharedBroker {
    url: String,
    amqps_url: Option<String>,
    tls: Option<TlsFiles>,
    own: Option<Broker>,
}

/// A broker for tests that only need one: the one in [`AMQP_URL_ENV`] if set, else a node
/// of its own. Blocks while a node starts.
pub fn shared_broker() -> Result<SharedBroker, Error> {
    if let Some(url) = env(AMQP_URL_ENV) {
        return Ok(SharedBroker {
            url,
            amqps_url: None,
            tls: None,
            own: None,
        });
    }
    SharedBroker::own(Broker::start()?)
}

/// Like [`shared_broker`], with a TLS listener: the one in the environment if
/// [`AMQP_URL_ENV`], [`AMQPS_URL_ENV`] and [`TLS_DIR_ENV`] are all set, else a TLS node of
/// its own.
pub fn shared_tls_broker() -> Result<SharedBroker, Error> {
    if let (Some(url), Some(amqps_url), Some(dir)) =
        (env(AMQP_URL_ENV), env(AMQPS_URL_ENV), env(TLS_DIR_ENV))
    {
        return Ok(SharedBroker {
            url,
            amqps_url: Some(amqps_url),
            tls: Some(TlsFiles::in_dir(dir)?),
            own: None,
        });
    }
    SharedBroker::own(Broker::builder().tls(true).start()?)
}

fn env(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

impl SharedBroker {
    fn own(broker: Broker) -> Result<SharedBroker, Error> {
        Ok(SharedBroker {
            url: broker.url(),
            amqps_url: broker.amqps_url(),
            tls: broker.tls_files().cloned(),
            own: Some(broker),
        })
    }

    /// `amqp://guest:guest@HOST:PORT/%2f`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The amqps URL, for a broker from [`shared_tls_broker`].
    pub fn amqps_url(&self) -> Option<&str> {
        self.amqps_url.as_deref()
    }

    /// The CA and client certificate, for a broker from [`shared_tls_broker`].
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// True if the broker came from the environment (started by `scripts/test`).
    pub fn is_from_env(&self) -> bool {
        self.own.is_none()
    }

    /// The node this guard started, if it did not come from the environment.
    pub fn own_broker(&self) -> Option<&Broker> {
        self.own.as_ref()
    }
}
