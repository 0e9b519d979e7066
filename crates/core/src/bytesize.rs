//! Sizes of memory and disk in job specs: `512MiB`, `2G`, `1.5GiB`, `300M` or a number of bytes.
//! Decimal (`K M G T`, also `KB MB GB TB`) and binary (`Ki Mi Gi Ti`, also `KiB …`) units.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {message} (write e.g. \"512MiB\", \"2G\" or a number of bytes)")]
pub struct ByteSizeError {
    /// The text as given.
    pub input: String,
    /// What is wrong.
    pub message: String,
}

impl ByteSize {
    /// From mebibytes (Chronos and Mesos give `mem` and `disk` in MB of 2^20 bytes).
    pub fn from_mib(mib: f64) -> ByteSize {
        ByteSize((mib.max(0.0) * 1_048_576.0).round() as u64)
    }

    /// In mebibytes.
    pub fn as_mib(self) -> f64 {
        self.0 as f64 / 1_048_576.0
    }

    /// Parses a size.
    pub fn parse(input: &str) -> Result<ByteSize, ByteSizeError> {
        let err = |m: &str| ByteSizeError { input: input.to_string(), message: m.to_string() };
        let s = input.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(err("it does not start with a number"));
        }
        let n: f64 = num.parse().map_err(|_| err("the number is malformed"))?;
        let mult: f64 = match unit.trim() {
            "" | "B" | "b" => 1.0,
            "K" | "k" | "KB" | "kB" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "T" | "TB" => 1e12,
            "Ki" | "KiB" => 1024.0,
            "Mi" | "MiB" => 1_048_576.0,
            "Gi" | "GiB" => 1_073_741_824.0,
            "Ti" | "TiB" => 1_099_511_627_776.0,
            other => return Err(err(&format!("unknown unit {other:?}"))),
        };
        let bytes = n * mult;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a size such as \"512MiB\" or a number of bytes"))? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!(ByteSize::parse("512MiB").unwrap(), ByteSize(512 << 20));
        assert_eq!(ByteSize::parse("2G").unwrap(), ByteSize(2_000_000_000));
        assert_eq!(ByteSize::parse("1.5GiB").unwrap(), ByteSize(3 << 29));
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize(4096));
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize::from_mib(128.0), ByteSize(128 << 20));
        assert!(ByteSize::parse("12 parsecs").unwrap_err().to_string().contains("unknown unit"));
        assert!(ByteSize::parse("MiB").unwrap_err().to_string().contains("number"));
    }
}
