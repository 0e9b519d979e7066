//! `/api/v1/schedule/preview`: the next fires of an expression, to check one before using it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::schedule::{Schedule, ScheduleError};

use super::{query_error, ApiError, ApiResult, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewParams {
    expr: String,
    tz: Option<String>,
    count: Option<usize>,
    after: Option<String>,
}

/// One previewed fire.
#[derive(Debug, Serialize)]
pub struct PreviewFire {
    /// RFC 3339 with the zone's offset.
    pub(crate) at: String,
    /// Moved by a DST transition.
    pub(crate) dst_adjusted: bool,
}

/// The preview.
#[derive(Debug, Serialize)]
pub struct Preview {
    expr: String,
    tz: String,
    /// The fires as RFC 3339 strings.
    fires: Vec<String>,
    /// The fires with details.
    details: Vec<PreviewFire>,
}

/// Most fires a preview lists.
pub const MAX_PREVIEW: usize = 1000;

pub(super) async fn preview(
    State(st): State<AppState>,
    params: Result<Query<PreviewParams>, QueryRejection>,
) -> ApiResult<Json<Preview>> {
    let Query(p) = params.map_err(query_error)?;
    let tz = p.tz.unwrap_or_else(|| "UTC".into());
    let after = match p.after {
        Some(a) => a.parse::<Timestamp>().map_err(|e| {
            ApiError::bad_request("invalid_after", format!("after={a:?} is not an RFC 3339 instant: {e}"))
        })?,
        None => st.clock.now(),
    };
    let count = p.count.unwrap_or(5);
    if count == 0 || count > MAX_PREVIEW {
        return Err(ApiError::bad_request("invalid_count", format!("count must be 1-{MAX_PREVIEW}, got {count}")));
    }
    let details = preview_fires(&p.expr, &tz, after, count).map_err(|e| {
        let code = if matches!(e, ScheduleError::Zone { .. }) { "invalid_tz" } else { "invalid_schedule" };
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, code, message: e.to_string() }
    })?;
    Ok(Json(Preview { fires: details.iter().map(|f| f.at.clone()).collect(), details, expr: p.expr, tz }))
}

pub(crate) fn preview_fires(expr: &str, tz: &str, after: Timestamp, count: usize) -> Result<Vec<PreviewFire>, ScheduleError> {
    let sched = Schedule::parse(expr, tz)?;
    let zone = jiff::tz::TimeZone::get(tz.trim()).map_err(|_| ScheduleError::Zone { tz: tz.to_string() })?;
    let mut out = Vec::new();
    let mut t = after;
    while out.len() < count {
        let Some(f) = sched.next_after(t) else { break };
        out.push(PreviewFire { at: tug_core::timefmt::rfc3339_in(f.at, &zone), dst_adjusted: f.dst_adjusted });
        t = f.at;
    }
    Ok(out)
}
