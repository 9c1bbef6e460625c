//! dbconn's reads of a role's privileges against the bed's real PostgreSQL, on the catalog
//! shapes that large installations have: ACLs with hundreds of entries (stored compressed),
//! objects without an ACL and objects whose ACL is empty, under hostile names.

mod support;

use std::collections::BTreeSet;

use dbconn::api::SslMode;
use dbconn::postgres::privileges::{self, Object, Priv, Scope};
use dbconn::postgres::quote::ident;
use dbconn::postgres::{Endpoint, connect};
use support::{bed, database, unique};
use testbed::postgres::SUPERUSER;

/// Roles granted alongside the one read: enough that the database's and the schema's ACLs
/// are stored compressed (over 2 kB), as on a server with many connections.
const CROWD: usize = 400;

/// Drops the test's database and its roles (the cluster's, not the database's) however the
/// test ends.
struct Cleanup {
    db: String,
    roles: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::iter::once(&self.db).chain(&self.roles);
        let Ok(names) = names.map(|n| ident(n)).collect::<Result<Vec<_>, _>>() else {
            return;
        };
        let mut sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", names[0]);
        for r in &names[1..] {
            sql.push_str(&format!("DROP ROLE IF EXISTS {r};"));
        }
        if let Err(e) = bed().postgres.psql("postgres", &sql) {
            eprintln!("cleaning up: {e}");
        }
    }
}

#[tokio::test]
async fn a_roles_privileges_read_exactly_among_hundreds_of_grantees() {
    let pg = &bed().postgres;
    let db = database("catalog");
    let mut ep = Endpoint::new("localhost", pg.port, db.as_str(), SUPERUSER);
    ep.password = Some(pg.superuser_password.clone());
    ep.sslmode = SslMode::VerifyFull;
    ep.tls.ca_pem = Some(std::fs::read(&bed().ca_cert).expect("bed CA"));
    let admin = connect(&ep).await.expect("admin session").client;

    let role = format!("App \"r\" é select {}", unique("r"));
    let crowd = format!("crowd {}", unique("c"));
    let nobody = format!("nobody {}", unique("n"));
    let _cleanup = Cleanup {
        db: db.clone(),
        roles: (0..CROWD)
            .map(|i| format!("{crowd} {i}"))
            .chain([role.clone(), nobody.clone()])
            .collect(),
    };
    let (r, dbi) = (ident(&role).unwrap(), ident(&db).unwrap());
    let schema = ident("Sch \"x\" é").unwrap();
    let table = ident("Order").unwrap();
    let bare = ident("no grants").unwrap();
    let emptied = ident("all revoked").unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {r};
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.{table} (id int);
             CREATE TABLE {schema}.{bare} (id int);
             CREATE TABLE {schema}.{emptied} (id int);
             REVOKE ALL ON {schema}.{emptied} FROM CURRENT_USER;
             CREATE FUNCTION {schema}.f(int) RETURNS int LANGUAGE sql AS 'SELECT 1';
             REVOKE EXECUTE ON FUNCTION {schema}.f(int) FROM PUBLIC;
             GRANT CONNECT ON DATABASE {dbi} TO {r};
             GRANT USAGE ON SCHEMA {schema} TO {r};
             GRANT SELECT ON {schema}.{table} TO {r};
             GRANT EXECUTE ON FUNCTION {schema}.f(int) TO {r};"
        ))
        .await
        .expect("set up");
    for i in 0..CROWD {
        let c = ident(&format!("{crowd} {i}")).unwrap();
        admin
            .batch_execute(&format!(
                "CREATE ROLE {c}; GRANT CONNECT ON DATABASE {dbi} TO {c}; \
                 GRANT USAGE ON SCHEMA {schema} TO {c}; GRANT SELECT ON {schema}.{table} TO {c}"
            ))
            .await
            .expect("crowd");
    }
    // What makes the read slow unless each ACL is decompressed once (see entries());
    // pg_column_compression is PostgreSQL 14's.
    let version: i32 = admin
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4",
            &[],
        )
        .await
        .expect("server_version_num")
        .get(0);
    let compressed: Option<String> = if version < 140000 {
        Some("unknown".into())
    } else {
        admin
            .query_one(
                "SELECT pg_catalog.pg_column_compression(datacl) FROM pg_catalog.pg_database \
             WHERE datname = pg_catalog.current_database()",
                &[],
            )
            .await
            .expect("datacl compression")
            .get(0)
    };
    assert!(
        compressed.is_some(),
        "the database's ACL is stored compressed"
    );

    // An ACL with no entry at all (everything revoked, even from the owner) is read too.
    let entries: Option<i32> = admin
        .query_one(
            &format!(
                "SELECT pg_catalog.cardinality(relacl) FROM pg_catalog.pg_class \
                 WHERE oid = '{schema}.{emptied}'::pg_catalog.regclass"
            ),
            &[],
        )
        .await
        .expect("relacl")
        .get(0);
    assert_eq!(entries, Some(0), "an empty, not a NULL, ACL");

    let current = privileges::current(&admin, &role)
        .await
        .expect("privileges read");
    let signature: String = admin
        .query_one(
            &format!("SELECT '{schema}.f(int)'::pg_catalog.regprocedure::pg_catalog.text"),
            &[],
        )
        .await
        .expect("signature")
        .get(0);
    let expected: BTreeSet<Priv> = [
        (Object::Database(dbi.clone()), "CONNECT"),
        (Object::Schema(schema.clone()), "USAGE"),
        (Object::Table(schema.clone(), table.clone()), "SELECT"),
        (
            Object::Function(schema.clone(), ident("f").unwrap(), signature),
            "EXECUTE",
        ),
    ]
    .into_iter()
    .map(|(object, privilege)| Priv { object, privilege })
    .collect();
    assert_eq!(current, expected, "exactly the role's own entries");

    // Every entry names its grantor: the admin that ran the GRANTs.
    let all = privileges::entries(&admin, &role, Scope::All)
        .await
        .expect("entries");
    assert_eq!(all.len(), expected.len());
    assert!(all.iter().all(|e| e.grantor == SUPERUSER), "{all:?}");

    // A role with no grant among the crowd reads as none.
    let n = ident(&nobody).unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {n}"))
        .await
        .expect("nobody");
    assert!(
        privileges::current(&admin, &nobody)
            .await
            .expect("read")
            .is_empty()
    );
}
