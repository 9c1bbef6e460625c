//! Stage 3, plan (pure): what should exist once the reconcile is done: the role with its
//! attributes and marker, its privileges, and the Secret's data.

use std::collections::BTreeMap;

use super::authorize::Facts;
use super::dereference::Refs;
use super::{Failed, at};
use crate::api::DatabaseConnection;
use crate::operator::Error;
use crate::operator::secret::{Fields, data_size, mount_dir, render};
use crate::operator::status::{GRANTS_APPLIED, ROLE_READY, SECRET_READY};
use crate::operator::template::SECRET_LIMIT;
use crate::postgres::privileges::{self, Catalog, Desired};
use crate::postgres::quote::{Ident, ident};
use crate::postgres::role::Marker;

/// The desired state, as data.
pub struct Plan {
    pub role_name: String,
    pub role: Ident,
    /// The login role the Secret names: the role, or its alternate.
    pub login_name: String,
    pub login: Ident,
    /// The alternate login role to keep (rotation without the pooler).
    pub alternate: Option<(String, Ident)>,
    /// CONNECTION LIMIT; -1 for none.
    pub connection_limit: i32,
    pub password: String,
    /// The marker the role carries once claimed.
    pub marker: Marker,
    pub privileges: Desired,
    /// The Secret's data.
    pub secret: BTreeMap<String, String>,
}

/// Plans a connection with admin credentials, once its claim is known.
pub fn plan(conn: &DatabaseConnection, refs: &Refs, facts: &Facts) -> Result<Plan, Failed> {
    let mut marker = super::authorize::me(conn);
    marker.origin = facts.claim.origin();
    base(conn, refs, &facts.catalog, marker)
}

/// Plans a validate-only connection (no admin): privileges are checked, never granted.
pub fn validate_only(
    conn: &DatabaseConnection,
    refs: &Refs,
    catalog: &Catalog,
) -> Result<Plan, Failed> {
    base(conn, refs, catalog, super::authorize::me(conn))
}

fn base(
    conn: &DatabaseConnection,
    refs: &Refs,
    catalog: &Catalog,
    marker: Marker,
) -> Result<Plan, Failed> {
    let spec = &conn.spec;
    let role = ident(&spec.role.name).map_err(at(ROLE_READY))?;
    let privileges = privileges::desired(spec, catalog).map_err(at(GRANTS_APPLIED))?;
    let secret = secret(conn, refs).map_err(at(SECRET_READY))?;
    let login = ident(&refs.password.login).map_err(at(ROLE_READY))?;
    let alternate = match &refs.password.alternate {
        Some(alt) => Some((alt.clone(), ident(alt).map_err(at(ROLE_READY))?)),
        None => None,
    };
    Ok(Plan {
        role_name: spec.role.name.clone(),
        role,
        login_name: refs.password.login.clone(),
        login,
        alternate,
        connection_limit: spec.role.connection_limit.unwrap_or(-1),
        password: refs.password.value.clone(),
        marker,
        privileges,
        secret,
    })
}

/// The Secret's data: dbconn's keys and the rendered templates, at most SECRET_LIMIT bytes.
pub fn secret(conn: &DatabaseConnection, refs: &Refs) -> Result<BTreeMap<String, String>, Error> {
    let spec = &conn.spec;
    let server = &refs.server;
    let fields = Fields {
        host: server.base.host.clone(),
        port: server.base.port,
        dbname: spec.database.clone(),
        username: refs.password.login.clone(),
        password: refs.password.client.clone(),
        server_password: refs.password.value.clone(),
        server_password_next: refs.password.next.clone(),
        sslmode: server.base.sslmode,
        ca_pem: server.ca_pem.clone(),
        client_cert: server.client_cert.clone(),
        pooler_port: spec
            .pooler
            .enabled
            .then(|| u16::try_from(spec.pooler.port).unwrap_or(6432)),
        mount_dir: mount_dir(conn.metadata.name.as_deref().unwrap_or_default()),
    };
    let data = render(&fields, &spec.secret.template)?;
    let size = data_size(&data);
    if size > SECRET_LIMIT {
        return Err(Error::SecretTooLarge {
            size,
            limit: SECRET_LIMIT,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::connection::authorize::Claim;
    use crate::operator::connection::dereference::{Existing, Password, PasswordSource};
    use crate::operator::resolve::Resolved;
    use crate::postgres::Endpoint;
    use crate::postgres::role::Origin;

    fn conn(template: serde_json::Value) -> DatabaseConnection {
        let mut c: DatabaseConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "dbconn.io/v1alpha1", "kind": "DatabaseConnection",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"},
            "spec": {"serverRef": "main", "database": "orders", "role": {"name": "shop_orders"},
                     "secret": {"template": template}}
        }))
        .expect("connection");
        c.spec.role.connection_limit = Some(20);
        c
    }

    fn refs() -> Refs {
        Refs {
            namespace: "shop".into(),
            server: Resolved {
                label: "db:5432".into(),
                base: Endpoint::new("db", 5432, "orders", ""),
                admin: Some(("admin".into(), "pw".into())),
                ca_pem: None,
                client_cert: None,
                admin_database: "postgres".into(),
                rules: None,
                admin_tls: Default::default(),
            },
            secret_name: "orders".into(),
            secret: Existing::Absent,
            password: Password {
                value: "p".repeat(32),
                source: PasswordSource::New,
                client: "p".repeat(32),
                next: None,
                rotation: crate::operator::rotation::Step::Keep(None),
                login: "shop_orders".into(),
                alternate: None,
            },
        }
    }

    fn facts(claim: Claim) -> Facts {
        let mut catalog = Catalog {
            database: "orders".into(),
            owner: "admin".into(),
            ..Catalog::default()
        };
        catalog.schemas.insert("public".into());
        Facts {
            role: None,
            claim,
            catalog,
        }
    }

    #[test]
    fn the_plan_carries_the_claims_origin_and_the_secret() {
        let p = plan(
            &conn(serde_json::json!({"DSN": "host={{ host }}"})),
            &refs(),
            &facts(Claim::Adopt {
                previous: String::new(),
            }),
        )
        .unwrap_or_else(|_| panic!("plan"));
        assert_eq!(p.marker.origin, Origin::Adopted);
        assert_eq!(p.marker.uid, "u-1");
        assert_eq!(p.marker.owner, Some(("shop".into(), "orders".into())));
        assert_eq!(p.connection_limit, 20);
        assert_eq!(p.secret["DSN"], "host=db");
        assert_eq!(p.secret["password"], "p".repeat(32));
        assert!(
            p.privileges
                .privileges
                .iter()
                .any(|x| x.to_string() == "CONNECT on DATABASE \"orders\"")
        );
    }

    #[test]
    fn a_secret_past_one_mebibyte_is_refused_with_its_size() {
        // 20 values of 60 KiB: each within its bound, together past the Secret's.
        let template: serde_json::Map<String, serde_json::Value> = (0..20)
            .map(|i| {
                (
                    format!("K{i}"),
                    serde_json::Value::from(format!(
                        "{{{{ password | replace('', '{}') }}}}",
                        "y".repeat(1800)
                    )),
                )
            })
            .collect();
        let err = secret(&conn(serde_json::Value::Object(template)), &refs()).unwrap_err();
        assert_eq!(err.reason(), "SecretTooLarge", "{err}");
        assert!(err.to_string().contains("1048576"), "{err}");
    }
}
