//! Stage 3, plan (pure): what should exist once the reconcile is done: the role with its
//! attributes and marker, its privileges, and the Secret's data.

use std::collections::BTreeMap;

use super::authorize::Facts;
use super::dereference::Refs;
use super::{Failed, at};
use crate::api::DatabaseConnection;
use crate::operator::Error;
use crate::operator::secret::{Fields, data_size, render};
use crate::operator::status::{GRANTS_APPLIED, ROLE_READY, SECRET_READY};
use crate::operator::template::SECRET_LIMIT;
use crate::postgres::privileges::{self, Catalog, Desired};
use crate::postgres::quote::{Ident, ident};
use crate::postgres::role::Marker;

/// The desired state, as data.
pub struct Plan {
    pub role_name: String,
    pub role: Ident,
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
    Ok(Plan {
        role_name: spec.role.name.clone(),
        role,
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
        username: spec.role.name.clone(),
        password: refs.password.value.clone(),
        sslmode: server.base.sslmode,
        ca_pem: server.ca_pem.clone(),
        client_cert: server.client_cert.clone(),
        pooler_port: spec
            .pooler
            .enabled
            .then(|| u16::try_from(spec.pooler.port).unwrap_or(6432)),
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
