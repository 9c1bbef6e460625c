//! The connection budget: what a connection's clients may open on the server, against what
//! the role and the server allow. Pure: counts in, the status summary and the
//! `ConnectionBudget` condition out; report.rs gathers the counts, the webhook refuses (or
//! warns about) a pod that would not fit.
//!
//! - Demand: pods running the connection's sidecar × `spec.pooler.poolSize`, or
//!   `spec.maxConnections` without the pooler (unknown when neither says).
//! - Limit: the lower of the role's CONNECTION LIMIT (`spec.role.connectionLimit`) and what
//!   the server leaves: `max_connections − superuser_reserved_connections −
//!   reserved_connections` (PostgreSQL docs, 19.3.1 Connection Settings) minus what the other
//!   dbconn connections on that server may open.

use crate::api::ConnectionBudget;
use crate::operator::status::Cond;

/// The condition type.
pub const CONNECTION_BUDGET: &str = "ConnectionBudget";

/// From this share of the limit on (in percent), the condition warns (reason NearLimit).
pub const NEAR_PERCENT: i64 = 80;

/// The server's connection settings, read at the reconcile's admin login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_connections: i64,
    /// superuser_reserved_connections plus reserved_connections (PostgreSQL 16+).
    pub reserved: i64,
}

/// What one connection's budget is computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Pods that run this connection's sidecar.
    pub pods: i64,
    /// `spec.pooler.poolSize` when the pooler is on.
    pub pool_size: Option<i64>,
    /// `spec.maxConnections`: what clients open without the pooler.
    pub declared: Option<i64>,
    /// The role's CONNECTION LIMIT; `None` when unlimited (-1).
    pub role_limit: Option<i64>,
    pub server: Option<ServerLimits>,
    /// What the other dbconn connections on the same server may open.
    pub others: i64,
}

/// What another connection on the same server may open: its demand, capped by its role's
/// limit (or that limit when its demand is unknown).
pub fn share(budget: &ConnectionBudget) -> i64 {
    match (budget.demand, budget.role_limit) {
        (Some(d), Some(l)) => d.min(l),
        (Some(d), None) => d,
        (None, Some(l)) => l,
        (None, None) => 0,
    }
}

/// The status summary and the condition.
pub fn assess(i: &Inputs) -> (ConnectionBudget, Cond) {
    let demand = match i.pool_size {
        Some(pool) => Some(i.pods.saturating_mul(pool)),
        None => i.declared,
    };
    let server_available = i
        .server
        .map(|s| (s.max_connections - s.reserved - i.others).max(0));
    let limit = match (i.role_limit, server_available) {
        (Some(r), Some(s)) => Some(r.min(s)),
        (r, s) => r.or(s),
    };
    let budget = ConnectionBudget {
        demand,
        pods: i.pods,
        role_limit: i.role_limit,
        server_available,
        limit,
    };
    let what = match i.pool_size {
        Some(pool) => format!(
            "{} pods with the sidecar × poolSize {pool} = {} server connections",
            i.pods,
            demand.unwrap_or(0)
        ),
        None => format!(
            "spec.maxConnections = {} server connections",
            demand.unwrap_or(0)
        ),
    };
    let allows = || {
        let mut parts = Vec::new();
        if let Some(r) = i.role_limit {
            parts.push(format!("the role's CONNECTION LIMIT is {r}"));
        }
        if let (Some(s), Some(avail)) = (i.server, server_available) {
            parts.push(format!(
                "the server leaves {avail} (max_connections {} − {} reserved − {} for other dbconn roles)",
                s.max_connections, s.reserved, i.others
            ));
        }
        parts.join("; ")
    };
    let cond = match (demand, limit) {
        (None, _) => Cond::unknown(
            CONNECTION_BUDGET,
            "without the pooler, set spec.maxConnections (what the applications open) to have it checked",
        ),
        (Some(_), None) => Cond::ok(
            CONNECTION_BUDGET,
            "Unlimited",
            format!("{what}; neither the role nor the server sets a limit"),
        ),
        (Some(d), Some(l)) if d > l => Cond::failed(
            CONNECTION_BUDGET,
            "BudgetExceeded",
            format!(
                "{what}, more than the {l} allowed ({}): raise role.connectionLimit or the server's max_connections, or lower pooler.poolSize or the replicas",
                allows()
            ),
        ),
        (Some(d), Some(l)) if d.saturating_mul(100) >= l.saturating_mul(NEAR_PERCENT) => Cond::ok(
            CONNECTION_BUDGET,
            "NearLimit",
            format!("{what} of the {l} allowed ({})", allows()),
        ),
        (Some(_), Some(l)) => Cond::ok(
            CONNECTION_BUDGET,
            "WithinBudget",
            format!("{what} of the {l} allowed ({})", allows()),
        ),
    };
    (budget, cond)
}

/// Why one more pod with a sidecar of `pool_size` connections does not fit `budget`, if it
/// does not.
pub fn one_more_pod(budget: &ConnectionBudget, pool_size: i64) -> Option<String> {
    let (demand, limit) = (budget.demand?, budget.limit?);
    (demand + pool_size > limit).then(|| {
        format!(
            "its sidecar may open {pool_size} more server connections, and {demand} of the {limit} allowed are taken (status.budget): raise role.connectionLimit or the server's max_connections, or lower pooler.poolSize"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pods: i64) -> Inputs {
        Inputs {
            pods,
            pool_size: Some(5),
            declared: None,
            role_limit: Some(20),
            server: Some(ServerLimits {
                max_connections: 100,
                reserved: 3,
            }),
            others: 40,
        }
    }

    #[test]
    fn demand_is_pods_times_pool_size_against_the_lower_limit() {
        let (b, c) = assess(&inputs(2));
        assert_eq!(b.demand, Some(10));
        assert_eq!(b.server_available, Some(57));
        assert_eq!(b.limit, Some(20), "the role's limit is the lower");
        assert_eq!((c.ok, c.reason.as_str()), (Some(true), "WithinBudget"));
        assert!(one_more_pod(&b, 5).is_none(), "a third pod fits");
        let (_, c) = assess(&inputs(3));
        assert_eq!(c.reason, "WithinBudget", "15 of 20 is under 80 %");
        let (b, c) = assess(&inputs(4));
        assert_eq!(
            (c.ok, c.reason.as_str()),
            (Some(true), "NearLimit"),
            "20 of 20 still fits"
        );
        assert!(
            c.message.contains("CONNECTION LIMIT is 20"),
            "{}",
            c.message
        );
        assert!(one_more_pod(&b, 5).is_some(), "a fifth pod would not");
        let (_, c) = assess(&inputs(5));
        assert_eq!((c.ok, c.reason.as_str()), (Some(false), "BudgetExceeded"));
        assert!(
            c.message
                .contains("5 pods with the sidecar × poolSize 5 = 25"),
            "{}",
            c.message
        );
    }

    #[test]
    fn the_server_limit_counts_other_roles_and_reserved_slots() {
        let mut i = inputs(3);
        i.role_limit = None;
        i.others = 90;
        let (b, c) = assess(&i);
        assert_eq!(b.server_available, Some(7), "100 − 3 − 90");
        assert_eq!(b.limit, Some(7));
        assert_eq!(c.reason, "BudgetExceeded");
        assert!(
            c.message.contains("max_connections 100 − 3 reserved − 90"),
            "{}",
            c.message
        );
        i.others = 500;
        assert_eq!(assess(&i).0.server_available, Some(0), "never negative");
    }

    #[test]
    fn without_the_pooler_the_declared_maximum_is_the_demand() {
        let mut i = inputs(7);
        i.pool_size = None;
        i.declared = Some(12);
        let (b, c) = assess(&i);
        assert_eq!(b.demand, Some(12));
        assert_eq!(c.reason, "WithinBudget");
        i.declared = None;
        let (b, c) = assess(&i);
        assert_eq!(b.demand, None);
        assert_eq!(c.ok, None, "unknown until declared");
        assert_eq!(one_more_pod(&b, 5), None);
    }

    #[test]
    fn no_limit_anywhere_is_unlimited_and_others_share_what_they_may_take() {
        let mut i = inputs(100);
        i.role_limit = None;
        i.server = None;
        let (b, c) = assess(&i);
        assert_eq!((b.limit, c.reason.as_str()), (None, "Unlimited"));
        assert_eq!(share(&b), 500);
        let capped = ConnectionBudget {
            demand: Some(50),
            role_limit: Some(10),
            ..Default::default()
        };
        assert_eq!(share(&capped), 10);
        let undeclared = ConnectionBudget {
            role_limit: Some(8),
            ..Default::default()
        };
        assert_eq!(share(&undeclared), 8);
    }
}
