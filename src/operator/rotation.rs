//! Zero-downtime password rotation (spec.role.rotation), as a pure decision.
//!
//! **With the pooler**, the apps' password (the Secret's `password`, what they send the sidecar) never changes.
//! The role's password (`server-password`, what the sidecar sends the server) changes in two
//! reconciles:
//! 1. **stage**: a new password goes into the Secret as `server-password-next`; the server
//!    still has the old one. Kubelets bring the Secret into every pod meanwhile.
//! 2. **switch**, once `propagationSeconds` have passed: the role gets the new password (as a
//!    SCRAM verifier, by the login step), and the Secret's `server-password` becomes it. A
//!    sidecar whose login with the old password is refused retries with `-next` at once, and
//!    retires its old server connections after their transactions.
//!
//! **Without the pooler**, apps hold the role's credentials themselves (`DATABASE_URL` is
//! fixed when a pod starts), and PostgreSQL keeps one password per role. So the role has an
//! *alternate*: a second login role, `<role>_alt`, a member of the role whose sessions start
//! as the role (`ALTER ROLE … SET role`), so `current_user`, privileges and ownership are the
//! role's. A rotation is a single **switch**: the login the Secret does not name gets a new
//! password and the Secret names it. The other login keeps its password, so pods started
//! before the rotation work until the next one; Deployments annotated
//! `dbconn.io/rollout-on-rotation: <connection>` are restarted at once (rollout.rs).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{RotationSpec, RotationStatus};

/// The annotation that asks for a rotation now: any new value.
pub const ROTATE: &str = "dbconn.io/rotate";

/// What this reconcile does about the role's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep the current password; look again after the duration, if given (a period is due).
    Keep(Option<Duration>),
    /// Put a new password in the Secret as `server-password-next`; switch after the
    /// duration.
    Stage(Duration),
    /// A staged password waits for kubelets; switch after the duration.
    Wait(Duration),
    /// Set the staged password on the role and make it the current one.
    Switch,
}

/// What the decision reads.
pub struct Input<'a> {
    pub spec: Option<&'a RotationSpec>,
    /// The role's password is one dbconn generated and keeps (not given, not new).
    pub generated: bool,
    /// The `dbconn.io/rotate` annotation.
    pub request: Option<&'a str>,
    pub status: Option<&'a RotationStatus>,
    /// `server-password-next` is in the Secret.
    pub staged: bool,
    /// The pooler is on: stage, wait for kubelets, switch. Without it a rotation switches
    /// logins at once.
    pub pooler: bool,
    /// When the connection was created (the first period counts from it).
    pub created: Option<Timestamp>,
    pub now: Timestamp,
}

fn parse(t: Option<&String>) -> Option<Timestamp> {
    t.and_then(|t| t.parse().ok())
}

fn until(from: Timestamp, seconds: i64, now: Timestamp) -> Duration {
    let due = from.as_second().saturating_add(seconds);
    Duration::from_secs(u64::try_from(due.saturating_sub(now.as_second())).unwrap_or(0))
}

/// The alternate login role of `role`, for rotation without the pooler: `<role>_alt`.
/// At most 63 bytes when `role` is at most 59 (the CRD's bound with rotation and no pooler).
pub fn alternate(role: &str) -> String {
    format!("{role}_alt")
}

/// The login role a rotation without the pooler switches to: the one the Secret does not
/// name now.
pub fn standby(role: &str, login: &str) -> String {
    if login == role {
        alternate(role)
    } else {
        role.to_owned()
    }
}

pub fn decide(i: &Input) -> Step {
    let Some(spec) = i.spec.filter(|_| i.generated) else {
        return Step::Keep(None);
    };
    let status = i.status.cloned().unwrap_or_default();
    if i.staged && i.pooler {
        // Staged by an earlier run; one whose status was not written counts from now.
        let staged = parse(status.staged_time.as_ref()).unwrap_or(i.now);
        let left = until(staged, spec.propagation_seconds, i.now);
        return if left.is_zero() {
            Step::Switch
        } else {
            Step::Wait(left)
        };
    }
    let requested = i
        .request
        .is_some_and(|r| status.last_request.as_deref() != Some(r));
    let period = spec.period_seconds.map(|p| {
        let from = parse(status.last_rotation_time.as_ref())
            .or(i.created)
            .unwrap_or(i.now);
        until(from, p, i.now)
    });
    if (requested || period.is_some_and(|left| left.is_zero())) && !i.pooler {
        Step::Switch
    } else if requested || period.is_some_and(|left| left.is_zero()) {
        Step::Stage(Duration::from_secs(
            u64::try_from(spec.propagation_seconds).unwrap_or(0),
        ))
    } else {
        Step::Keep(period)
    }
}

/// The status after `step`, from the one before.
pub fn status_after(
    step: &Step,
    before: Option<&RotationStatus>,
    request: Option<&str>,
    now: Timestamp,
) -> RotationStatus {
    let mut s = before.cloned().unwrap_or_default();
    match step {
        Step::Stage(_) => s.staged_time = Some(now.to_string()),
        Step::Wait(_) => {
            s.staged_time.get_or_insert_with(|| now.to_string());
        }
        Step::Switch => {
            s.staged_time = None;
            s.last_rotation_time = Some(now.to_string());
            s.last_request = request.map(str::to_owned).or(s.last_request);
        }
        Step::Keep(_) => s.staged_time = None,
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(period: Option<i64>) -> RotationSpec {
        RotationSpec {
            period_seconds: period,
            propagation_seconds: 30,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn input<'a>(spec: &'a RotationSpec, status: Option<&'a RotationStatus>) -> Input<'a> {
        Input {
            spec: Some(spec),
            generated: true,
            request: None,
            status,
            staged: false,
            pooler: true,
            created: Some(at(0)),
            now: at(10),
        }
    }

    #[test]
    fn a_new_request_stages_then_waits_for_kubelets_then_switches() {
        let s = spec(None);
        let mut i = input(&s, None);
        assert_eq!(decide(&i), Step::Keep(None), "nothing asked");
        i.request = Some("1");
        let step = decide(&i);
        assert_eq!(step, Step::Stage(Duration::from_secs(30)));
        let staged = status_after(&step, None, i.request, i.now);
        assert_eq!(staged.staged_time, Some(at(10).to_string()));
        // Ten seconds on, still propagating.
        let mut i = input(&s, Some(&staged));
        i.request = Some("1");
        i.staged = true;
        i.now = at(20);
        assert_eq!(decide(&i), Step::Wait(Duration::from_secs(20)));
        i.now = at(40);
        assert_eq!(decide(&i), Step::Switch);
        let done = status_after(&Step::Switch, Some(&staged), i.request, i.now);
        assert_eq!(done.last_request.as_deref(), Some("1"));
        assert_eq!(done.staged_time, None);
        // The same request again does nothing; a new one rotates again.
        let mut i = input(&s, Some(&done));
        i.request = Some("1");
        i.now = at(50);
        assert_eq!(decide(&i), Step::Keep(None));
        i.request = Some("2");
        assert!(matches!(decide(&i), Step::Stage(_)));
    }

    #[test]
    fn a_period_counts_from_the_last_rotation_or_creation() {
        let s = spec(Some(3600));
        let i = input(&s, None);
        assert_eq!(decide(&i), Step::Keep(Some(Duration::from_secs(3590))));
        let mut late = input(&s, None);
        late.now = at(3600);
        assert!(matches!(decide(&late), Step::Stage(_)));
        let rotated = RotationStatus {
            last_rotation_time: Some(at(3000).to_string()),
            ..Default::default()
        };
        let mut i = input(&s, Some(&rotated));
        i.now = at(3600);
        assert_eq!(decide(&i), Step::Keep(Some(Duration::from_secs(3000))));
    }

    #[test]
    fn only_generated_passwords_rotate_and_a_staged_one_without_status_waits_a_full_period() {
        let s = spec(None);
        let mut i = input(&s, None);
        i.request = Some("x");
        i.generated = false;
        assert_eq!(decide(&i), Step::Keep(None));
        let mut i = input(&s, None);
        i.staged = true;
        assert_eq!(decide(&i), Step::Wait(Duration::from_secs(30)));
        let mut off = input(&s, None);
        off.spec = None;
        off.staged = true;
        assert_eq!(
            decide(&off),
            Step::Keep(None),
            "rotation turned off drops the staged one"
        );
    }

    #[test]
    fn without_the_pooler_a_rotation_switches_logins_at_once_and_alternates() {
        let s = spec(Some(3600));
        let mut i = input(&s, None);
        i.pooler = false;
        i.request = Some("1");
        assert_eq!(
            decide(&i),
            Step::Switch,
            "no staging: the old login stays valid"
        );
        i.request = None;
        i.now = at(3600);
        assert_eq!(decide(&i), Step::Switch, "a period is due");
        i.now = at(100);
        i.staged = true; // left by a pooler turned off mid-rotation: nothing waits for it
        assert_eq!(decide(&i), Step::Keep(Some(Duration::from_secs(3500))));
        assert_eq!(
            standby("Shop \"Orders\"", "Shop \"Orders\""),
            "Shop \"Orders\"_alt"
        );
        assert_eq!(standby("r", "r_alt"), "r");
        assert_eq!(alternate(&"x".repeat(59)).len(), 63);
    }
}
