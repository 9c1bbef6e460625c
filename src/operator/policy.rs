//! A DatabaseServer's tenancy policy as data: which databases, role names and schemas a
//! namespace may use there, and whether it may adopt roles dbconn did not create. Pure.

use std::collections::BTreeMap;
use std::fmt;

use crate::api::{Access, DatabaseConnectionSpec, DatabaseServer, TenantPolicy, is_system_schema};

use super::resolve::selector_matches;

/// What one namespace may use on one DatabaseServer: the rules that cover it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub server: String,
    pub namespace: String,
    /// The covering rules with their place in spec.tenants; `None` is the default rule.
    pub rules: Vec<(Option<usize>, TenantPolicy)>,
}

/// Something the policy refuses, with the rules that decided it (for the condition and the
/// Event).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DatabaseServer {server:?} does not let namespace {namespace:?} {what} {name:?}: {rules}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub server: String,
    pub namespace: String,
    pub what: &'static str,
    pub name: String,
    /// The rules consulted, and what they allow.
    pub rules: String,
}

/// Which part of the policy refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    Database,
    RoleName,
    Schema,
    Adoption,
}

impl RefusalKind {
    /// The condition and Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            RefusalKind::Database => "DatabaseNotAllowed",
            RefusalKind::RoleName => "RoleNameNotAllowed",
            RefusalKind::Schema => "SchemaNotAllowed",
            RefusalKind::Adoption => "AdoptionNotAllowed",
        }
    }
}

impl Rules {
    /// The rules of `server` that cover `namespace` (with these labels). Without
    /// spec.tenants, the default rule covers every namespace the server allows.
    pub fn for_namespace(
        server: &DatabaseServer,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Rules {
        let name = server.metadata.name.clone().unwrap_or_default();
        let rules = if server.spec.tenants.is_empty() {
            vec![(None, TenantPolicy::default())]
        } else {
            server
                .spec
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    t.namespace_selector
                        .as_ref()
                        .is_none_or(|s| selector_matches(s, labels))
                })
                .map(|(i, t)| (Some(i), t.clone()))
                .collect()
        };
        Rules {
            server: name,
            namespace: namespace.to_owned(),
            rules,
        }
    }

    /// Checks the names a connection asks for that the policy decides before any SQL: its
    /// database, its role name and its schemas.
    pub fn check(&self, spec: &DatabaseConnectionSpec) -> Result<(), Refusal> {
        self.allow(RefusalKind::Database, "use database", &spec.database, |r| {
            &r.databases
        })?;
        self.allow(RefusalKind::RoleName, "use role", &spec.role.name, |r| {
            &r.role_names
        })?;
        let preset = (spec.access != Access::None).then_some(spec.schemas.iter());
        for schema in preset
            .into_iter()
            .flatten()
            .chain(spec.grants.iter().filter_map(|g| g.schema.as_ref()))
        {
            self.allow(RefusalKind::Schema, "be granted on schema", schema, |r| {
                &r.schemas
            })?;
        }
        Ok(())
    }

    /// Whether the namespace may use `role` as the alternate login of rotation without the
    /// pooler (`<role.name>_alt`): it must match roleNames like role.name itself.
    pub fn check_alternate(&self, role: &str) -> Result<(), Refusal> {
        self.allow(
            RefusalKind::RoleName,
            "use role (the alternate login of rotation without the pooler)",
            role,
            |r| &r.role_names,
        )
    }

    /// Whether `role` may be named in defaultPrivilegesFor: it matches roleNames (the
    /// namespace's own roles, such as its migration role). Owners of the connection's
    /// schemas are allowed by the caller, which knows them.
    pub fn check_creator(&self, role: &str) -> Result<(), Refusal> {
        self.allow(
            RefusalKind::RoleName,
            "set default privileges for role",
            role,
            |r| &r.role_names,
        )
    }

    /// Whether a covering rule lets the namespace adopt an existing role it did not create.
    pub fn check_adoption(&self, role: &str) -> Result<(), Refusal> {
        if self.rules.iter().any(|(_, r)| r.adopt_existing_roles) {
            return Ok(());
        }
        Err(self.refusal(
            RefusalKind::Adoption,
            "adopt the existing role",
            role,
            "no rule sets adoptExistingRoles".into(),
        ))
    }

    fn allow(
        &self,
        kind: RefusalKind,
        what: &'static str,
        name: &str,
        list: impl Fn(&TenantPolicy) -> &Vec<String>,
    ) -> Result<(), Refusal> {
        let ok = self.rules.iter().any(|(_, r)| {
            list(r)
                .iter()
                .any(|p| matches_pattern(p, &self.namespace, name))
        });
        if ok && !(kind == RefusalKind::Schema && is_system_schema(name)) {
            return Ok(());
        }
        let allowed: Vec<String> = self
            .rules
            .iter()
            .map(|(i, r)| {
                let names: Vec<String> = list(r)
                    .iter()
                    .map(|p| p.replace("{namespace}", &self.namespace))
                    .collect();
                format!("{} allows {}", RuleName(*i), names.join(", "))
            })
            .collect();
        let rules = if allowed.is_empty() {
            "no rule in spec.tenants covers it".to_owned()
        } else {
            allowed.join("; ")
        };
        Err(self.refusal(kind, what, name, rules))
    }

    fn refusal(&self, kind: RefusalKind, what: &'static str, name: &str, rules: String) -> Refusal {
        Refusal {
            kind,
            server: self.server.clone(),
            namespace: self.namespace.clone(),
            what,
            name: name.to_owned(),
            rules,
        }
    }
}

/// How a rule is named in messages: `spec.tenants[2]`, or the default rule.
struct RuleName(Option<usize>);

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "spec.tenants[{i}]"),
            None => f.write_str("the default rule (spec.tenants is empty)"),
        }
    }
}

/// Whether `name` matches `pattern`, where `{namespace}` stands for `namespace` and `*` for
/// any run of characters (also none). Case-sensitive, as PostgreSQL compares names. Pure.
pub fn matches_pattern(pattern: &str, namespace: &str, name: &str) -> bool {
    let pattern = pattern.replace("{namespace}", namespace);
    glob(pattern.as_bytes(), name.as_bytes())
}

/// `*`-only glob by backtracking to the last star: O(len(p) · len(s)) at worst.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseServerSpec, Grant, Privilege, RoleSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    #[test]
    fn patterns_expand_the_namespace_and_match_stars() {
        assert!(matches_pattern("{namespace}", "team-a", "team-a"));
        assert!(!matches_pattern("{namespace}", "team-a", "team-b"));
        assert!(matches_pattern("{namespace}_*", "team-a", "team-a_orders"));
        assert!(matches_pattern("{namespace}_*", "team-a", "team-a_"));
        assert!(!matches_pattern("{namespace}_*", "team-a", "team-ab_x"));
        assert!(!matches_pattern("{namespace}_*", "team", "team-a_x"));
        assert!(!matches_pattern("{namespace}_*", "team-a", "Team-a_x"));
        assert!(matches_pattern("*", "x", ""));
        assert!(matches_pattern("a*b*c", "x", "a--b--b--c"));
        assert!(!matches_pattern("a*b*c", "x", "a--b--b--"));
        assert!(matches_pattern("shared_*_ro", "x", "shared_eu_ro"));
        assert!(matches_pattern("ünï \"q\" *", "x", "ünï \"q\" select"));
        // Quadratic at worst, never exponential.
        let long = "a".repeat(63);
        assert!(!matches_pattern(&"*a".repeat(120), "x", &long));
    }

    fn server(tenants: Vec<TenantPolicy>) -> DatabaseServer {
        DatabaseServer::new(
            "shared",
            DatabaseServerSpec {
                host: "db".into(),
                port: 5432,
                database: "postgres".into(),
                tls: Default::default(),
                admin_secret_ref: None,
                allowed_namespaces: Some(LabelSelector::default()),
                tenants,
            },
        )
    }

    fn spec(database: &str, role: &str) -> DatabaseConnectionSpec {
        DatabaseConnectionSpec {
            server_ref: Some("shared".into()),
            server: None,
            database: database.into(),
            role: RoleSpec {
                name: role.into(),
                create: true,
                connection_limit: None,
                password_secret_ref: None,
                rotation: None,
            },
            access: Access::ReadOnly,
            schemas: vec!["public".into()],
            grants: vec![],
            default_privileges_for: vec![],
            secret: Default::default(),
            pooler: Default::default(),
            max_connections: None,
            deletion_policy: Default::default(),
        }
    }

    fn labels(team: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("team".to_owned(), team.to_owned())])
    }

    #[test]
    fn the_default_rule_gives_each_namespace_its_own_database_and_role_prefix() {
        let rules = Rules::for_namespace(&server(vec![]), "team-a", &labels("a"));
        assert_eq!(rules.check(&spec("team-a", "team-a_app")), Ok(()));
        let foreign = rules.check(&spec("team-b", "team-a_app")).unwrap_err();
        assert_eq!(foreign.kind, RefusalKind::Database);
        assert!(foreign.to_string().contains("default rule"), "{foreign}");
        assert!(foreign.to_string().contains("team-b"), "{foreign}");
        let role = rules.check(&spec("team-a", "team-b_app")).unwrap_err();
        assert_eq!(role.kind.reason(), "RoleNameNotAllowed");
        assert_eq!(
            rules.check_adoption("team-a_app").unwrap_err().kind,
            RefusalKind::Adoption
        );
    }

    #[test]
    fn rules_apply_by_selector_and_add_up() {
        let a = TenantPolicy {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(labels("a")),
                ..Default::default()
            }),
            databases: vec!["orders".into()],
            role_names: vec!["{namespace}_*".into()],
            schemas: vec!["app_*".into()],
            adopt_existing_roles: false,
        };
        let all = TenantPolicy {
            namespace_selector: None,
            databases: vec!["shared".into()],
            role_names: vec![],
            schemas: vec!["*".into()],
            adopt_existing_roles: true,
        };
        let s = server(vec![a, all]);
        let team_a = Rules::for_namespace(&s, "team-a", &labels("a"));
        assert_eq!(team_a.rules.len(), 2);
        assert_eq!(team_a.check(&spec("orders", "team-a_x")), Ok(()));
        assert_eq!(team_a.check(&spec("shared", "team-a_x")), Ok(()));
        assert_eq!(team_a.check_adoption("team-a_x"), Ok(()));
        let team_b = Rules::for_namespace(&s, "team-b", &labels("b"));
        let refused = team_b.check(&spec("orders", "team-b_x")).unwrap_err();
        assert!(
            refused.rules.contains("spec.tenants[1] allows shared"),
            "{refused}"
        );
        // team-b has no roleNames at all.
        assert_eq!(
            team_b.check(&spec("shared", "team-b_x")).unwrap_err().kind,
            RefusalKind::RoleName
        );
        let none = Rules::for_namespace(
            &server(vec![TenantPolicy {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(labels("z")),
                    ..Default::default()
                }),
                ..TenantPolicy::default()
            }]),
            "team-a",
            &labels("a"),
        );
        assert!(
            none.check(&spec("team-a", "team-a_x"))
                .unwrap_err()
                .rules
                .contains("no rule")
        );
    }

    #[test]
    fn schemas_are_checked_and_system_schemas_never_pass() {
        let s = server(vec![TenantPolicy {
            schemas: vec!["app".into(), "*".into()],
            ..TenantPolicy::default()
        }]);
        let rules = Rules::for_namespace(&s, "t", &BTreeMap::new());
        let mut c = spec("t", "t_app");
        c.grants.push(Grant {
            schema: Some("pg_catalog".into()),
            tables: None,
            sequences: None,
            functions: None,
            privileges: vec![Privilege::Create],
        });
        assert_eq!(rules.check(&c).unwrap_err().kind, RefusalKind::Schema);
        let narrow = Rules::for_namespace(
            &server(vec![TenantPolicy {
                schemas: vec!["app".into()],
                ..TenantPolicy::default()
            }]),
            "t",
            &BTreeMap::new(),
        );
        assert_eq!(
            narrow.check(&spec("t", "t_app")).unwrap_err().name,
            "public"
        );
        let mut none = spec("t", "t_app");
        none.access = Access::None;
        assert_eq!(
            narrow.check(&none),
            Ok(()),
            "access none uses no preset schema"
        );
    }
}
