//! The one definition of a quantile (median, p10, p99…) that every figure
//! Tandem reports uses: xtask's benchmarks, the fleet report and the host's
//! benchmark examples. Not part of the VM contract: it lives here because
//! this is the one crate all of them share, and it is a small pure function.

/// The `q` quantile (`0.0..=1.0`; 0.5 is the median, 0.99 the p99) of
/// `sorted`, which must be in ascending order (`v.sort_by(f64::total_cmp)`).
/// `None` when `sorted` is empty or `q` is outside `0.0..=1.0` (or NaN).
///
/// Definition: linear interpolation between the closest ranks (Hyndman and
/// Fan's type 7: the default of numpy, R, Julia and spreadsheets'
/// `PERCENTILE.INC`). With `n` samples the quantile sits at rank
/// `h = q · (n − 1)` counted from 0, and is `x[⌊h⌋] + (h − ⌊h⌋) · (x[⌊h⌋ + 1] − x[⌊h⌋])`.
///
/// Why this one: a figure here means what it means in the tools people check
/// it with; the 0.5 quantile is the usual median (the mean of the two middle
/// samples when `n` is even); it moves smoothly with `q` and with the
/// samples; 0 and 1 give the minimum and maximum. Nearest rank (always an
/// observed sample, which the fleet report used) jumps from sample to sample
/// as `n` changes, and its median of an even count is one of the two middle
/// samples instead of their mean.
///
/// ```
/// use tandem_abi::stats::quantile;
/// let v = [1.0, 2.0, 3.0, 4.0];
/// assert_eq!(quantile(&v, 0.5), Some(2.5));
/// assert_eq!(quantile(&v, 0.0), Some(1.0));
/// assert_eq!(quantile(&v, 1.0), Some(4.0));
/// assert_eq!(quantile(&[], 0.5), None);
/// ```
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    debug_assert!(
        sorted.is_sorted_by(|a, b| a.partial_cmp(b) != Some(core::cmp::Ordering::Greater)),
        "quantile of unsorted samples"
    );
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let last = sorted.len().checked_sub(1)?;
    // Sample counts are far below 2^52, so the conversion is exact.
    let rank = q * last as f64;
    // `rank` is in 0..=last, so truncating it is its floor, and it fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let lo = (rank as usize).min(last);
    let frac = rank - lo as f64;
    let (below, above) = (sorted[lo], sorted[(lo + 1).min(last)]);
    // Equal neighbours (infinite ones too: no `inf - inf`) need no interpolating.
    if frac == 0.0 || below == above {
        return Some(below);
    }
    Some(below + (above - below) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_closest_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        let p10 = quantile(&v, 0.1).unwrap();
        assert!((p10 - 1.4).abs() < 1e-12, "{p10}");
        let p90 = quantile(&v, 0.9).unwrap();
        assert!((p90 - 4.6).abs() < 1e-12, "{p90}");
        let hundred: [f64; 100] = core::array::from_fn(|i| (i + 1) as f64);
        assert_eq!(quantile(&hundred, 0.5), Some(50.5));
        let p99 = quantile(&hundred, 0.99).unwrap();
        assert!((p99 - 99.01).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn ends_and_edges() {
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[7.0], 0.0), Some(7.0));
        assert_eq!(quantile(&[2.0, 9.0], 0.0), Some(2.0));
        assert_eq!(quantile(&[2.0, 9.0], 1.0), Some(9.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0], -0.1), None);
        assert_eq!(quantile(&[1.0], 1.5), None);
        assert_eq!(quantile(&[1.0], f64::NAN), None);
        let inf = [f64::INFINITY, f64::INFINITY];
        assert_eq!(quantile(&inf, 0.5), Some(f64::INFINITY));
    }
}
