//! What an operator asks for with
//! `--disk path=FILE[,ro][,rate=BYTES][,rate_burst=BYTES][,iops=N][,iops_burst=N]`:
//! parsed and checked here, so the CLI and the library agree and every
//! refusal is tested. The file itself is checked when it is opened
//! ([`DiskFile::open`](super::DiskFile::open)), before the VM boots.
//!
//! `rate` is bytes a second moved by reads and writes (binary units:
//! `50M` is 50 MiB/s), `iops` requests a second (reads, writes and
//! flushes; decimal units: `2k` is 2000); a burst left out is a tenth of a
//! second's worth, as for the network device
//! ([`DEFAULT_BURST_DIVISOR`]). The buckets are the shared
//! [`rate_limiter`](crate::devices::rate_limiter)'s.

use std::path::PathBuf;

use crate::devices::rate_limiter::{Bucket, RateLimit};
use crate::devices::spec::DEFAULT_BURST_DIVISOR;
use crate::units::{parse_count, parse_size};

/// A disk to give a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// Refuse the guest's writes (the file is opened read-only).
    pub read_only: bool,
    /// Token-bucket limits on bytes and requests (default: none).
    pub limit: RateLimit,
}

/// Why a `--disk` value was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// No `path=FILE`.
    #[error("--disk needs path=FILE (a raw image, e.g. from `truncate -s 64M FILE`)")]
    NoPath,
    /// An item Tandem does not know.
    #[error(
        "--disk: unknown item {0:?} (expected path=, ro, rate=, rate_burst=, iops=, iops_burst=)"
    )]
    Unknown(String),
    /// A key given twice.
    #[error("--disk: {0} given twice")]
    Twice(&'static str),
    /// An empty path.
    #[error("--disk: path= is empty")]
    EmptyPath,
    /// A bad rate or burst.
    #[error("--disk: {key}={value:?}: {reason}")]
    Limit {
        /// Which key.
        key: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Clones that would share one disk file.
    #[error("--disk path={0}: clones need one disk file each: put {{i}} (the clone's index) in the path")]
    SharedByClones(String),
    /// A burst without its rate.
    #[error("--disk: {burst}= needs {rate}= (a burst of no limit means nothing)")]
    BurstWithoutRate {
        /// The burst's key.
        burst: &'static str,
        /// The rate's key.
        rate: &'static str,
    },
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskSpecError;

    /// ```
    /// use tandem::devices::DiskSpec;
    /// let spec: DiskSpec = "path=/tmp/d.img,ro".parse().unwrap();
    /// assert!(spec.read_only);
    /// assert!("ro".parse::<DiskSpec>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut path, mut ro) = (None, false);
        // rate, rate_burst, iops, iops_burst.
        let mut limits: [Option<u64>; 4] = [None; 4];
        for item in s.split(',').filter(|i| !i.is_empty()) {
            if let Some((key, value)) = item.split_once('=') {
                if let Some(i) = LIMIT_KEYS.iter().position(|k| *k == key) {
                    let n = parse_limit(LIMIT_KEYS[i], value)?;
                    if limits[i].replace(n).is_some() {
                        return Err(DiskSpecError::Twice(LIMIT_KEYS[i]));
                    }
                    continue;
                }
            }
            match item.split_once('=') {
                Some(("path", v)) => {
                    if v.is_empty() {
                        return Err(DiskSpecError::EmptyPath);
                    }
                    if path.replace(PathBuf::from(v)).is_some() {
                        return Err(DiskSpecError::Twice("path"));
                    }
                }
                None if item == "ro" => {
                    if ro {
                        return Err(DiskSpecError::Twice("ro"));
                    }
                    ro = true;
                }
                _ => return Err(DiskSpecError::Unknown(item.into())),
            }
        }
        let [rate, rate_burst, iops, iops_burst] = limits;
        Ok(Self {
            path: path.ok_or(DiskSpecError::NoPath)?,
            read_only: ro,
            limit: RateLimit {
                bytes: bucket(rate, rate_burst, ("rate", "rate_burst"))?,
                ops: bucket(iops, iops_burst, ("iops", "iops_burst"))?,
            },
        })
    }
}

impl DiskSpec {
    /// Clone `i`'s disk, of `clones` restored side by side: `{i}` in the
    /// path becomes the clone's index; without it, more than one clone
    /// would share the file, which is refused.
    pub fn for_clone(&self, i: u32, clones: u32) -> Result<DiskSpec, DiskSpecError> {
        let path = self.path.to_string_lossy();
        if clones > 1 && !path.contains("{i}") {
            return Err(DiskSpecError::SharedByClones(path.into_owned()));
        }
        Ok(DiskSpec {
            path: PathBuf::from(path.replace("{i}", &i.to_string())),
            ..self.clone()
        })
    }
}

impl DiskSpec {
    /// This disk, with `limit`'s buckets for those it sets none of
    /// (a fleet VM's `io_rate` and `iops` under a disk's own `rate=` and
    /// `iops=`).
    pub fn or_limit(mut self, limit: RateLimit) -> Self {
        self.limit.bytes = self.limit.bytes.or(limit.bytes);
        self.limit.ops = self.limit.ops.or(limit.ops);
        self
    }
}

/// The limits `rate=RATE` and `iops=IOPS` give a disk, with their default
/// bursts, parsed as `--disk` parses them.
///
/// ```
/// use tandem::devices::blk::spec::rate_limit;
/// let l = rate_limit(Some("50M"), None).unwrap();
/// assert_eq!(l.bytes.unwrap().rate(), 50 << 20);
/// assert!(l.ops.is_none());
/// assert!(rate_limit(None, Some("0")).is_err());
/// ```
pub fn rate_limit(rate: Option<&str>, iops: Option<&str>) -> Result<RateLimit, DiskSpecError> {
    let rate = rate.map(|v| parse_limit("rate", v)).transpose()?;
    let iops = iops.map(|v| parse_limit("iops", v)).transpose()?;
    Ok(RateLimit {
        bytes: bucket(rate, None, ("rate", "rate_burst"))?,
        ops: bucket(iops, None, ("iops", "iops_burst"))?,
    })
}

/// The limit keys, in the order `from_str` keeps them.
const LIMIT_KEYS: [&str; 4] = ["rate", "rate_burst", "iops", "iops_burst"];

fn parse_limit(key: &'static str, value: &str) -> Result<u64, DiskSpecError> {
    let parse = if key.starts_with("rate") {
        parse_size
    } else {
        parse_count
    };
    let bad = |reason: String| DiskSpecError::Limit {
        key,
        value: value.into(),
        reason,
    };
    match parse(value).map_err(bad)? {
        0 => Err(bad(
            "0 would stop all I/O (leave the limit out for none)".into()
        )),
        n => Ok(n),
    }
}

fn bucket(
    rate: Option<u64>,
    burst: Option<u64>,
    keys: (&'static str, &'static str),
) -> Result<Option<Bucket>, DiskSpecError> {
    let Some(rate) = rate else {
        return match burst {
            Some(_) => Err(DiskSpecError::BurstWithoutRate {
                burst: keys.1,
                rate: keys.0,
            }),
            None => Ok(None),
        };
    };
    let burst = burst.unwrap_or((rate / DEFAULT_BURST_DIVISOR).max(1));
    Bucket::new(rate, burst)
        .map(Some)
        .map_err(|e| DiskSpecError::Limit {
            key: keys.0,
            value: rate.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DiskSpec, DiskSpecError> {
        s.parse()
    }

    #[test]
    fn parses_path_and_ro() {
        assert_eq!(
            parse("path=a.img").unwrap(),
            DiskSpec {
                path: "a.img".into(),
                read_only: false,
                limit: RateLimit::default(),
            }
        );
        assert!(parse("ro,path=/x/y").unwrap().read_only);
    }

    #[test]
    fn clones_get_a_file_each() {
        let spec = parse("path=/d/c{i}.img,ro").unwrap();
        let c = spec.for_clone(3, 4).unwrap();
        assert_eq!(c.path, PathBuf::from("/d/c3.img"));
        assert!(c.read_only);
        let one = parse("path=/d/r.img").unwrap();
        assert_eq!(one.for_clone(0, 1).unwrap(), one);
        assert!(matches!(
            one.for_clone(0, 2),
            Err(DiskSpecError::SharedByClones(_))
        ));
    }

    #[test]
    fn parses_rate_limits_with_default_bursts() {
        let l = parse("path=a,rate=50M,iops=2k").unwrap().limit;
        let bytes = l.bytes.unwrap();
        assert_eq!((bytes.rate(), bytes.burst()), (50 << 20, 5 << 20));
        let ops = l.ops.unwrap();
        assert_eq!((ops.rate(), ops.burst()), (2000, 200));
        let l = parse("path=a,iops=2000,iops_burst=1,rate=1K,rate_burst=4K")
            .unwrap()
            .limit;
        assert_eq!(l.ops.unwrap().burst(), 1);
        assert_eq!(l.bytes.unwrap().burst(), 4096);
        assert!(!parse("path=a").unwrap().limit.is_limited());
    }

    #[test]
    fn refuses_bad_rate_limits_by_name() {
        assert!(matches!(
            parse("path=a,rate=0"),
            Err(DiskSpecError::Limit { key: "rate", .. })
        ));
        assert!(matches!(
            parse("path=a,iops=fast"),
            Err(DiskSpecError::Limit { key: "iops", .. })
        ));
        assert_eq!(
            parse("path=a,iops_burst=5"),
            Err(DiskSpecError::BurstWithoutRate {
                burst: "iops_burst",
                rate: "iops"
            })
        );
        assert_eq!(
            parse("path=a,rate=1M,rate=2M"),
            Err(DiskSpecError::Twice("rate"))
        );
        let e = parse("path=a,rate=0").unwrap_err().to_string();
        assert!(
            e.starts_with("--disk: rate=\"0\": 0 would stop all I/O"),
            "{e}"
        );
    }

    #[test]
    fn refuses_bad_values_by_name() {
        assert_eq!(parse(""), Err(DiskSpecError::NoPath));
        assert_eq!(parse("ro"), Err(DiskSpecError::NoPath));
        assert_eq!(parse("path="), Err(DiskSpecError::EmptyPath));
        assert_eq!(parse("path=a,path=b"), Err(DiskSpecError::Twice("path")));
        assert_eq!(parse("path=a,ro,ro"), Err(DiskSpecError::Twice("ro")));
        assert!(matches!(parse("path=a,rw"), Err(DiskSpecError::Unknown(_))));
        assert!(matches!(parse("file=a"), Err(DiskSpecError::Unknown(_))));
    }
}
