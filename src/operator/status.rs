//! Conditions as data: which condition a failed step sets, and how a new condition list is
//! merged with the old one so lastTransitionTime moves only on a real change. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition types of a DatabaseConnection, in the order status lists them.
pub const SERVER_REACHABLE: &str = "ServerReachable";
/// The server's policy lets the namespace use what the connection names, and the role is
/// (or may become) this connection's.
pub const AUTHORIZED: &str = "Authorized";
pub const ROLE_READY: &str = "RoleReady";
pub const GRANTS_APPLIED: &str = "GrantsApplied";
pub const SECRET_READY: &str = "SecretReady";
pub const READY: &str = "Ready";
pub const STEPS: [&str; 5] = [
    SERVER_REACHABLE,
    AUTHORIZED,
    ROLE_READY,
    GRANTS_APPLIED,
    SECRET_READY,
];

/// One condition's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: Some(true),
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: Some(false),
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn unknown(type_: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: None,
            reason: "Pending".into(),
            message: message.into(),
        }
    }

    /// The condition status as Kubernetes spells it.
    pub fn status(&self) -> &'static str {
        match self.ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
    }
}

/// The full list after a run that got through `done` and failed (or not) at `failure`:
/// steps not reached are Unknown, Ready mirrors the failure, and the list is in STEPS order.
pub fn pipeline(done: Vec<Cond>, failure: Option<Cond>, ready: Cond) -> Vec<Cond> {
    let mut out = done;
    let ready = match failure {
        Some(f) => {
            let failed_at = f.type_;
            // A step that failed after reporting success (a lost claim race) reads as failed.
            out.retain(|c| c.type_ != failed_at);
            out.push(f.clone());
            for step in STEPS {
                if !out.iter().any(|c| c.type_ == step) {
                    out.push(Cond::unknown(step, format!("waiting for {failed_at}")));
                }
            }
            Cond::failed(READY, &f.reason, f.message)
        }
        None => ready,
    };
    let place = |c: &Cond| {
        STEPS
            .iter()
            .position(|s| *s == c.type_)
            .unwrap_or(STEPS.len())
    };
    out.sort_by_key(place);
    out.push(ready);
    out
}

/// Merges desired conditions into the current ones, keeping lastTransitionTime when the
/// status did not change.
pub fn merge(
    current: &[Condition],
    desired: &[Cond],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = d.status();
            let previous = current.iter().find(|c| c.type_ == d.type_);
            let since = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_marks_later_steps_unknown_and_ready_false() {
        let done = vec![Cond::ok(SERVER_REACHABLE, "Connected", "PostgreSQL 15")];
        let conds = pipeline(
            done,
            Some(Cond::failed(
                ROLE_READY,
                "RoleNotFound",
                "role \"x\" does not exist",
            )),
            Cond::ok(READY, "Ready", ""),
        );
        let summary: Vec<(&str, Option<bool>)> = conds.iter().map(|c| (c.type_, c.ok)).collect();
        assert_eq!(
            summary,
            [
                (SERVER_REACHABLE, Some(true)),
                (AUTHORIZED, None),
                (ROLE_READY, Some(false)),
                (GRANTS_APPLIED, None),
                (SECRET_READY, None),
                (READY, Some(false))
            ]
        );
        assert_eq!(conds[5].reason, "RoleNotFound");
    }

    #[test]
    fn a_step_that_fails_after_reporting_success_is_listed_once_as_failed() {
        let done = vec![
            Cond::ok(SERVER_REACHABLE, "Connected", "PostgreSQL 15"),
            Cond::ok(AUTHORIZED, "Allowed", "the role is to be created"),
        ];
        let lost = Cond::failed(AUTHORIZED, "RoleClaimed", "claimed at the same moment");
        let conds = pipeline(done, Some(lost), Cond::ok(READY, "Ready", ""));
        let authorized: Vec<&Cond> = conds.iter().filter(|c| c.type_ == AUTHORIZED).collect();
        assert_eq!(authorized.len(), 1);
        assert_eq!(authorized[0].reason, "RoleClaimed");
        assert_eq!(conds.last().map(|c| c.reason.as_str()), Some("RoleClaimed"));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = merge(&[], &[Cond::ok(READY, "Ready", "a")], Some(1), t0);
        let same = merge(&first, &[Cond::ok(READY, "Ready", "b")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Cond::failed(READY, "Unreachable", "c")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }
}
