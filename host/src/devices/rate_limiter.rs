//! Token buckets for device I/O: bytes per second and operations per
//! second, each with a burst (DESIGN.md, "Devices and I/O"; the same idea
//! as Firecracker's rate limiters).
//!
//! Pure: no clock, no threads. The caller passes `now` to every call, asks
//! whether a unit of `n` bytes (one operation: a frame, a disk request) may
//! pass, and is told either that it passed (its tokens are taken) or the
//! instant at which it will be able to. Nothing is dropped here: what to do
//! with a unit that must wait is the device's decision.
//!
//! A bucket holds at most `burst` tokens and gains `rate` a second. A unit
//! passes when the bucket holds at least its size; a unit larger than the
//! whole burst passes when the bucket is full and leaves it in debt, so it
//! is slowed, never stuck. Over any window of `t` seconds a bucket that
//! starts full lets through at most `burst + rate * t` tokens (plus, once,
//! the excess of a unit larger than the burst).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tandem::devices::rate_limiter::{Admit, Bucket, RateLimiter};
//!
//! let t0 = Instant::now();
//! // 1000 bytes a second with a 1500-byte burst, no operation limit.
//! let mut limiter = RateLimiter::new(Some(Bucket::new(1000, 1500).unwrap()), None, t0);
//! assert_eq!(limiter.admit(1500, t0), Admit::Now);
//! // The bucket is empty: 500 bytes need half a second more.
//! assert_eq!(limiter.admit(500, t0), Admit::At(t0 + Duration::from_millis(500)));
//! assert_eq!(limiter.admit(500, t0 + Duration::from_millis(500)), Admit::Now);
//! ```

use std::time::{Duration, Instant};

/// Nanoseconds in a second: tokens are kept in billionths so that refills
/// over any interval are exact integers.
const NANOS: u128 = 1_000_000_000;

/// Why a bucket was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RateLimitError {
    /// A rate of zero would never refill.
    #[error("a rate limit of 0 per second would stop all I/O (leave the limit out instead)")]
    ZeroRate,
    /// A burst of zero would never let anything pass.
    #[error("a burst of 0 would stop all I/O (a burst is at least 1)")]
    ZeroBurst,
}

/// The shape of one bucket: how fast it refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    rate: u64,
    burst: u64,
}

impl Bucket {
    /// `rate` tokens a second, at most `burst` saved up.
    pub fn new(rate: u64, burst: u64) -> Result<Self, RateLimitError> {
        if rate == 0 {
            return Err(RateLimitError::ZeroRate);
        }
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        Ok(Self { rate, burst })
    }

    /// `rate` tokens a second, with one second's worth as its burst.
    pub fn per_second(rate: u64) -> Result<Self, RateLimitError> {
        Self::new(rate, rate)
    }

    /// Tokens gained per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most tokens held.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

/// A bucket's state: its shape, its level (in billionths of a token, below
/// zero after a unit larger than the burst) and when it was last refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    shape: Bucket,
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `shape` at `now`.
    pub fn new(shape: Bucket, now: Instant) -> Self {
        Self {
            shape,
            level: i128::from(shape.burst) * NANOS as i128,
            last: now,
        }
    }

    /// Its shape.
    pub fn shape(&self) -> Bucket {
        self.shape
    }

    fn capacity(&self) -> i128 {
        i128::from(self.shape.burst) * NANOS as i128
    }

    /// Adds what `now - last` earned (a `now` earlier than the last one,
    /// from a caller's clock going back, earns nothing).
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.last = now;
        // elapsed (< 2^64 ns in practice) times rate (< 2^64): below 2^128;
        // saturate anyway, then clamp to the capacity.
        let earned = elapsed.saturating_mul(u128::from(self.shape.rate));
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        self.level = self.level.saturating_add(earned).min(self.capacity());
    }

    /// What a unit of `n` tokens needs in the bucket to pass: all of it, or
    /// the whole burst for a unit larger than the burst.
    fn need(&self, n: u64) -> i128 {
        i128::from(n.min(self.shape.burst)) * NANOS as i128
    }

    /// When a unit of `n` tokens could pass (`now` if it can), without
    /// taking anything.
    pub fn ready_at(&mut self, n: u64, now: Instant) -> Instant {
        self.refill(now);
        let short = self.need(n) - self.level;
        if short <= 0 {
            return now;
        }
        // Billionths of a token short, at `rate` tokens a second: `short /
        // rate` nanoseconds, rounded up so that at the instant returned the
        // unit really passes.
        let nanos = (short as u128).div_ceil(u128::from(self.shape.rate));
        now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `n` tokens (the caller has checked [`ready_at`](Self::ready_at)).
    fn take(&mut self, n: u64) {
        self.level -= i128::from(n) * NANOS as i128;
    }

    /// Lets a unit of `n` tokens pass now, or says when it may.
    pub fn admit(&mut self, n: u64, now: Instant) -> Admit {
        let at = self.ready_at(n, now);
        if at > now {
            return Admit::At(at);
        }
        self.take(n);
        Admit::Now
    }
}

/// What a limiter says about a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It passed: its tokens are taken.
    Now,
    /// It may not pass before this instant (nothing was taken).
    At(Instant),
}

/// The limits a device takes: either may be absent (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes a second, with its burst in bytes.
    pub bytes: Option<Bucket>,
    /// Operations (frames, requests) a second, with its burst.
    pub ops: Option<Bucket>,
}

impl RateLimit {
    /// Whether it limits anything.
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.ops.is_some()
    }
}

/// A bytes bucket and an operations bucket: a unit passes when both let it,
/// and then takes from both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter with full buckets at `now`; `None` leaves that side unlimited.
    pub fn new(bytes: Option<Bucket>, ops: Option<Bucket>, now: Instant) -> Self {
        Self {
            bytes: bytes.map(|b| TokenBucket::new(b, now)),
            ops: ops.map(|b| TokenBucket::new(b, now)),
        }
    }

    /// A limiter for `limit` at `now`.
    pub fn from_limit(limit: RateLimit, now: Instant) -> Self {
        Self::new(limit.bytes, limit.ops, now)
    }

    /// Its limits.
    pub fn limit(&self) -> RateLimit {
        RateLimit {
            bytes: self.bytes.map(|b| b.shape()),
            ops: self.ops.map(|b| b.shape()),
        }
    }

    /// When one operation of `bytes` bytes could pass (`now` if it can),
    /// without taking anything.
    pub fn ready_at(&mut self, bytes: u64, now: Instant) -> Instant {
        let b = self.bytes.as_mut().map_or(now, |b| b.ready_at(bytes, now));
        let o = self.ops.as_mut().map_or(now, |o| o.ready_at(1, now));
        b.max(o)
    }

    /// Lets one operation of `bytes` bytes pass now (taking from both
    /// buckets), or says when it may (taking from neither).
    pub fn admit(&mut self, bytes: u64, now: Instant) -> Admit {
        let at = self.ready_at(bytes, now);
        if at > now {
            return Admit::At(at);
        }
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes);
        }
        if let Some(o) = self.ops.as_mut() {
            o.take(1);
        }
        Admit::Now
    }
}

/// A limit shared with other devices (a fleet's I/O budget): asked after
/// a device's own limiter, with the same answer. Its owner decides how the
/// share is made; the device only asks.
pub trait SharedLimit: Send + Sync + std::fmt::Debug {
    /// Lets one operation of `bytes` bytes pass now (taking its cost), or
    /// says when to ask again (taking nothing).
    fn admit(&self, bytes: u64, now: Instant) -> Admit;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn refuses_zero_rates_and_bursts() {
        assert_eq!(Bucket::new(0, 10), Err(RateLimitError::ZeroRate));
        assert_eq!(Bucket::new(10, 0), Err(RateLimitError::ZeroBurst));
        assert_eq!(Bucket::per_second(5).unwrap().burst(), 5);
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_says_when() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::new(1000, 3000).unwrap(), t0);
        assert_eq!(b.admit(1000, t0), Admit::Now);
        assert_eq!(b.admit(2000, t0), Admit::Now);
        // Empty: one token takes a millisecond.
        assert_eq!(b.admit(1, t0), Admit::At(t0 + ms(1)));
        // Asking again takes nothing and gives the same answer.
        assert_eq!(b.admit(1, t0), Admit::At(t0 + ms(1)));
        assert_eq!(b.admit(250, t0 + ms(100)), Admit::At(t0 + ms(250)));
        assert_eq!(b.admit(250, t0 + ms(250)), Admit::Now);
    }

    #[test]
    fn never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::new(1000, 500).unwrap(), t0);
        // An hour of idleness still saves up only the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.admit(500, later), Admit::Now);
        assert_eq!(b.admit(1, later), Admit::At(later + ms(1)));
    }

    #[test]
    fn a_unit_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::new(1000, 100).unwrap(), t0);
        assert_eq!(b.admit(50, t0), Admit::Now);
        // 400 > burst: it needs the bucket full again (50 more: 50 ms).
        assert_eq!(b.admit(400, t0), Admit::At(t0 + ms(50)));
        assert_eq!(b.admit(400, t0 + ms(50)), Admit::Now);
        // In debt by 300: one token needs 301 ms.
        assert_eq!(b.admit(1, t0 + ms(50)), Admit::At(t0 + ms(351)));
    }

    #[test]
    fn waits_are_rounded_up_so_the_answer_is_true() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::new(3, 1).unwrap(), t0);
        assert_eq!(b.admit(1, t0), Admit::Now);
        let Admit::At(at) = b.admit(1, t0) else {
            panic!("an empty bucket admitted a unit");
        };
        assert_eq!(at, t0 + Duration::from_nanos(333_333_334));
        assert_eq!(b.admit(1, at), Admit::Now);
    }

    #[test]
    fn a_clock_going_back_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Bucket::new(1000, 1000).unwrap(), t0);
        assert_eq!(b.admit(1000, t0), Admit::Now);
        let earlier = t0 - Duration::from_secs(5);
        assert!(matches!(b.admit(1, earlier), Admit::At(_)));
        assert_eq!(b.admit(1, t0 + ms(1)), Admit::Now);
    }

    #[test]
    fn the_limiter_needs_both_buckets_and_takes_from_both_or_neither() {
        let t0 = Instant::now();
        let bytes = Bucket::new(10_000, 10_000).unwrap();
        let ops = Bucket::new(10, 2).unwrap();
        let mut l = RateLimiter::new(Some(bytes), Some(ops), t0);
        assert_eq!(l.admit(100, t0), Admit::Now);
        assert_eq!(l.admit(100, t0), Admit::Now);
        // Ops exhausted (bytes plenty): 100 ms for the next operation.
        assert_eq!(l.admit(100, t0), Admit::At(t0 + ms(100)));
        // Bytes decide: 9800 left, 10000 asked, 20 ms for 200 bytes; but
        // ops need 100 ms: the later of the two.
        assert_eq!(l.admit(10_000, t0), Admit::At(t0 + ms(100)));
        // A refusal took nothing from the bytes bucket.
        assert_eq!(l.admit(9_800, t0 + ms(100)), Admit::Now);
        assert_eq!(
            l.limit(),
            RateLimit {
                bytes: Some(bytes),
                ops: Some(ops)
            }
        );
    }

    #[test]
    fn an_unlimited_limiter_always_admits() {
        let t0 = Instant::now();
        let mut l = RateLimiter::from_limit(RateLimit::default(), t0);
        assert!(!l.limit().is_limited());
        for _ in 0..1000 {
            assert_eq!(l.admit(u64::MAX, t0), Admit::Now);
        }
    }

    #[test]
    fn random_traffic_never_beats_the_bound() {
        // A small xorshift: units of 1..3000 bytes offered at random steps;
        // at every instant what passed is at most burst + rate * elapsed,
        // plus once the excess of a unit larger than the burst.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (rate, burst) in [
            (1_000u64, 500u64),
            (100_000, 20_000),
            (7, 3_000),
            (1 << 20, 1),
        ] {
            let t0 = Instant::now();
            let mut l = RateLimiter::new(Some(Bucket::new(rate, burst).unwrap()), None, t0);
            let (mut now, mut passed, mut largest) = (t0, 0u128, 0u64);
            for _ in 0..20_000 {
                now += Duration::from_micros(next() % 2_000);
                let n = 1 + next() % 3_000;
                if l.admit(n, now) == Admit::Now {
                    passed += u128::from(n);
                    largest = largest.max(n);
                }
                let elapsed = now.duration_since(t0).as_nanos();
                let bound = u128::from(burst)
                    + u128::from(rate) * elapsed / NANOS
                    + u128::from(largest.saturating_sub(burst));
                assert!(
                    passed <= bound,
                    "rate {rate} burst {burst}: {passed} > {bound}"
                );
            }
            assert!(passed > 0, "rate {rate} burst {burst}: nothing passed");
        }
    }

    #[test]
    fn over_a_window_at_most_burst_plus_rate_times_window_passes() {
        // A greedy sender offering 1514-byte units every 100 µs for 2 s.
        let t0 = Instant::now();
        let (rate, burst) = (100_000u64, 20_000u64);
        let mut l = RateLimiter::new(Some(Bucket::new(rate, burst).unwrap()), None, t0);
        let mut passed = 0u64;
        let step = Duration::from_micros(100);
        let mut now = t0;
        while now < t0 + Duration::from_secs(2) {
            while l.admit(1514, now) == Admit::Now {
                passed += 1514;
            }
            now += step;
        }
        let bound = burst + rate * 2;
        assert!(passed <= bound, "{passed} bytes passed, bound {bound}");
        // And it is not stingy: short of the bound by less than two units.
        assert!(
            passed > bound - 2 * 1514,
            "{passed} bytes passed, bound {bound}"
        );
    }
}
