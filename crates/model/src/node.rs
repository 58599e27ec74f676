use std::fmt;
use std::str::FromStr;

/// What the operator allows on a node. Orthogonal to its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Accepts new instances.
    Ready,
    /// Keeps what runs, accepts nothing new.
    Cordoned,
    /// Accepts nothing new and moves what runs elsewhere.
    Draining,
}

/// What the node's heartbeats say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeHealth {
    Healthy,
    /// Not heard from yet (a new node), or not schedulable for a health reason.
    Unhealthy,
    /// Silent past the heartbeat grace period: its instances were declared lost.
    Lost,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:path => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($variant),)+
                    other => Err(format!("unknown {} '{}'", stringify!($ty), other)),
                }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(NodeState { NodeState::Ready => "ready", NodeState::Cordoned => "cordoned", NodeState::Draining => "draining" });
text_enum!(NodeHealth {
    NodeHealth::Healthy => "healthy",
    NodeHealth::Unhealthy => "unhealthy",
    NodeHealth::Lost => "lost",
});

impl NodeState {
    pub fn accepts_new_instances(self) -> bool {
        self == NodeState::Ready
    }
}

/// A region name such as `eu-1`: lowercase letters, digits and dashes, 1 to 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Region(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid region name (1 to 32 lowercase letters, digits or dashes)")]
pub struct RegionError(pub String);

impl Region {
    pub fn parse(s: &str) -> Result<Region, RegionError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(Region(s.to_string())) } else { Err(RegionError(s.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Region::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What an API key may do: an operator runs the fleet and the tenants; a tenant rents GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Tenant,
}

text_enum!(Role { Role::Operator => "operator", Role::Tenant => "tenant" });

/// How capacity is sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Tier {
    #[default]
    OnDemand,
    Spot,
    Reserved,
    /// Kept started in a warm pool, waiting to be handed out.
    Warm,
}

text_enum!(Tier {
    Tier::OnDemand => "on-demand",
    Tier::Spot => "spot",
    Tier::Reserved => "reserved",
    Tier::Warm => "warm",
});
