//! Duration and size syntax as compose accepts and prints it.

/// Parses Go `time.ParseDuration` syntax (what compose uses), rejecting negative values.
pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut v = int.checked_mul(unit)?;
        if !frac_part.is_empty() {
            // Only the first 18 fractional digits can matter at nanosecond precision.
            let digits = &frac_part[..frac_part.len().min(18)];
            let f: u128 = digits.parse().ok()?;
            v = v.checked_add(f * unit / 10u128.pow(digits.len() as u32))?;
        }
        total = total.checked_add(v)?;
        if total > u64::MAX as u128 {
            return None;
        }
    }
    u64::try_from(total).ok()
}

fn frac(v: u64, unit: u64) -> String {
    let int = v / unit;
    let rem = v % unit;
    if rem == 0 {
        return int.to_string();
    }
    let width = unit.ilog10() as usize;
    let f = format!("{rem:0width$}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// Formats nanoseconds like Go's `time.Duration.String()`.
pub(crate) fn format_duration(n: u64) -> String {
    const S: u64 = 1_000_000_000;
    if n == 0 {
        return "0s".to_owned();
    }
    if n < 1_000 {
        return format!("{n}ns");
    }
    if n < 1_000_000 {
        return format!("{}µs", frac(n, 1_000));
    }
    if n < S {
        return format!("{}ms", frac(n, 1_000_000));
    }
    let secs = n / S;
    let h = secs / 3600;
    let m = (secs % 3600) / 60;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac((secs % 60) * S + n % S, S));
    out.push('s');
    out
}

/// Parses a size like docker's `RAMInBytes`: `1024`, `512m`, `1.5g`, `2gb`, `100 KiB`
/// (binary multipliers, case-insensitive).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (num, mut rest) = s.split_at(num_len);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return None;
    }
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    let lower = rest.to_ascii_lowercase();
    let mut r = lower.as_str();
    let mult: u64 = match r.chars().next() {
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        _ => 1,
    };
    if mult != 1 {
        r = &r[1..];
        r = r.strip_prefix('i').unwrap_or(r);
    }
    r = r.strip_prefix('b').unwrap_or(r);
    if !r.is_empty() {
        return None;
    }
    if let Ok(i) = num.parse::<u64>() {
        return i.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return None;
    }
    Some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_like_go() {
        for (input, nanos, printed) in [
            ("90s", 90_000_000_000, "1m30s"),
            ("1m30s", 90_000_000_000, "1m30s"),
            ("1h", 3_600_000_000_000, "1h0m0s"),
            ("1.5s", 1_500_000_000, "1.5s"),
            ("500ms", 500_000_000, "500ms"),
            ("0", 0, "0s"),
            ("10us", 10_000, "10µs"),
            ("1h2m3.5s", 3_723_500_000_000, "1h2m3.5s"),
            ("250ns", 250, "250ns"),
            (".5m", 30_000_000_000, "30s"),
        ] {
            assert_eq!(parse_duration(input), Some(nanos), "{input}");
            assert_eq!(format_duration(nanos), printed, "{input}");
        }
        for bad in [
            "",
            "10",
            "1x",
            "-1s",
            "s",
            "1.s.",
            "5 s",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10b"), Some(10));
        for bad in ["", "m", "1x", "-1m", "1..5m", "1mm"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
