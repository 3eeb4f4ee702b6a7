//! Small formatting helpers for `trident status`: Docker timestamps, durations, byte sizes,
//! CPU percentages from two stats samples. Pure functions, unit-tested here.

/// Seconds since the Unix epoch of an RFC 3339 timestamp as Docker writes them
/// (`2026-11-21T12:00:00.123456789Z`, or with a `+hh:mm` offset). `None` for Docker's
/// zero time (`0001-01-01T00:00:00Z`) and for anything unparsable.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Split off the zone: 'Z' or a signed offset after the seconds.
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let off: i64 = oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60;
        (t, sign * off)
    };
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.split('.').next()?.parse().ok()?;
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec - offset_secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `3d4h`, `2h05m`, `4m07s`, `12s`: the two largest units.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Binary units with one decimal: `512B`, `1.5KiB`, `230.0MiB`, `2.0GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// CPU use in percent of one core, the way `docker stats` computes it: container CPU time
/// delta over system CPU time delta, times the number of CPUs. `None` without a previous
/// sample (first read after start) or when the counters did not move.
pub fn cpu_percent(
    total: u64,
    pre_total: u64,
    system: u64,
    pre_system: u64,
    online_cpus: u32,
) -> Option<f64> {
    let cpu_delta = total.checked_sub(pre_total)?;
    let system_delta = system.checked_sub(pre_system)?;
    if system_delta == 0 || pre_system == 0 {
        return None;
    }
    Some(cpu_delta as f64 / system_delta as f64 * f64::from(online_cpus.max(1)) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_as_docker_writes_it() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-21T12:00:00.123456789Z"),
            Some(1_795_262_400)
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T13:30:00+01:30"),
            Some(1_795_262_400)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:01Z"), Some(951_782_401));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(247), "4m07s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 59), "3d4h");
        assert_eq!(human_duration(-3), "0s");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(230 * 1024 * 1024), "230.0MiB");
    }

    #[test]
    fn cpu_percent_like_docker_stats() {
        // 0.5 s of CPU over 1 s of wall on 2 CPUs (system counter advances 2 s) = 50 %.
        let p = cpu_percent(
            1_500_000_000,
            1_000_000_000,
            4_000_000_000,
            2_000_000_000,
            2,
        );
        assert!((p.expect("some") - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent(10, 5, 100, 0, 2), None, "no previous sample");
        assert_eq!(cpu_percent(10, 5, 100, 100, 2), None, "no system delta");
        assert_eq!(cpu_percent(5, 10, 200, 100, 2), None, "counter went back");
    }
}
