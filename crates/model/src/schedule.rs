//! A size schedule for a cluster: "08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40". Windows are
//! local times of day at a fixed UTC offset; a window may wrap past midnight (22:00-06:00); the
//! first window that holds the time wins, else `otherwise`. Pure: the caller gives the time.

use crate::{GpuModel, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after local midnight; `to` is exclusive.
    pub from: u32,
    pub to: u32,
    pub nodes: u32,
    pub model: GpuModel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeSchedule {
    pub windows: Vec<Window>,
    pub otherwise: (u32, GpuModel),
    /// Local time = UTC + this many minutes.
    pub utc_offset_min: i32,
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s.trim().split_once(':').ok_or_else(|| format!("'{s}' is not a time like 08:00"))?;
    let h: u32 = h.parse().map_err(|_| format!("'{s}' is not a time like 08:00"))?;
    let m: u32 = m.parse().map_err(|_| format!("'{s}' is not a time like 08:00"))?;
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("'{s}' is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// "8 x RTX-6000-Ada" (or "8x A40").
fn parse_size(s: &str) -> Result<(u32, GpuModel), String> {
    let (n, m) = s.split_once('x').ok_or_else(|| format!("'{}' is not a size like 8 x A40", s.trim()))?;
    let n: u32 = n.trim().parse().map_err(|_| format!("'{}' is not a size like 8 x A40", s.trim()))?;
    let model: GpuModel = m.trim().parse().map_err(|e: crate::UnknownGpuModel| e.to_string())?;
    Ok((n, model))
}

/// "+01:00", "-05:30", "UTC" or "Z".
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" || t.is_empty() {
        return Ok(0);
    }
    let bad = || format!("'{s}' is not a UTC offset like +01:00");
    let (sign, rest) = match t.as_bytes()[0] {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

impl SizeSchedule {
    pub fn parse(text: &str, utc_offset_min: i32) -> Result<SizeSchedule, String> {
        let mut windows = Vec::new();
        let mut otherwise = None;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(rest) = part.strip_prefix("otherwise") {
                if otherwise.is_some() {
                    return Err("only one 'otherwise'".into());
                }
                otherwise = Some(parse_size(rest)?);
                continue;
            }
            let (range, size) = part
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("'{part}' is not a rule like 08:00-20:00 8 x A40"))?;
            let (from, to) =
                range.split_once('-').ok_or_else(|| format!("'{range}' is not a range like 08:00-20:00"))?;
            let (from, to) = (parse_hhmm(from)?, parse_hhmm(to)?);
            if from == to {
                return Err(format!("'{range}' is empty"));
            }
            let (nodes, model) = parse_size(size)?;
            windows.push(Window { from, to, nodes, model });
        }
        let otherwise = otherwise.ok_or("a schedule ends with 'otherwise N x MODEL'")?;
        if windows.is_empty() {
            return Err("a schedule needs at least one window like 08:00-20:00 8 x A40".into());
        }
        Ok(SizeSchedule { windows, otherwise, utc_offset_min })
    }

    /// The size and model in force at `t`.
    pub fn at(&self, t: Timestamp) -> (u32, GpuModel) {
        let local_min = (t.millis().div_euclid(60_000) + i64::from(self.utc_offset_min)).rem_euclid(24 * 60) as u32;
        for w in &self.windows {
            let inside = if w.from < w.to {
                w.from <= local_min && local_min < w.to
            } else {
                local_min >= w.from || local_min < w.to
            };
            if inside {
                return (w.nodes, w.model);
            }
        }
        self.otherwise
    }

    /// Every size the schedule can ask for.
    pub fn sizes(&self) -> impl Iterator<Item = u32> + '_ {
        self.windows.iter().map(|w| w.nodes).chain(std::iter::once(self.otherwise.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: &str = "08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40";

    fn at(h: i64, m: i64) -> Timestamp {
        // 2026-11-27 is day 20784 since the epoch.
        Timestamp((20_784 * 86_400 + h * 3600 + m * 60) * 1000)
    }

    #[test]
    fn day_and_night() {
        let s = SizeSchedule::parse(DAY, 0).unwrap();
        assert_eq!(s.at(at(7, 59)), (4, GpuModel::A40));
        assert_eq!(s.at(at(8, 0)), (8, GpuModel::Rtx6000Ada));
        assert_eq!(s.at(at(19, 59)), (8, GpuModel::Rtx6000Ada));
        assert_eq!(s.at(at(20, 0)), (4, GpuModel::A40));
        // At UTC+01:00, 07:30 UTC is 08:30 local.
        let paris = SizeSchedule::parse(DAY, parse_utc_offset("+01:00").unwrap()).unwrap();
        assert_eq!(paris.at(at(7, 30)), (8, GpuModel::Rtx6000Ada));
        let night = SizeSchedule::parse("22:00-06:00 2 x A100-40GB, otherwise 1 x A100-40GB", 0).unwrap();
        assert_eq!(night.at(at(23, 0)).0, 2);
        assert_eq!(night.at(at(5, 59)).0, 2);
        assert_eq!(night.at(at(6, 0)).0, 1);
        for bad in [
            "08:00-20:00 8 x RTX-6000-Ada",
            "otherwise 4 x A40",
            "8-20 8 x A40, otherwise 1 x A40",
            "08:00-20:00 eight x A40, otherwise 1 x A40",
            "08:00-20:00 8 x Z80, otherwise 1 x A40",
            "08:00-08:00 1 x A40, otherwise 1 x A40",
        ] {
            assert!(SizeSchedule::parse(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(parse_utc_offset("-05:30"), Ok(-330));
        assert!(parse_utc_offset("Europe/Paris").is_err());
    }

    proptest! {
        /// A day has exactly the two sizes, switching where the window says, whatever the offset.
        #[test]
        fn the_window_holds_exactly_its_minutes(from in 0u32..1440, len in 1u32..1439, offset in -720i32..840, m in 0i64..(3 * 1440)) {
            let to = (from + len) % 1440;
            let text = format!("{:02}:{:02}-{:02}:{:02} 3 x A40, otherwise 1 x A40", from / 60, from % 60, to / 60, to % 60);
            let s = SizeSchedule::parse(&text, offset).unwrap();
            let t = Timestamp(20_784 * 86_400_000 + m * 60_000);
            let local = ((m + i64::from(offset)).rem_euclid(1440)) as u32;
            let inside = (local + 1440 - from) % 1440 < len;
            prop_assert_eq!(s.at(t).0, if inside { 3 } else { 1 });
        }
    }
}
