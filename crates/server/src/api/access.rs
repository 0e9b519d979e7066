//! `/api/v1/tokens` (create, list, revoke) and `/api/v1/audit`: admin only (the gate checks).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::access::{Role, Scope};
use tug_store::{AuditEntry, AuditQuery, Page, TokenRecord};

use super::{query_error, ApiError, ApiResult, AppState};

/// `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// What it is for.
    #[serde(default)]
    name: String,
    role: String,
    scope: Option<String>,
    /// How long it works, e.g. `30d`; forever when absent.
    ttl: Option<String>,
}

/// A new token: its record and, this once, the token itself.
#[derive(Debug, Serialize)]
pub(super) struct Created {
    #[serde(flatten)]
    record: TokenRecord,
    token: String,
}

pub(super) async fn create(State(st): State<AppState>, body: String) -> ApiResult<(StatusCode, Json<Created>)> {
    let req: NewToken = serde_json::from_str(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid token request: {e}; e.g. {{\"role\": \"read\", \"ttl\": \"30d\"}}"))
    })?;
    let role: Role = req.role.parse().map_err(|e: tug_core::access::AccessError| ApiError::bad_request("invalid_role", e.to_string()))?;
    let scope: Option<Scope> = req
        .scope
        .map(|s| s.parse())
        .transpose()
        .map_err(|e: tug_core::access::AccessError| ApiError::bad_request("invalid_scope", e.to_string()))?;
    let ttl: Option<Duration> = req
        .ttl
        .map(|t| {
            let d: tug_core::Duration =
                t.parse().map_err(|e| ApiError::bad_request("invalid_ttl", format!("ttl: {e}; e.g. 12h or 30d")))?;
            if d.as_std().is_zero() {
                return Err(ApiError::bad_request("invalid_ttl", "ttl: must be more than zero, e.g. 30d"));
            }
            Ok(d.as_std())
        })
        .transpose()?;
    let minted = st.auth.create_token(&req.name, role, scope, ttl).await?;
    Ok((StatusCode::CREATED, Json(Created { record: minted.record, token: minted.token })))
}

pub(super) async fn list(State(st): State<AppState>) -> Json<Vec<TokenRecord>> {
    Json(st.auth.tokens())
}

pub(super) async fn revoke(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<TokenRecord>> {
    Ok(Json(st.auth.revoke_token(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    since: Option<String>,
    job: Option<String>,
    #[serde(default)]
    limit: usize,
    cursor: Option<String>,
}

pub(super) async fn audit(
    State(st): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let Query(p) = params.map_err(query_error)?;
    let since = p
        .since
        .map(|s| since(&s, st.clock.now()))
        .transpose()?;
    let page = st.store.list_audit(&AuditQuery { since, job: p.job, limit: p.limit, cursor: p.cursor }).await?;
    Ok(Json(page))
}

/// `since` as an instant (`2026-11-27T10:00:00Z`) or an age (`1h`: an hour before now).
fn since(s: &str, now: Timestamp) -> ApiResult<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let d: tug_core::Duration = s.parse().map_err(|_| {
        ApiError::bad_request("invalid_since", format!("since: {s:?} is neither an instant (2026-11-27T10:00:00Z) nor an age (1h, 7d)"))
    })?;
    let age = jiff::SignedDuration::try_from(d.as_std()).unwrap_or(jiff::SignedDuration::MAX);
    Ok(now.checked_sub(age).unwrap_or(Timestamp::MIN))
}
