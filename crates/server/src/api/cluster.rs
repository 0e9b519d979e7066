//! `GET /api/v1/cluster`: the server group, its members and its leader, as the leader sees it;
//! a server on its own (SQLite) is a group of one.

use axum::Json;
use axum::extract::State;

use super::{ApiError, ApiResult, AppState};
use crate::cluster::{ClusterStatus, Member, MemberStatus, Role};

pub(super) async fn show(State(state): State<AppState>) -> ApiResult<Json<ClusterStatus>> {
    let now = state.clock.now();
    if let Some(group) = &state.cluster {
        let status = group.status(now).await.map_err(|e| {
            ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("reading the group from etcd: {e}"))
        })?;
        return Ok(Json(status));
    }
    let epoch = state.scheduler.epoch();
    let me = Member { name: "this server".into(), api: String::new(), agent: String::new(), leading_since: None };
    Ok(Json(ClusterStatus {
        this: me.name.clone(),
        role: Role::Single,
        store: "sqlite".into(),
        leader: Some(me.name.clone()),
        term: None,
        epoch,
        leader_for_secs: None,
        lease_ttl_secs: None,
        fenced_writes: 0,
        members: vec![MemberStatus { member: me, leader: true, revision: 0, lease_ttl_left: None }],
    }))
}
