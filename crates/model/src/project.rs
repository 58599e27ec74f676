//! Projects: how an organization (a tenant) divides its work, and what each may hold.

use std::fmt;
use std::str::FromStr;

/// A project's name within its tenant: 1 to 40 of `a-z`, `0-9` and `-`, starting with a letter
/// (it shows in pending reasons and paths, so it stays plain). Every tenant has `default`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectName(String);

impl ProjectName {
    pub const DEFAULT: &'static str = "default";

    pub fn parse(s: &str) -> Result<ProjectName, String> {
        let ok = (1..=40).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(ProjectName(s.to_string()))
        } else {
            Err(format!("project name '{s}' is not 1 to 40 lowercase letters, digits or '-' starting with a letter"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for ProjectName {
    fn default() -> ProjectName {
        ProjectName(Self::DEFAULT.to_string())
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ProjectName {
    type Err = String;
    fn from_str(s: &str) -> Result<ProjectName, String> {
        ProjectName::parse(s)
    }
}

/// What a create does when its project is at its GPU limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnQuota {
    /// Refused with the project's use and limit (nothing is written).
    #[default]
    Fail,
    /// Queued, held back from scheduling until the project has room (oldest first).
    Wait,
}

crate::node::text_enum!(OnQuota { OnQuota::Fail => "fail", OnQuota::Wait => "wait" });

/// A request's priority class: the scheduler serves higher classes first, then, within a class,
/// the projects furthest below their share, then the oldest (see `gpucloud_sched::order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Work that can wait: training sweeps, batch inference.
    Batch,
    #[default]
    Default,
    /// Serving and deadlines.
    Production,
}

crate::node::text_enum!(Priority {
    Priority::Batch => "batch",
    Priority::Default => "default",
    Priority::Production => "production",
});

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Batch, Priority::Default, Priority::Production];

    /// 0 for the lowest class, 2 for the highest.
    pub fn rank(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["default", "ml-research", "a", "team7"] {
            assert_eq!(ProjectName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "7up", "ML", "a b", "a_b", "-x", &"a".repeat(41), "ü"] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProjectName::default().is_default());
    }

    #[test]
    fn priorities_rank_in_order() {
        assert!(Priority::Production > Priority::Default && Priority::Default > Priority::Batch);
        assert_eq!(Priority::ALL.map(Priority::rank), [0, 1, 2]);
        assert_eq!("production".parse::<Priority>().unwrap(), Priority::Production);
    }

    #[test]
    fn on_quota_reads_its_texts() {
        assert_eq!("wait".parse::<OnQuota>().unwrap(), OnQuota::Wait);
        assert_eq!(OnQuota::default().as_str(), "fail");
        assert!("later".parse::<OnQuota>().is_err());
    }
}
