//! `/api/v1/services`: create, list, show, update and delete services.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tug_core::ServiceSpec;
use tug_store::ServiceRecord;

use super::jobs::is_toml;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;

/// Parses and validates a service from JSON, or TOML when the content type says so, and checks
/// what validation alone cannot: that its network pool exists. Nothing is written before this
/// passes, so a bad spec leaves nothing behind.
async fn checked_spec(st: &AppState, headers: &HeaderMap, body: &str) -> ApiResult<ServiceSpec> {
    let spec = if is_toml(headers) { ServiceSpec::from_toml(body) } else { ServiceSpec::from_json(body) }?;
    let service = spec.validate()?;
    if let Some(net) = &service.spec.network {
        match st.store.get_pool(&net.pool).await {
            Ok(_) => {}
            Err(tug_store::StoreError::PoolNotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_service",
                    format!(
                        "service {:?}: network pool {:?} does not exist; create it with `tug net pool add` or name one from `tug net pool list`",
                        service.spec.name, net.pool
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(service.spec)
}

/// A service the caller may see: 404 when it does not exist or is out of the caller's scope.
async fn visible(st: &AppState, who: &Principal, name: &str) -> ApiResult<ServiceRecord> {
    let record = st.store.get_service(name).await?;
    who.see_service(&record.spec)?;
    Ok(record)
}

pub(super) async fn create(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    body: String,
) -> ApiResult<(StatusCode, Json<ServiceRecord>)> {
    let spec = checked_spec(&st, &headers, &body).await?;
    who.may_write_service(&spec)?;
    let record = st.store.create_service(&spec, st.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(record)))
}

pub(super) async fn list(State(st): State<AppState>, who: Principal) -> ApiResult<Json<Vec<ServiceRecord>>> {
    let all = st.store.list_services().await?;
    Ok(Json(all.into_iter().filter(|r| who.grant.sees_service(&r.spec)).collect()))
}

pub(super) async fn show(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<ServiceRecord>> {
    Ok(Json(visible(&st, &who, &name).await?))
}

pub(super) async fn update(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> ApiResult<Json<ServiceRecord>> {
    let spec = checked_spec(&st, &headers, &body).await?;
    if spec.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("the body names service {:?} but the URL names {name:?}; renaming is not supported", spec.name),
        ));
    }
    visible(&st, &who, &name).await?;
    who.may_write_service(&spec)?;
    Ok(Json(st.store.update_service(&spec, st.clock.now()).await?))
}

pub(super) async fn delete(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    visible(&st, &who, &name).await?;
    st.store.delete_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
