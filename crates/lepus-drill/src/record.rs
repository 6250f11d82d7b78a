//! What happened to every message of one scenario, as it happened.
//!
//! The load generator, the publisher's confirms and the consumer's handler all write here;
//! the checker and the chart read it afterwards. Messages are numbered `0, 1, 2, ...` in
//! the order they were handed to the publisher, and their `message_id` ends in that
//! number, so the consumer side can find the record of whatever it receives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Width of one column of the chart.
pub const BUCKET: Duration = Duration::from_millis(100);

/// What the publisher said about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// No answer yet.
    Pending,
    /// Confirmed by the broker, `at` after the scenario started.
    Confirmed {
        /// When the confirm arrived.
        at: Duration,
    },
    /// Handed back as failed.
    Failed {
        /// When the failure was reported.
        at: Duration,
    },
}

/// One message.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it was handed to the publisher, after the scenario started.
    pub at: Duration,
    /// What the publisher said.
    pub told: Told,
    /// How often the consumer's handler ran for it.
    pub handled: u32,
    /// How often it was found in the queue after the scenario.
    pub queued: u32,
}

#[derive(Debug, Default)]
struct Inner {
    sent: Vec<Sent>,
    /// Per bucket: published, confirmed, consumed.
    buckets: Vec<[u32; 3]>,
    /// Ids received that do not belong to this scenario.
    foreign: u64,
    /// A failure's reason, the first few of each.
    failures: Vec<String>,
}

/// The shared log of one scenario.
#[derive(Debug)]
pub struct Recorder {
    prefix: String,
    start: Instant,
    inner: Mutex<Inner>,
}

const PUBLISHED: usize = 0;
const CONFIRMED: usize = 1;
const CONSUMED: usize = 2;

impl Recorder {
    /// A log whose message ids are `<prefix>-<n>`; time counts from now.
    pub fn new(prefix: impl Into<String>) -> Recorder {
        Recorder {
            prefix: prefix.into(),
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Time since the scenario started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// When the scenario started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(inner: &mut Inner, at: Duration, column: usize) {
        let bucket = usize::try_from(at.as_millis() / BUCKET.as_millis()).unwrap_or(usize::MAX);
        if bucket > 1_000_000 {
            return;
        }
        if inner.buckets.len() <= bucket {
            inner.buckets.resize(bucket + 1, [0; 3]);
        }
        if let Some(row) = inner.buckets.get_mut(bucket)
            && let Some(cell) = row.get_mut(column)
        {
            *cell += 1;
        }
    }

    /// Records a new message and returns its number and id.
    pub fn next(&self) -> (usize, String) {
        let at = self.now();
        let mut inner = self.lock();
        let n = inner.sent.len();
        inner.sent.push(Sent {
            at,
            told: Told::Pending,
            handled: 0,
            queued: 0,
        });
        Recorder::count(&mut inner, at, PUBLISHED);
        (n, format!("{}-{n}", self.prefix))
    }

    /// Records the publisher's answer for message `n`.
    pub fn told(&self, n: usize, confirmed: Result<(), String>) {
        let at = self.now();
        let mut inner = self.lock();
        let told = match confirmed {
            Ok(()) => {
                Recorder::count(&mut inner, at, CONFIRMED);
                Told::Confirmed { at }
            }
            Err(reason) => {
                if inner.failures.len() < 5 {
                    inner.failures.push(reason);
                }
                Told::Failed { at }
            }
        };
        if let Some(sent) = inner.sent.get_mut(n) {
            sent.told = told;
        }
    }

    /// The number in `id`, if it is one of this scenario's ids.
    fn number(&self, id: &str) -> Option<usize> {
        id.strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// Records that the consumer's handler ran for `id`.
    pub fn handled(&self, id: &str) {
        let at = self.now();
        let number = self.number(id);
        let mut inner = self.lock();
        match number.and_then(|n| inner.sent.get_mut(n)) {
            Some(sent) => {
                sent.handled += 1;
                Recorder::count(&mut inner, at, CONSUMED);
            }
            None => inner.foreign += 1,
        }
    }

    /// Records that `id` was still in the queue after the scenario.
    pub fn queued(&self, id: &str) {
        let number = self.number(id);
        let mut inner = self.lock();
        match number.and_then(|n| inner.sent.get_mut(n)) {
            Some(sent) => sent.queued += 1,
            None => inner.foreign += 1,
        }
    }

    /// Messages handled so far (every handler run counts).
    pub fn handled_total(&self) -> u64 {
        self.lock().sent.iter().map(|s| u64::from(s.handled)).sum()
    }

    /// Messages confirmed so far.
    pub fn confirmed_total(&self) -> usize {
        self.lock()
            .sent
            .iter()
            .filter(|s| matches!(s.told, Told::Confirmed { .. }))
            .count()
    }

    /// Confirmed messages the handler has not run for yet.
    pub fn confirmed_unhandled(&self) -> usize {
        self.lock()
            .sent
            .iter()
            .filter(|s| matches!(s.told, Told::Confirmed { .. }) && s.handled == 0)
            .count()
    }

    /// Everything recorded: per message, per bucket, foreign ids, first failure reasons.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            sent: inner.sent.clone(),
            buckets: inner.buckets.clone(),
            foreign: inner.foreign,
            failures: inner.failures.clone(),
        }
    }
}

/// A copy of a [`Recorder`]'s contents.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per message, in number order.
    pub sent: Vec<Sent>,
    /// Per [`BUCKET`]: published, confirmed, consumed.
    pub buckets: Vec<[u32; 3]>,
    /// Messages received that were not this scenario's.
    pub foreign: u64,
    /// The first few failure reasons.
    pub failures: Vec<String>,
}
