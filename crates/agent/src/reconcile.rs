//! The agent's decision, pure: what the server wants against what runs here.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Run,
    Stop,
}

/// What runs here: a workload's id and whether its process is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub id: String,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Stop(String),
}

/// Start what is wanted and not known here; stop what is alive and not wanted to run. A workload
/// known here that ended is never started again: its end is reported and the server decides.
pub fn actions(wanted: &[(String, Want)], actual: &[Actual]) -> Vec<Action> {
    let mut out = Vec::new();
    for (id, want) in wanted {
        if *want == Want::Run && !actual.iter().any(|a| a.id == *id) {
            out.push(Action::Start(id.clone()));
        }
    }
    for a in actual.iter().filter(|a| a.alive) {
        let run = wanted.iter().any(|(id, w)| *id == a.id && *w == Want::Run);
        if !run {
            out.push(Action::Stop(a.id.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u8) -> String {
        format!("i-{i}")
    }

    #[test]
    fn example() {
        let wanted = vec![(id(1), Want::Run), (id(2), Want::Stop), (id(3), Want::Run)];
        let actual = vec![
            Actual { id: id(2), alive: true },
            Actual { id: id(3), alive: false },
            Actual { id: id(4), alive: true },
        ];
        assert_eq!(actions(&wanted, &actual), vec![Action::Start(id(1)), Action::Stop(id(2)), Action::Stop(id(4))]);
    }

    proptest! {
        #[test]
        fn never_starts_twice_and_leaves_no_orphan(
            wanted in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
            actual in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
        ) {
            let wanted: Vec<(String, Want)> = wanted.into_iter().map(|(i, r)| (id(i), if r { Want::Run } else { Want::Stop })).collect();
            let actual: Vec<Actual> = actual.into_iter().map(|(i, alive)| Actual { id: id(i), alive }).collect();
            let acts = actions(&wanted, &actual);
            for a in &acts {
                if let Action::Start(s) = a {
                    prop_assert!(!actual.iter().any(|x| x.id == *s), "{s} started again");
                }
            }
            for a in actual.iter().filter(|a| a.alive) {
                let keep = wanted.iter().any(|(i, w)| *i == a.id && *w == Want::Run);
                prop_assert_eq!(!keep, acts.contains(&Action::Stop(a.id.clone())));
            }
        }
    }
}
