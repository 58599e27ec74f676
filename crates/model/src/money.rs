use std::fmt;
use std::str::FromStr;

/// An amount of money in micro-units of its currency (1 USD = 1,000,000). Never a float: sums are
/// exact, and on the wire it is a decimal string ("12.500000").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i64);

pub const MICROS_PER_UNIT: i64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an amount of money (a decimal number with at most 6 decimals, e.g. 12.50)")]
pub struct MoneyError(pub String);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let unit = MICROS_PER_UNIT as u64;
        write!(f, "{sign}{}.{:06}", abs / unit, abs % unit)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Money, MoneyError> {
        let err = || MoneyError(s.to_string());
        let t = s.trim();
        let (neg, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 6 || whole.len() > 12 {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| err())?;
        let frac_micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().map_err(|_| err())? };
        let v = whole * MICROS_PER_UNIT + frac_micros;
        Ok(Money(if neg { -v } else { v }))
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_decimals() {
        assert_eq!("12.5".parse::<Money>().unwrap(), Money(12_500_000));
        assert_eq!("-0.000001".parse::<Money>().unwrap(), Money(-1));
        assert_eq!(Money(2_250_000).to_string(), "2.250000");
        assert_eq!(Money(-1).to_string(), "-0.000001");
        for bad in ["", "1.2345678", "abc", "1e3", "--1", ".5", "1.2.3", "99999999999999"] {
            assert!(bad.parse::<Money>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn text_round_trips(v in -(10i64.pow(17))..10i64.pow(17)) {
            prop_assert_eq!(Money(v).to_string().parse::<Money>().unwrap(), Money(v));
        }
    }
}
