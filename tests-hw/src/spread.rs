//! The median and spread of a benchmark figure over its runs, and ratios claimed only when two
//! spreads do not overlap (the benches in `bench/`).

/// Median and spread (lowest-highest) of one figure over the runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// The middle value (the upper middle for an even count).
    pub median: f64,
    /// The lowest value.
    pub low: f64,
    /// The highest value.
    pub high: f64,
}

impl Spread {
    /// The spread of `values` (all zero when there are none).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        Spread {
            median: v.get(v.len() / 2).copied().unwrap_or_default(),
            low: v.first().copied().unwrap_or_default(),
            high: v.last().copied().unwrap_or_default(),
        }
    }

    /// `median (low-high)`.
    pub fn show(&self) -> String {
        format!("{:.2} ({:.2}-{:.2})", self.median, self.low, self.high)
    }

    /// The ratio of the medians, claimed only when the two spreads do not overlap.
    pub fn ratio_to(&self, base: &Spread) -> String {
        if base.median <= 0.0 {
            return "no baseline".into();
        }
        let r = self.median / base.median;
        if self.low > base.high || self.high < base.low {
            format!("{r:.2}x")
        } else {
            format!("{r:.2}x (spreads overlap: not claimed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_spread_and_claims() {
        let a = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((a.median, a.low, a.high), (2.0, 1.0, 3.0));
        assert_eq!(a.show(), "2.00 (1.00-3.00)");
        let b = Spread::of([4.0, 5.0, 6.0]);
        assert_eq!(b.ratio_to(&a), "2.50x");
        let c = Spread::of([2.5, 4.5]);
        assert_eq!(c.ratio_to(&a), "2.25x (spreads overlap: not claimed)");
        assert_eq!(a.ratio_to(&Spread::default()), "no baseline");
    }
}
