//! When a repeated event is worth a log line.

/// Whether the `n`th occurrence of a repeated event (a drop, a refusal, a
/// failed write) is worth a log line: the 1st, 5th, 20th and 50th, then
/// 100, 200, ..., 900, 1000, 2000, ...: at most nine lines for every
/// tenfold, so a flood of millions says so a few dozen times, not
/// thousands.
pub fn milestone(n: u64) -> bool {
    match n {
        1 | 5 | 20 | 50 => true,
        n if n >= 100 => {
            let mut step = 100;
            while n / step >= 10 {
                step *= 10;
            }
            n.is_multiple_of(step)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_growing() {
        let first: Vec<u64> = (0..=3000).filter(|n| milestone(*n)).collect();
        assert_eq!(
            first,
            [
                1, 5, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 2000, 3000
            ]
        );
        let lines = (1..=2_000_000).filter(|n| milestone(*n)).count();
        assert_eq!(lines, 4 + 9 * 4 + 2, "two million drops: a few dozen lines");
        assert!(
            milestone(10_000_000_000_000_000_000),
            "no overflow near the top"
        );
        assert!(!milestone(u64::MAX));
    }
}
