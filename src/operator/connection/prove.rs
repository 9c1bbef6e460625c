//! Stage 5, prove: logged in as the role itself, check every privilege the plan asked for
//! with has_*_privilege, and say what is missing.

use tokio_postgres::Client;

use super::plan::Plan;
use super::report::Report;
use super::{Failed, at};
use crate::api::PrivilegeSummary;
use crate::operator::Error;
use crate::operator::status::{Cond, GRANTS_APPLIED, READY};
use crate::postgres::privileges;

/// The Ready condition, from what the role can really do.
pub async fn prove(app: &Client, plan: &Plan, r: &mut Report) -> Result<Cond, Failed> {
    let desired = &plan.privileges;
    let proof = privileges::prove(app, &desired.privileges)
        .await
        .map_err(|e| at(GRANTS_APPLIED)(Error::sql("checking privileges as the role", e)))?;
    let absent = desired.absent.iter().map(|a| format!("{a} does not exist"));
    r.privileges = Some(PrivilegeSummary {
        granted: proof.granted as i64,
        missing: proof.missing.len() as i64,
        missing_examples: proof
            .missing
            .iter()
            .take(5)
            .map(|p| p.to_string())
            .chain(absent.clone().take(5))
            .collect(),
    });
    if proof.missing.is_empty() && desired.absent.is_empty() {
        return Ok(Cond::ok(
            READY,
            "Ready",
            format!(
                "role {} has all {} privileges asked for",
                plan.role, proof.granted
            ),
        ));
    }
    let gaps: Vec<String> = proof
        .missing
        .iter()
        .take(3)
        .map(|p| p.to_string())
        .chain(absent.take(3))
        .collect();
    Ok(Cond::failed(
        READY,
        "PrivilegesMissing",
        format!(
            "role {} lacks {} of {} privileges: {}",
            plan.role,
            proof.missing.len(),
            proof.missing.len() + proof.granted,
            gaps.join("; ")
        ),
    ))
}
