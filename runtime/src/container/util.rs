//! Small helpers shared by the manager and the shim: atomic files, time stamps, process identity.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half a file.
/// No fsync: these files describe processes, which do not survive a machine crash either.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
    }
    std::fs::rename(&tmp, path)
}

/// The current time as RFC 3339 with nanoseconds in UTC, like docker's log and state time stamps.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch (UTC) with nanoseconds.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let (year, month, day, h, m, s) = civil_utc(secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
}

/// Seconds since the epoch → (year, month, day, hour, minute, second) in UTC, proleptic
/// Gregorian; civil-from-days after Howard Hinnant's algorithm. Shared by every time stamp the
/// runtime writes (logs, state, image records) so there is one calendar, not several.
pub(crate) fn civil_utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, (rem / 60) % 60, rem % 60)
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat). Together
/// with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` still exists and is the one that started at `start_time`
/// (zombies count as gone).
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let rest = &stat[close + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    fields.nth(18).and_then(|s| s.parse::<u64>().ok()) == Some(start_time)
}

/// Random hex string of `bytes * 2` characters from the kernel's CSPRNG.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut buf)?;
    Ok(hex::encode(buf))
}

/// Drops from this process's page tables the resident pages of file mappings that hold no
/// private copy (program text and read-only data of the binary and its libraries). They stay in
/// the page cache, shared with every other user, and fault back in on use; a long-lived process
/// that ran a large setup and then loops in a little code keeps only the pages it touches.
/// Mappings with any anonymous (copied-on-write) page, such as relocated read-only data, are left
/// alone: for those, dropping would bring back the file's unrelocated bytes.
pub fn release_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut range: Option<(usize, usize)> = None;
    let mut clean = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = f.next().unwrap_or_default();
            let path = f.nth(3).unwrap_or_default();
            range = (path.starts_with('/') && (perms == "r-xp" || perms == "r--p"))
                .then_some((start, end));
            clean = false;
        } else if first == "Anonymous:" {
            clean = f.next() == Some("0");
        } else if first == "VmFlags:"
            && let Some((start, end)) = range.take()
            && clean
        {
            // SAFETY: the range is a whole private file mapping of this process without private
            // copies: discarding its pages only makes later accesses re-read the same bytes
            // from the page cache. MADV_RANDOM is only a read-ahead hint for those faults.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_rfc3339(1_709_251_199, 5),
            "2024-02-29T23:59:59.000000005Z"
        );
        assert_eq!(
            format_rfc3339(951_782_400, 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn own_process_is_alive_and_reused_pid_is_not() {
        let me = std::process::id() as i32;
        let st = process_start_time(me).expect("own start time");
        assert!(process_alive(me, st));
        assert!(!process_alive(me, st + 1));
    }
}
