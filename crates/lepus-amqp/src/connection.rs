//! One AMQP connection: the handshake, then a reader task and a writer task that own the
//! socket, and a cheap clonable handle.
//!
//! The reader parses frames and applies each one to its channel's state directly (no
//! per-frame message passing); the writer drains the [`Outbox`](crate::outbox) and sends
//! heartbeats when idle. Either task failing fails the whole connection: every waiter,
//! confirm and consumer learns why. The connection never reconnects; that is the
//! supervisor's job one layer up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::Channel;
use crate::channel::ChannelShared;
use crate::codec::{self, Frame};
use crate::error::{Error, ErrorKind, Result};
use crate::options::{AuthMechanism, ConnectionOptions};
use crate::outbox::Outbox;
use crate::transport::{self, ReadHalf, WriteHalf};

const READ_CHUNK: usize = 64 * 1024;
/// How long the socket tasks outlive a failed connection to flush its last frames (a
/// `close-ok`, a `connection.close`). A writer blocked on a frozen peer is cut off here,
/// and the socket goes with it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Frames the broker may send before `tune` settles `frame_max`.
const HANDSHAKE_FRAME_MAX: usize = 128 * 1024;

/// Values settled with the broker during `tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest frame in bytes.
    pub frame_max: u32,
    /// Most channels.
    pub channel_max: u16,
    /// Heartbeat interval in seconds; 0 means none.
    pub heartbeat: u16,
}

pub(crate) struct ConnShared {
    pub(crate) out: Outbox,
    pub(crate) frame_max: usize,
    pub(crate) opts: ConnectionOptions,
    negotiated: Negotiated,
    channels: Mutex<Channels>,
    closed: watch::Sender<Option<Error>>,
    blocked: watch::Sender<Option<String>>,
    kill: watch::Sender<bool>,
    closing: AtomicBool,
    server_properties: FieldTable,
    /// Socket tasks (reader, writer) still running.
    io_tasks: Arc<AtomicUsize>,
}

/// Counts a socket task as alive until it ends, whichever way it ends.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Channels {
    map: HashMap<u16, Arc<ChannelShared>>,
    last: u16,
}

/// Channel generations are unique in the process, not only per connection, so a delivery
/// can always tell which channel opening it came from, across reconnects too.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ConnShared {
    pub(crate) fn channel(&self, id: u16) -> Option<Arc<ChannelShared>> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(&id)
            .cloned()
    }

    pub(crate) fn remove_channel(&self, id: u16, generation: u64) {
        let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if t.map.get(&id).is_some_and(|c| c.generation == generation)
            && let Some(c) = t.map.remove(&id)
        {
            c.registered.store(false, Ordering::Release);
        }
    }

    fn allocate_channel(self: &Arc<Self>) -> Result<Arc<ChannelShared>> {
        if let Some(err) = self.close_reason() {
            return Err(err);
        }
        let max = self.negotiated.channel_max.max(1);
        let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..max {
            t.last = if t.last >= max { 1 } else { t.last + 1 };
            let id = t.last;
            if let std::collections::hash_map::Entry::Vacant(slot) = t.map.entry(id) {
                let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
                let shared = Arc::new(ChannelShared::new(id, generation, Arc::clone(self)));
                slot.insert(Arc::clone(&shared));
                return Ok(shared);
            }
        }
        Err(Error::new(
            ErrorKind::ChannelLimit,
            format!("all {max} channels of the connection are in use"),
        ))
    }

    fn close_reason(&self) -> Option<Error> {
        self.closed.borrow().clone()
    }

    /// Fails the connection: every channel, waiter, confirm and consumer gets `err`.
    fn fail(&self, err: Error) {
        let first = self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(err.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::debug!(error = %err, "connection closed");
        }
        self.out.close(err.clone());
        let channels: Vec<_> = {
            let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            t.map.drain().map(|(_, c)| c).collect()
        };
        for c in &channels {
            c.registered.store(false, Ordering::Release);
        }
        for c in channels {
            c.close_with(err.clone());
        }
        let _ = self.blocked.send(None);
    }

    fn kill(&self) {
        let _ = self.kill.send(true);
    }

    /// Sends `connection.close` once; the reader finishes on `close-ok`.
    fn begin_close(&self, code: u16, text: &str) {
        if self.close_reason().is_some() || self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: ShortString::try_new(text).unwrap_or_default(),
            class_id: 0,
            method_id: 0,
        }));
        if self
            .out
            .push(|out, _| codec::put_method(out, 0, &close))
            .is_err()
        {
            self.kill();
        }
    }

    /// A connection with no socket, for feeding frames by hand (see `fuzzing`).
    pub(crate) fn detached(frame_max: usize, max_body_size: usize) -> Arc<Self> {
        let (closed, _) = watch::channel(None);
        let (blocked, _) = watch::channel(None);
        let (kill, _) = watch::channel(false);
        Arc::new(ConnShared {
            out: Outbox::new(1 << 20),
            frame_max,
            negotiated: Negotiated {
                frame_max: frame_max as u32,
                channel_max: 8,
                heartbeat: 0,
            },
            channels: Mutex::new(Channels {
                map: HashMap::new(),
                last: 0,
            }),
            closed,
            blocked,
            kill,
            closing: AtomicBool::new(false),
            server_properties: FieldTable::default(),
            io_tasks: Arc::default(),
            opts: ConnectionOptions::default().max_body_size(max_body_size),
        })
    }

    /// Channel 1 with a consumer tagged `c`, channel 2 in confirm mode.
    /// Returns the consumer's receiving end, which the caller keeps alive.
    pub(crate) fn open_fuzz_channels(
        self: &Arc<Self>,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::Delivery>> {
        let (one, two) = (self.allocate_channel().ok()?, self.allocate_channel().ok()?);
        let (slot, rx, _) = crate::consumer::consumer_pair(16, false);
        one.insert_consumer("c", slot);
        two.set_confirm_mode();
        Some(rx)
    }

    pub(crate) fn dispatch_frame(self: Arc<Self>, frame: Frame) -> Result<()> {
        self.dispatch(frame, &mut None)
    }

    /// Applies a frame. `last` caches the channel of the previous frame: a delivery is
    /// three frames on one channel, and the table lock need not be taken for each.
    fn dispatch(
        self: &Arc<Self>,
        frame: Frame,
        last: &mut Option<Arc<ChannelShared>>,
    ) -> Result<()> {
        let id = frame.channel();
        if id == 0 {
            return self.dispatch_connection(frame);
        }
        if let Some(c) = last
            .as_ref()
            .filter(|c| c.id == id && c.registered.load(Ordering::Acquire))
        {
            return c.handle(frame);
        }
        *last = self.channel(id);
        match last {
            Some(c) => c.handle(frame),
            // Frames for a channel we already finished closing: nothing waits for them.
            None => {
                tracing::debug!(channel = id, "frame for a closed channel ignored");
                Ok(())
            }
        }
    }

    fn dispatch_connection(&self, frame: Frame) -> Result<()> {
        let method = match frame {
            Frame::Heartbeat => return Ok(()),
            Frame::Method(_, method) => *method,
            other => {
                return Err(Error::protocol(format!(
                    "unexpected {} frame on channel 0",
                    other.name()
                )));
            }
        };
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                let err =
                    Error::from_reply(close.reply_code, close.reply_text.as_str(), false, false);
                let ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                let _ = self.out.push(|out, _| codec::put_method(out, 0, &ok));
                self.fail(err);
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                self.fail(Error::new(
                    ErrorKind::ConnectionClosed,
                    "connection closed by the application",
                ));
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                tracing::warn!(reason = %b.reason, "broker blocked the connection");
                let _ = self.blocked.send(Some(b.reason.to_string()));
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                tracing::info!("broker unblocked the connection");
                let _ = self.blocked.send(None);
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(_)) => Ok(()),
            other => Err(Error::protocol(format!(
                "unexpected method {} on channel 0",
                crate::channel::method_name(&other)
            ))),
        }
    }
}

impl Frame {
    fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _)
            | Frame::Deliver(c, _)
            | Frame::Header(c, _)
            | Frame::Body(c, _) => *c,
            Frame::Confirm { channel, .. } | Frame::BadHeader { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Frame::Method(..) | Frame::Deliver(..) | Frame::Confirm { .. } => "method",
            Frame::Header(..) | Frame::BadHeader { .. } => "content header",
            Frame::Body(..) => "body",
            Frame::Heartbeat => "heartbeat",
        }
    }
}

/// Held by every user-facing handle; when the last one drops, the connection closes.
pub(crate) struct Lifeline {
    shared: Arc<ConnShared>,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.shared.begin_close(200, "connection dropped");
        // Nobody waits for the close-ok now. If it does not come within the operation
        // timeout (a frozen broker, no heartbeats), fail the connection so that its
        // socket tasks end instead of waiting on the peer for ever.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                let limit = shared.opts.operation_timeout;
                let mut closed = shared.closed.subscribe();
                let done = tokio::time::timeout(limit, closed.wait_for(|c| c.is_some())).await;
                if done.is_err() {
                    shared.fail(Error::timeout(
                        "connection.close after the last handle dropped",
                        limit,
                    ));
                }
            });
        }
    }
}

/// An open AMQP connection. Cheap to clone; closes when the last clone and the last
/// channel are dropped, or on [`Connection::close`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lepus_amqp::Error> {
/// use lepus_amqp::{Connection, ConnectionOptions};
///
/// let conn = Connection::connect(ConnectionOptions::from_uri("amqp://127.0.0.1:5672/%2f")?).await?;
/// let channel = conn.open_channel().await?;
/// channel.close().await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnShared>,
    life: Arc<Lifeline>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.shared.opts.address())
            .field("vhost", &self.shared.opts.vhost)
            .field("negotiated", &self.shared.negotiated)
            .field("open", &self.is_open())
            .finish()
    }
}

impl Connection {
    /// Connects, logs in and opens the vhost, all within the connection timeout.
    pub async fn connect(opts: ConnectionOptions) -> Result<Connection> {
        opts.validate()?;
        let limit = opts.connection_timeout;
        let address = opts.address();
        match tokio::time::timeout(limit, handshake(opts)).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(&format!("connecting to {address}"), limit)),
        }
    }

    /// Parses `uri` and connects.
    pub async fn open(uri: &str) -> Result<Connection> {
        Self::connect(ConnectionOptions::from_uri(uri)?).await
    }

    /// Opens a new channel.
    pub async fn open_channel(&self) -> Result<Channel> {
        let shared = self.shared.allocate_channel()?;
        let channel = Channel::new(Arc::clone(&shared), Arc::clone(&self.life));
        if let Err(err) = channel.open().await {
            shared.close_with(err.clone());
            self.shared.remove_channel(shared.id, shared.generation);
            return Err(err);
        }
        Ok(channel)
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.shared.close_reason().is_none()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.close_reason()
    }

    /// Resolves when the connection closes, with the reason.
    pub async fn closed(&self) -> Error {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(err) = rx.borrow_and_update().clone() {
                return err;
            }
            if rx.changed().await.is_err() {
                return Error::new(ErrorKind::ConnectionClosed, "connection dropped");
            }
        }
    }

    /// Watches `connection.blocked`: `Some(reason)` while the broker blocks publishing
    /// (memory or disk alarm), `None` otherwise.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    /// How many of the connection's socket tasks (reader, writer) still run: 2 while
    /// open, 0 once the connection has failed or closed and its socket is gone. For tests.
    #[doc(hidden)]
    pub fn io_tasks_alive(&self) -> usize {
        self.shared.io_tasks.load(Ordering::Acquire)
    }

    /// The live count behind [`Connection::io_tasks_alive`], readable after the
    /// connection's handles are gone. For tests.
    #[doc(hidden)]
    pub fn io_task_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.shared.io_tasks)
    }

    /// What was settled during `tune`.
    pub fn negotiated(&self) -> Negotiated {
        self.shared.negotiated
    }

    /// The broker's `server-properties` (product, version, capabilities, ...).
    pub fn server_properties(&self) -> &FieldTable {
        &self.shared.server_properties
    }

    /// The options this connection was opened with.
    pub fn options(&self) -> &ConnectionOptions {
        &self.shared.opts
    }

    /// Drops the connection at once, without the `connection.close` handshake: for a
    /// connection the broker no longer serves (it stopped reading, or answers nothing)
    /// while its heartbeats still arrive, where a graceful close would wait the whole
    /// operation timeout. Everything waiting on it fails with `reason`; the broker sees
    /// the socket close. Does nothing if the connection is already closed.
    pub fn abort(&self, reason: &str) {
        if self.shared.close_reason().is_some() {
            return;
        }
        self.shared.kill();
        self.shared
            .fail(Error::new(ErrorKind::ConnectionClosed, reason.to_owned()));
    }

    /// Closes gracefully: `connection.close`, then waits (up to the operation timeout) for
    /// the broker's `close-ok`; past the deadline the socket is dropped.
    pub async fn close(&self) -> Result<()> {
        if self.shared.close_reason().is_some() {
            return Ok(());
        }
        self.shared.begin_close(200, "closed by the application");
        let limit = self.shared.opts.operation_timeout;
        let done = tokio::time::timeout(limit, self.closed()).await;
        self.shared.kill();
        match done {
            Ok(_) => Ok(()),
            Err(_) => {
                let err = Error::timeout("connection.close", limit);
                self.shared.fail(err.clone());
                Err(err)
            }
        }
    }
}

async fn handshake(opts: ConnectionOptions) -> Result<Connection> {
    let (mut rd, mut wr) = transport::connect(&opts).await?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let sent = async {
        wr.write_all(codec::PROTOCOL_HEADER).await?;
        wr.flush().await
    }
    .await;
    if let Err(e) = sent {
        let err = transport::tls_io_error(&opts, "sending the protocol header", e);
        return Err(refusal_alert(&opts, &mut rd, &mut buf).await.unwrap_or(err));
    }

    // The first read: on TLS 1.3 it is where a server's refusal of our certificate shows.
    let first = read_method(&mut rd, &mut buf, false)
        .await
        .map_err(|e| first_read_error(&opts, e))?;
    let start = match first {
        AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
        other => return Err(unexpected("connection.start", &other)),
    };
    let mechanism = match opts.auth {
        AuthMechanism::Plain => "PLAIN",
        AuthMechanism::External => "EXTERNAL",
    };
    let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    if !offered.split_whitespace().any(|m| m == mechanism) {
        return Err(Error::new(
            ErrorKind::AuthFailure,
            format!("the broker does not offer {mechanism} login (it offers: {offered})"),
        ));
    }
    let response = match opts.auth {
        AuthMechanism::Plain => {
            LongString::from(format!("\0{}\0{}", opts.username, opts.password.0))
        }
        AuthMechanism::External => LongString::from(Vec::new()),
    };
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: client_properties(&opts),
        mechanism: ShortString::from(mechanism),
        response,
        locale: ShortString::from("en_US"),
    }));
    send(&mut wr, &start_ok).await?;

    let tune = match read_method(&mut rd, &mut buf, true).await? {
        AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
        AMQPClass::Connection(connection::AMQPMethod::Secure(_)) => {
            return Err(Error::new(
                ErrorKind::AuthFailure,
                "the broker asked for a SASL challenge, which PLAIN and EXTERNAL do not use",
            ));
        }
        other => return Err(unexpected("connection.tune", &other)),
    };
    let negotiated = Negotiated {
        frame_max: smaller_nonzero(opts.frame_max, tune.frame_max).max(4096),
        channel_max: smaller_nonzero(opts.channel_max, tune.channel_max),
        heartbeat: smaller_nonzero(opts.heartbeat, tune.heartbeat),
    };
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: negotiated.channel_max,
        frame_max: negotiated.frame_max,
        heartbeat: negotiated.heartbeat,
    }));
    send(&mut wr, &tune_ok).await?;
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: crate::channel::name("vhost", &opts.vhost)?,
    }));
    send(&mut wr, &open).await?;
    match read_method(&mut rd, &mut buf, false).await? {
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
        other => return Err(unexpected("connection.open-ok", &other)),
    }

    let frame_max = negotiated.frame_max as usize;
    let (closed, _) = watch::channel(None);
    let (blocked, _) = watch::channel(None);
    let (kill, _) = watch::channel(false);
    let shared = Arc::new(ConnShared {
        out: Outbox::new(opts.write_buffer),
        frame_max,
        negotiated,
        channels: Mutex::new(Channels {
            map: HashMap::new(),
            last: 0,
        }),
        closed,
        blocked,
        kill,
        closing: AtomicBool::new(false),
        server_properties: start.server_properties,
        io_tasks: Arc::default(),
        opts,
    });
    let heartbeat = Duration::from_secs(u64::from(negotiated.heartbeat));
    let alive = Alive::new(&shared.io_tasks);
    tokio::spawn(read_loop(Arc::clone(&shared), rd, buf, heartbeat, alive));
    let alive = Alive::new(&shared.io_tasks);
    tokio::spawn(write_loop(Arc::clone(&shared), wr, heartbeat, alive));
    let life = Arc::new(Lifeline {
        shared: Arc::clone(&shared),
    });
    Ok(Connection { shared, life })
}

fn smaller_nonzero<T: Ord + Default + Copy>(ours: T, theirs: T) -> T {
    let zero = T::default();
    match (ours == zero, theirs == zero) {
        (true, _) => theirs,
        (_, true) => ours,
        _ => ours.min(theirs),
    }
}

fn client_properties(opts: &ConnectionOptions) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "authentication_failure_close",
        "exchange_exchange_bindings",
    ] {
        caps.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("lepus"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert(
        "information".into(),
        text("lepus-amqp, a tokio-native AMQP 0-9-1 engine"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    if let Some(name) = &opts.name {
        props.insert("connection_name".into(), text(name));
    }
    props
}

/// After a failed write on a fresh TLS connection: the alert a server that refused our
/// certificate sent before it reset the connection, if it is there to read (TLS 1.3
/// ends the client's handshake before the server has judged the client certificate).
async fn refusal_alert(
    opts: &ConnectionOptions,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
) -> Option<Error> {
    opts.tls.as_ref()?;
    let read = tokio::time::timeout(Duration::from_secs(1), read_method(rd, buf, false)).await;
    match read {
        Ok(Err(err)) => Some(first_read_error(opts, err)).filter(|e| e.kind() == ErrorKind::Tls),
        _ => None,
    }
}

/// A failed first read on a TLS connection, typed when rustls says why (see
/// [`transport::tls_io_error`]).
fn first_read_error(opts: &ConnectionOptions, err: Error) -> Error {
    if opts.tls.is_none() || err.kind() != ErrorKind::Io {
        return err;
    }
    let rustls_err = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls_err) => transport::tls_error(opts, "reading connection.start", rustls_err),
        None => err,
    }
}

fn unexpected(wanted: &str, got: &AMQPClass) -> Error {
    Error::protocol(format!(
        "expected {wanted} during the handshake, got {}",
        crate::channel::method_name(got)
    ))
}

async fn send(wr: &mut WriteHalf, method: &AMQPClass) -> Result<()> {
    let mut out = Vec::with_capacity(512);
    codec::put_method(&mut out, 0, method)?;
    wr.write_all(&out)
        .await
        .map_err(|e| Error::io("handshake write failed", e))?;
    wr.flush()
        .await
        .map_err(|e| Error::io("handshake write failed", e))
}

/// Reads the next method on channel 0 during the handshake. A `connection.close` becomes
/// the error it carries (`during_login` turns 403 into an authentication failure).
async fn read_method(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    during_login: bool,
) -> Result<AMQPClass> {
    loop {
        while let Some(frame) = codec::decode_frame(buf, HANDSHAKE_FRAME_MAX)? {
            match frame {
                Frame::Heartbeat => continue,
                Frame::Method(0, method) => {
                    if let AMQPClass::Connection(connection::AMQPMethod::Close(close)) = *method {
                        return Err(Error::from_reply(
                            close.reply_code,
                            close.reply_text.as_str(),
                            false,
                            during_login,
                        ));
                    }
                    return Ok(*method);
                }
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected {} frame during the handshake",
                        other.name()
                    )));
                }
            }
        }
        buf.reserve(READ_CHUNK);
        let n = rd
            .read_buf(buf)
            .await
            .map_err(|e| Error::io("handshake read failed", e))?;
        if n == 0 {
            // We announce `authentication_failure_close`, so a broker that refuses the
            // credentials says so with connection.close 403 (handled above). A socket that
            // simply ends, even right after start-ok, is a network or broker failure
            // (a node shutting down, a proxy cutting in): worth another attempt.
            let phase = if during_login {
                " (after login, before tune: no connection.close came, so this is not a refused login)"
            } else {
                ""
            };
            return Err(Error::new(
                ErrorKind::Io,
                format!("the broker closed the socket during the handshake{phase}"),
            ));
        }
    }
}

async fn read_loop(
    shared: Arc<ConnShared>,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    heartbeat: Duration,
    _alive: Alive,
) {
    let mut kill = shared.kill.subscribe();
    let dead = failed_a_while_ago(&shared);
    let result = tokio::select! {
        r = read_frames(&shared, &mut rd, &mut buf, heartbeat) => r,
        _ = kill.wait_for(|k| *k) => Err(Error::new(ErrorKind::ConnectionClosed, "connection shut down")),
        () = dead => Err(Error::new(ErrorKind::ConnectionClosed, "connection shut down")),
    };
    if let Err(err) = result {
        if err.kind() == ErrorKind::Protocol || err.kind() == ErrorKind::FrameTooLarge {
            // Tell the broker why before hanging up (501 FRAME_ERROR / 505 UNEXPECTED_FRAME).
            let code = if err.kind() == ErrorKind::FrameTooLarge {
                501
            } else {
                505
            };
            let text: String = err.message().chars().take(200).collect();
            shared.begin_close(code, &text);
        }
        shared.fail(err);
    }
}

async fn read_frames(
    shared: &Arc<ConnShared>,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    heartbeat: Duration,
) -> Result<()> {
    let silence_limit = heartbeat * 2;
    let mut last = None;
    loop {
        while let Some(frame) = codec::decode_frame(buf, shared.frame_max)? {
            shared.dispatch(frame, &mut last)?;
        }
        if shared.close_reason().is_some() {
            return Ok(());
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = if heartbeat.is_zero() {
            rd.read_buf(buf).await
        } else {
            match tokio::time::timeout(silence_limit, rd.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::MissedHeartbeat,
                        format!("no traffic from the broker for {silence_limit:?} (two heartbeat intervals)"),
                    ));
                }
            }
        }
        .map_err(|e| Error::io("read failed", e))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Io,
                "the broker closed the socket without connection.close",
            ));
        }
    }
}

/// Resolves [`CLOSE_LINGER`] after the connection failed: the socket tasks end then,
/// whatever they are waiting on (a write to a peer that stopped reading never returns).
fn failed_a_while_ago(shared: &ConnShared) -> impl std::future::Future<Output = ()> + use<> {
    let mut closed = shared.closed.subscribe();
    async move {
        if closed.wait_for(|c| c.is_some()).await.is_ok() {
            tokio::time::sleep(CLOSE_LINGER).await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

async fn write_loop(
    shared: Arc<ConnShared>,
    mut wr: WriteHalf,
    heartbeat: Duration,
    _alive: Alive,
) {
    let mut kill = shared.kill.subscribe();
    let dead = failed_a_while_ago(&shared);
    tokio::pin!(dead);
    let mut spare: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let idle_limit = heartbeat / 2;
    let mut last_write = Instant::now();
    loop {
        if shared.out.take(&mut spare).is_err() {
            let _ = wr.shutdown().await;
            return;
        }
        if spare.is_empty() {
            let beat = async {
                if heartbeat.is_zero() {
                    std::future::pending::<()>().await;
                }
                // Saturating: no deadline arithmetic may panic, whatever the limits.
                match last_write.checked_add(idle_limit) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shared.out.writer_wait() => continue,
                _ = beat => codec::put_heartbeat(&mut spare),
                _ = kill.wait_for(|k| *k) => return,
                () = &mut dead => {
                    shared.out.discard();
                    return;
                }
            }
        }
        let write = async {
            wr.write_all(&spare).await?;
            wr.flush().await
        };
        let result = tokio::select! {
            r = write => r,
            _ = kill.wait_for(|k| *k) => return,
            () = &mut dead => {
                // Blocked on a peer that stopped reading: drop the socket mid-write.
                shared.out.discard();
                return;
            }
        };
        if let Err(e) = result {
            shared.fail(Error::io("write failed", e));
            shared.out.discard();
            return;
        }
        last_write = Instant::now();
        shared.out.written();
    }
}
