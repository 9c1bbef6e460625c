//! The DatabaseServer reconcile: is the server reachable with its TLS settings, which version
//! is it, and does the admin login work.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::status::{Cond, merge};
use super::{Context, Error};
use crate::api::{DatabaseServer, DatabaseServerStatus};
use crate::postgres::{Endpoint, connect};

pub async fn reconcile(server: Arc<DatabaseServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = check(&server, &ctx).await;
    let (conds, version) = match &result {
        Ok((version, tls)) => (
            vec![
                Cond::ok(
                    "Reachable",
                    "Connected",
                    format!(
                        "PostgreSQL {version} over {}",
                        if *tls { "TLS" } else { "plain TCP" }
                    ),
                ),
                Cond::ok("Ready", "AdminLoginWorks", "the admin login works"),
            ],
            Some(version.clone()),
        ),
        Err(e) => (vec![Cond::failed("Ready", e.reason(), e.to_string())], None),
    };
    let current = server
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = DatabaseServerStatus {
        observed_generation: server.metadata.generation,
        conditions: merge(
            current,
            &conds,
            server.metadata.generation,
            Timestamp::now(),
        ),
        server_version: version,
    };
    let patch = serde_json::json!({"apiVersion": "dbconn.io/v1alpha1", "kind": "DatabaseServer", "status": status});
    Api::<DatabaseServer>::all(ctx.client.clone())
        .patch_status(
            &server.name_any(),
            &PatchParams::apply("dbconn").force(),
            &Patch::Apply(&patch),
        )
        .await?;
    result.map(|_| Action::requeue(ctx.settings.revalidate))
}

async fn check(server: &DatabaseServer, ctx: &Context) -> Result<(String, bool), Error> {
    let mut secrets = super::resolve::SecretReader::new(&ctx.client, &ctx.settings.namespace);
    let tls = &server.spec.tls;
    let material = super::resolve::tls_material(&mut secrets, tls).await?;
    let Some(admin) = &server.spec.admin_secret_ref else {
        return Err(Error::NoCredentials);
    };
    let (user, password) = secrets.credentials(admin).await?;
    let mut ep = Endpoint::new(
        &server.spec.host,
        u16::try_from(server.spec.port).unwrap_or(5432),
        &server.spec.database,
        user,
    );
    ep.password = Some(password);
    ep.sslmode = tls.sslmode;
    ep.tls = material;
    ep.application_name = format!("dbconn-operator {}", ctx.settings.identity);
    let session = connect(&ep).await?;
    let version = session
        .client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| Error::sql("reading the version", e))?;
    Ok((version.get(0), session.tls))
}
