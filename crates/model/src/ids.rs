use std::fmt;

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind} id (expected '{prefix}' followed by 1 to 40 lowercase letters or digits)")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($name:ident, $prefix:literal, $kind:literal) => {
        /// A typed id; its text always starts with its prefix so ids of different kinds never mix.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from random bits supplied by the caller (this crate draws none).
            pub fn from_random(bits: u128) -> Self {
                Self(format!("{}{}", $prefix, base32(bits)))
            }

            pub fn parse(value: &str) -> Result<Self, IdError> {
                let ok = value.strip_prefix($prefix).is_some_and(|rest| {
                    !rest.is_empty()
                        && rest.len() <= 40
                        && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                });
                if ok {
                    Ok(Self(value.to_string()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: value.to_string() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(TenantId, "t-", "tenant");
typed_id!(InstanceId, "i-", "instance");
typed_id!(NodeId, "n-", "node");
typed_id!(ApiKeyId, "k-", "api key");
typed_id!(JobId, "j-", "job");
typed_id!(ReservationId, "r-", "reservation");
typed_id!(ClusterId, "c-", "cluster");
typed_id!(PoolId, "w-", "warm pool");
typed_id!(VolumeId, "v-", "volume");

/// Crockford-style lowercase base32 of the low 80 bits: 16 characters, short enough to type.
fn base32(mut bits: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut out = [0u8; 16];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("alphabet is ascii")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_other_kinds_and_junk() {
        assert!(InstanceId::parse("n-abc").is_err());
        assert!(InstanceId::parse("i-").is_err());
        assert!(InstanceId::parse("i-ABC").is_err());
        assert!(InstanceId::parse("i-abc;drop").is_err());
        assert_eq!(InstanceId::parse("i-abc123").unwrap().as_str(), "i-abc123");
    }

    proptest! {
        #[test]
        fn random_ids_round_trip(bits in any::<u128>()) {
            let id = NodeId::from_random(bits);
            prop_assert_eq!(NodeId::parse(id.as_str()).unwrap(), id.clone());
            prop_assert_eq!(id.as_str().len(), 18);
        }
    }
}
