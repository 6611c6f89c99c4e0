//! Human-readable output: sizes, modes, dates.

use dfs_proto::pb;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn kind_name(kind: i32) -> &'static str {
    match pb::FileKind::try_from(kind) {
        Ok(pb::FileKind::Regular) => "file",
        Ok(pb::FileKind::Directory) => "directory",
        Ok(pb::FileKind::Symlink) => "symlink",
        Ok(pb::FileKind::Fifo) => "fifo",
        Ok(pb::FileKind::Socket) => "socket",
        Ok(pb::FileKind::CharDevice) => "char device",
        Ok(pb::FileKind::BlockDevice) => "block device",
        _ => "unknown",
    }
}

/// `drwxr-xr-x` style, with setuid/setgid/sticky.
pub fn mode_string(kind: i32, mode: u32) -> String {
    let t = match pb::FileKind::try_from(kind) {
        Ok(pb::FileKind::Directory) => 'd',
        Ok(pb::FileKind::Symlink) => 'l',
        Ok(pb::FileKind::Fifo) => 'p',
        Ok(pb::FileKind::Socket) => 's',
        Ok(pb::FileKind::CharDevice) => 'c',
        Ok(pb::FileKind::BlockDevice) => 'b',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// UTC "YYYY-MM-DD HH:MM:SS" for seconds since the epoch (proleptic Gregorian).
pub fn date(t: Option<&pb::Timespec>) -> String {
    let secs = t.map_or(0, |t| t.sec);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(
            mode_string(pb::FileKind::Directory as i32, 0o1777),
            "drwxrwxrwt"
        );
        assert_eq!(
            mode_string(pb::FileKind::Regular as i32, 0o4644),
            "-rwSr--r--"
        );
        assert_eq!(
            date(Some(&pb::Timespec { sec: 0, nsec: 0 })),
            "1970-01-01 00:00:00"
        );
        assert_eq!(
            date(Some(&pb::Timespec {
                sec: 5_000_000_000,
                nsec: 0
            })),
            "2128-06-11 08:53:20"
        );
    }
}
