//! `/api/v1/agents`: the agents the scheduler knows, and draining them.

use axum::extract::{Path, State};
use axum::Json;

use super::{ApiError, ApiResult, AppState};
use crate::scheduler::agents::AgentView;

pub(super) async fn list(State(st): State<AppState>) -> ApiResult<Json<Vec<AgentView>>> {
    Ok(Json(st.scheduler.agents().await?))
}

pub(super) async fn show(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<AgentView>> {
    let agents = st.scheduler.agents().await?;
    agents.into_iter().find(|a| a.name == name).map(Json).ok_or_else(|| ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "agent_not_found",
        message: format!("agent {name:?} not found; see GET /api/v1/agents"),
    })
}

pub(super) async fn drain(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<AgentView>> {
    Ok(Json(st.scheduler.drain(&name, true).await?))
}

pub(super) async fn undrain(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<AgentView>> {
    Ok(Json(st.scheduler.drain(&name, false).await?))
}
