//! The determinism seams: wall-clock time, randomness and byte-stream connections.
//!
//! Core logic never reads `SystemTime`, OS randomness or the network directly. It reads
//! wall-clock time through a [`Clock`], draws randomness from a seeded [`DetRng`], and opens
//! byte streams through a [`Connector`]. Production uses [`SystemClock`], an OS-seeded
//! [`DetRng`] and [`TcpConnector`]; the simulator supplies simulated ones. Timers and
//! monotonic deadlines use `tokio::time`, which the simulator drives (paused time).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng as _, RngCore, SeedableRng, TryRngCore as _};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncRead, AsyncWrite};

/// A point in wall-clock time: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// A timestamp `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This time plus `d` (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// This time minus `d` (saturating at the epoch).
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Wall-clock time. Only this trait may tell core logic what time it is.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(duration_millis(since_epoch))
    }
}

/// A clock that moves only when told to: for tests and simulation.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start.as_millis())))
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Set the clock to `t` (may move backwards, like a skewed clock).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Deterministic, seedable randomness. Every random choice in core logic draws from one.
///
/// The generator (ChaCha8) is portable: the same seed gives the same sequence on every
/// platform and build. Production seeds it from the OS once at start-up; the simulator
/// seeds it from the run's seed.
#[derive(Clone)]
pub struct DetRng(ChaCha8Rng);

impl fmt::Debug for DetRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DetRng")
    }
}

impl DetRng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        DetRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A generator seeded from the operating system. Production only.
    pub fn from_os() -> Self {
        let mut seed = [0u8; 32];
        // If the OS cannot supply entropy the seed stays zero: still a valid (if predictable)
        // generator, and nothing Herald draws from it is a secret.
        let _ = rand::rngs::OsRng.try_fill_bytes(&mut seed);
        DetRng(ChaCha8Rng::from_seed(seed))
    }

    /// An independent generator derived from this one (for a child component).
    pub fn fork(&mut self) -> DetRng {
        DetRng::from_seed(self.next_u64())
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }

    /// A uniformly random integer in `0..n`.
    ///
    /// # Panics
    /// If `n` is zero.
    #[track_caller]
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "DetRng::below(0)");
        self.0.random_range(0..n)
    }

    /// True with probability `p` (clamped to `0.0..=1.0`).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        self.0.random_bool(p)
    }

    /// A uniformly random duration in `0..=max` ("full jitter").
    pub fn jitter(&mut self, max: Duration) -> Duration {
        let max_ms = duration_millis(max);
        Duration::from_millis(self.0.random_range(0..=max_ms))
    }

    /// A random version-4 UUID, for apns-ids and push ids.
    pub fn uuid(&mut self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// A byte stream a connection can run over: TCP, TLS over TCP, or a simulated link.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A boxed byte stream.
pub type BoxStream = Box<dyn ByteStream>;

/// A boxed future returned by seam methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens byte streams to `host:port`. TLS, when wanted, is layered on top by the caller.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Open a stream to `host:port`.
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>>;
}

/// A shared connector.
pub type SharedConnector = Arc<dyn Connector>;

/// Plain TCP through tokio, with `TCP_NODELAY` set. The production connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = DetRng::from_seed(7);
        let mut b = DetRng::from_seed(7);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(DetRng::from_seed(8).next_u64(), xs[0]);
        assert_eq!(a.uuid(), b.uuid());
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = DetRng::from_seed(1);
        for _ in 0..1000 {
            assert!(rng.jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
            assert!(rng.below(3) < 3);
        }
        assert!(!rng.chance(0.0));
        assert!(rng.chance(1.0));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_secs(100));
        assert_eq!(clock.now().as_secs(), 100);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now().as_millis(), 101_500);
        assert_eq!(
            clock.now().since(Timestamp::from_secs(100)),
            Duration::from_millis(1500)
        );
    }
}
