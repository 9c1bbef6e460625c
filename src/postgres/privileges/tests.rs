//! Unit tests of the pure privilege logic: presets, `*` expansion, plans and SQL text.

use std::collections::BTreeSet;

use super::*;
use crate::api::{Access, DatabaseConnectionSpec, Grant, Privilege, RoleSpec};

fn spec(access: Access, grants: Vec<Grant>) -> DatabaseConnectionSpec {
    serde_json::from_value::<DatabaseConnectionSpec>(serde_json::json!({
        "serverRef": "s", "database": "app", "role": {"name": "app"}
    }))
    .map(|mut s| {
        s.access = access;
        s.grants = grants;
        s.role = RoleSpec {
            name: "app".into(),
            create: true,
            connection_limit: None,
            password_secret_ref: None,
            rotation: None,
        };
        s
    })
    .expect("spec")
}

fn catalog() -> Catalog {
    let mut c = Catalog {
        database: "app".into(),
        owner: "admin".into(),
        ..Catalog::default()
    };
    c.schemas.extend(["public".into(), "Select \"x\"".into()]);
    c.tables
        .entry("public".into())
        .or_default()
        .extend(["orders".into(), "Line Items".into()]);
    c.sequences
        .entry("public".into())
        .or_default()
        .insert("orders_id_seq".into());
    c.functions
        .entry("public".into())
        .or_default()
        .insert(("total".into(), "total(integer)".into()));
    c.tables
        .entry("Select \"x\"".into())
        .or_default()
        .insert("t".into());
    c
}

fn render(d: &Desired) -> BTreeSet<String> {
    d.privileges.iter().map(|p| p.to_string()).collect()
}

#[test]
fn read_only_covers_connect_usage_tables_sequences_and_future_tables() {
    let d = desired(&spec(Access::ReadOnly, vec![]), &catalog()).expect("desired");
    let want: BTreeSet<String> = [
        "CONNECT on DATABASE \"app\"",
        "USAGE on SCHEMA \"public\"",
        "SELECT on TABLE \"public\".\"orders\"",
        "SELECT on TABLE \"public\".\"Line Items\"",
        "SELECT on SEQUENCE \"public\".\"orders_id_seq\"",
        "SELECT on future TABLES of \"admin\" in \"public\"",
        "SELECT on future SEQUENCES of \"admin\" in \"public\"",
    ]
    .map(String::from)
    .into();
    assert_eq!(render(&d), want);
}

#[test]
fn read_write_adds_writes_sequence_use_and_execute() {
    let d = render(&desired(&spec(Access::ReadWrite, vec![]), &catalog()).expect("desired"));
    for p in [
        "DELETE on TABLE \"public\".\"orders\"",
        "UPDATE on SEQUENCE \"public\".\"orders_id_seq\"",
        "EXECUTE on FUNCTION total(integer)",
    ] {
        assert!(d.contains(p), "{p} missing from {d:?}");
    }
    assert!(
        !d.iter().any(|p| p.starts_with("CREATE")),
        "readWrite does not create"
    );
    let owner = render(&desired(&spec(Access::Owner, vec![]), &catalog()).expect("desired"));
    assert!(owner.contains("CREATE on SCHEMA \"public\""));
}

#[test]
fn explicit_grants_expand_all_and_report_absent_objects() {
    let grants = vec![
        Grant {
            schema: Some("Select \"x\"".into()),
            tables: Some(vec!["*".into()]),
            sequences: None,
            functions: None,
            privileges: vec![Privilege::All],
        },
        Grant {
            schema: Some("public".into()),
            tables: Some(vec!["nope".into()]),
            sequences: None,
            functions: None,
            privileges: vec![Privilege::Select],
        },
        Grant {
            schema: Some("ghost".into()),
            tables: None,
            sequences: None,
            functions: None,
            privileges: vec![Privilege::Usage],
        },
    ];
    let d = desired(&spec(Access::None, grants), &catalog()).expect("desired");
    let r = render(&d);
    assert_eq!(
        r.iter()
            .filter(|p| p.ends_with("TABLE \"Select \"\"x\"\"\".\"t\""))
            .count(),
        7,
        "ALL on a table is seven privileges: {r:?}"
    );
    assert!(
        !r.iter().any(|p| p.contains("CONNECT")),
        "access none grants no CONNECT"
    );
    assert_eq!(
        d.absent,
        vec![
            "table \"public\".\"nope\"".to_string(),
            "schema \"ghost\"".to_string()
        ]
    );
}

#[test]
fn plan_revokes_what_is_extra_and_grants_what_is_missing_and_nothing_when_equal() {
    let c = catalog();
    let want = desired(&spec(Access::ReadOnly, vec![]), &c)
        .expect("desired")
        .privileges;
    assert!(plan(&want, &want).is_empty(), "converged: no statements");
    let mut have = want.clone();
    let extra = Priv {
        object: Object::Table(ident("public").unwrap(), ident("orders").unwrap()),
        privilege: "DELETE",
    };
    have.insert(extra.clone());
    let dropped = want.iter().next().cloned().expect("one");
    have.remove(&dropped);
    assert_eq!(
        plan(&want, &have),
        vec![Change::Revoke(extra), Change::Grant(dropped)]
    );
}

#[test]
fn sql_quotes_every_name() {
    let role = ident("App \"Role\"").unwrap();
    let p = Priv {
        object: Object::Table(ident("my schema").unwrap(), ident("select").unwrap()),
        privilege: "SELECT",
    };
    assert_eq!(
        sql(&Change::Grant(p.clone()), &role),
        "GRANT SELECT ON TABLE \"my schema\".\"select\" TO \"App \"\"Role\"\"\""
    );
    assert_eq!(
        sql(&Change::Revoke(p), &role),
        "REVOKE SELECT ON TABLE \"my schema\".\"select\" FROM \"App \"\"Role\"\"\""
    );
    let d = Priv {
        object: Object::DefaultTables(ident("admin").unwrap(), ident("public").unwrap()),
        privilege: "SELECT",
    };
    assert_eq!(
        sql(&Change::Grant(d), &role),
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"admin\" IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"App \"\"Role\"\"\""
    );
}

#[test]
fn what_the_role_owns_needs_no_grant() {
    let mut c = catalog();
    c.owners
        .insert(("public".into(), "orders".into()), "app".into());
    c.owners
        .insert(("public".into(), "total(integer)".into()), "app".into());
    c.owners
        .insert(("public".into(), "Line Items".into()), "admin".into());
    let d = render(&desired(&spec(Access::Owner, vec![]), &c).expect("desired"));
    assert!(!d.iter().any(|p| p.contains("\"orders\"")), "{d:?}");
    assert!(!d.iter().any(|p| p.contains("total(integer)")), "{d:?}");
    assert!(
        d.contains("SELECT on TABLE \"public\".\"Line Items\""),
        "{d:?}"
    );
}

#[test]
fn future_objects_follow_each_schemas_creator_or_the_roles_named() {
    let mut c = catalog();
    c.creators.insert("public".into(), "migrator".into());
    let d = render(&desired(&spec(Access::ReadOnly, vec![]), &c).expect("desired"));
    assert!(
        d.contains("SELECT on future TABLES of \"migrator\" in \"public\""),
        "{d:?}"
    );
    assert!(!d.iter().any(|p| p.contains("of \"admin\"")), "{d:?}");
    let mut named = spec(Access::ReadOnly, vec![]);
    named.default_privileges_for = vec!["Deploy Bot".into(), "migrator".into()];
    let d = render(&desired(&named, &c).expect("desired"));
    for creator in ["\"Deploy Bot\"", "\"migrator\""] {
        assert!(
            d.contains(&format!(
                "SELECT on future TABLES of {creator} in \"public\""
            )),
            "{d:?}"
        );
    }
    let sql = sql(
        &Change::Grant(Priv {
            object: Object::DefaultTables(ident("Deploy Bot").unwrap(), ident("public").unwrap()),
            privilege: "SELECT",
        }),
        &ident("app").unwrap(),
    );
    assert_eq!(
        sql,
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"Deploy Bot\" IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"app\""
    );
}
