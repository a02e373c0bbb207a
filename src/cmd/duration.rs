//! Durations on the command line, written as compose writes them.

use std::fmt;
use std::time::Duration;

/// A duration that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDuration(String);

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration {:?} (e.g. 90s, 1m30s, 500ms)", self.0)
    }
}

impl std::error::Error for InvalidDuration {}

/// A compose/Go duration (`90s`, `1m30s`, `1h5m`, `500ms`, `1.5h`; units ns, us, ms, s, m,
/// h, d) or plain seconds (`30`).
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    let bad = || InvalidDuration(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(v) = t.parse::<f64>() {
        return (v.is_finite() && v >= 0.0)
            .then(|| Duration::from_secs_f64(v))
            .ok_or_else(bad);
    }
    let mut total = 0.0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let v: f64 = rest[..n].parse().map_err(|_| bad())?;
        let after = &rest[n..];
        let u = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let secs = match &after[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(bad()),
        };
        total += v * secs;
        rest = &after[u..];
    }
    (total.is_finite())
        .then(|| Duration::from_secs_f64(total))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_compose_writes_them() {
        let d = |s: &str| parse(s).map(|d| d.as_millis()).ok();
        assert_eq!(d("1m30s"), Some(90_000));
        assert_eq!(d("90s"), Some(90_000));
        assert_eq!(d("1h2m3s"), Some(3_723_000));
        assert_eq!(d("1.5h"), Some(5_400_000));
        assert_eq!(d("500ms"), Some(500));
        assert_eq!(d("2m500ms"), Some(120_500));
        assert_eq!(d("30"), Some(30_000));
        assert_eq!(d("1d"), Some(86_400_000));
        for bad in ["", "m", "1x", "1m30", "s5", "-1s", "1..2s", "NaN"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
