//! `/api/v1/net`: address pools and the addresses claimed from them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tug_net::{Claim, PoolSpec};
use tug_store::PoolRecord;

use super::{ApiError, ApiResult, AppState, query_error};

/// A pool as the API shows it: the stored record and how full it is.
#[derive(Debug, Serialize)]
pub struct PoolView {
    #[serde(flatten)]
    record: PoolRecord,
    /// How many addresses it hands out (its CIDR less the gateway and reserved ranges).
    usable: u64,
    /// How many of them are claimed.
    claimed: usize,
}

async fn view(st: &AppState, record: PoolRecord) -> ApiResult<PoolView> {
    let claimed = st.store.list_claims(Some(&record.spec.name)).await?.len();
    Ok(PoolView { usable: record.spec.usable(), claimed, record })
}

pub(super) async fn create(State(st): State<AppState>, body: String) -> ApiResult<(StatusCode, Json<PoolView>)> {
    let spec: PoolSpec = serde_json::from_str(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid pool JSON: {e}")))?;
    let record = st.net.add_pool(spec).await?;
    Ok((StatusCode::CREATED, Json(view(&st, record).await?)))
}

pub(super) async fn list(State(st): State<AppState>) -> ApiResult<Json<Vec<PoolView>>> {
    let mut out = Vec::new();
    for record in st.store.list_pools().await? {
        out.push(view(&st, record).await?);
    }
    Ok(Json(out))
}

pub(super) async fn show(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<PoolView>> {
    let record = st.store.get_pool(&name).await?;
    Ok(Json(view(&st, record).await?))
}

pub(super) async fn delete(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    st.net.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddressParams {
    pool: Option<String>,
}

pub(super) async fn addresses(
    State(st): State<AppState>,
    params: Result<Query<AddressParams>, QueryRejection>,
) -> ApiResult<Json<Vec<Claim>>> {
    let Query(p) = params.map_err(query_error)?;
    Ok(Json(st.store.list_claims(p.pool.as_deref()).await?))
}

/// The pool a job or service (`what`, e.g. `job "web"`) draws its addresses from: the one it
/// names, which must exist; or else, when it may have an address (`may_draw`), the one pool whose
/// selector its labels match, written into its `network` so `show` says where it draws from. Its
/// labels matching several pools' selectors is refused: it must name one.
pub(super) async fn draw_pool(
    st: &AppState,
    what: &str,
    code: &'static str,
    labels: &std::collections::BTreeMap<String, String>,
    network: &mut Option<tug_core::job::NetworkSpec>,
    may_draw: bool,
) -> ApiResult<()> {
    if let Some(net) = network.as_ref() {
        return match st.store.get_pool(&net.pool).await {
            Ok(_) => Ok(()),
            Err(tug_store::StoreError::PoolNotFound(_)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!(
                    "{what}: network pool {:?} does not exist; create it with `tug net pool add` or name one from `tug net pool list`",
                    net.pool
                ),
            )),
            Err(e) => Err(e.into()),
        };
    }
    if !may_draw || labels.is_empty() {
        return Ok(());
    }
    let pools: Vec<String> =
        st.store.list_pools().await?.into_iter().filter(|p| p.spec.selects(labels)).map(|p| p.spec.name).collect();
    match pools.as_slice() {
        [] => Ok(()),
        [one] => {
            *network = Some(tug_core::job::NetworkSpec { pool: one.clone() });
            Ok(())
        }
        several => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!(
                "{what}: its labels match the selectors of pools {}; name the one to draw from, e.g. network = {{ pool = {:?} }}",
                several.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", "),
                several[0]
            ),
        )),
    }
}
