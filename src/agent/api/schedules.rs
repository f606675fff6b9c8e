//! EventBridge Scheduler's API on the same endpoint, so that boto3's `scheduler` client works
//! unmodified: CreateSchedule, GetSchedule, UpdateSchedule, DeleteSchedule (`/schedules/{Name}`)
//! and ListSchedules (`/schedules`), in the `default` group. Its errors are Scheduler's
//! (`ValidationException`, `ResourceNotFoundException`, `ConflictException`).

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{self, query_param, HttpResponse};
use super::error::ApiError;
use super::{members, Req};
use crate::agent::store::schedules::Schedule;
use crate::agent::triggers::schedule::{schedule_arn, ScheduleInput};
use crate::agent::Agent;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Input {
    action_after_completion: Option<String>,
    client_token: Option<String>,
    description: Option<String>,
    end_date: Option<f64>,
    flexible_time_window: Option<Value>,
    group_name: Option<String>,
    schedule_expression: Option<String>,
    schedule_expression_timezone: Option<String>,
    start_date: Option<f64>,
    state: Option<String>,
    target: Option<Value>,
}

/// Scheduler's wording for a refused request.
fn validation(e: ApiError) -> ApiError {
    ApiError::validation(e.message)
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn input(req: Req<'_>, operation: &str) -> Result<ScheduleInput, ApiError> {
    members::check(&req.body, members::SCHEDULE, operation).map_err(validation)?;
    let i: Input = body::shape(req.body).map_err(validation)?;
    let to_ms = |d: Option<f64>| d.filter(|d| d.is_finite() && *d >= 0.0).map(|d| (d * 1000.0) as u64);
    Ok(ScheduleInput {
        name: req.params[0].clone(),
        group: i.group_name,
        expression: i.schedule_expression.ok_or_else(|| ApiError::validation("ScheduleExpression is required."))?,
        timezone: i.schedule_expression_timezone,
        target: i.target.ok_or_else(|| ApiError::validation("Target is required."))?,
        flexible: i.flexible_time_window.ok_or_else(|| ApiError::validation("FlexibleTimeWindow is required."))?,
        state: i.state,
        start_ms: to_ms(i.start_date),
        end_ms: to_ms(i.end_date),
        description: i.description,
        after_completion: i.action_after_completion,
        client_token: i.client_token,
    })
}

/// A schedule as GetSchedule shows it.
fn shape(s: &Schedule) -> Value {
    let mut out = json!({
        "Arn": schedule_arn(&s.name),
        "Name": s.name,
        "GroupName": s.group,
        "ScheduleExpression": s.expression,
        "State": s.state,
        "Target": s.target,
        "FlexibleTimeWindow": s.flexible,
        "CreationDate": secs(s.created_ms),
        "LastModificationDate": secs(s.modified_ms),
        "ActionAfterCompletion": s.after_completion,
    });
    if let Some(tz) = &s.timezone {
        out["ScheduleExpressionTimezone"] = json!(tz);
    }
    if let Some(ms) = s.start_ms {
        out["StartDate"] = json!(secs(ms));
    }
    if let Some(ms) = s.end_ms {
        out["EndDate"] = json!(secs(ms));
    }
    if !s.description.is_empty() {
        out["Description"] = json!(s.description);
    }
    out
}

/// CreateSchedule.
pub async fn create(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let s = agent.scheduler.create(input(req, "CreateSchedule")?).await?;
    Ok(body::json(StatusCode::OK, &json!({ "ScheduleArn": schedule_arn(&s.name) })))
}

/// UpdateSchedule.
pub async fn update(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let s = agent.scheduler.update(input(req, "UpdateSchedule")?).await?;
    Ok(body::json(StatusCode::OK, &json!({ "ScheduleArn": schedule_arn(&s.name) })))
}

/// GetSchedule.
pub fn get(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let s = agent.scheduler.get(&req.params[0], query_param(req.query, "groupName").as_deref())?;
    Ok(body::json(StatusCode::OK, &shape(&s)))
}

/// DeleteSchedule.
pub async fn delete(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    agent.scheduler.delete(&req.params[0], query_param(req.query, "groupName").as_deref()).await?;
    Ok(body::json(StatusCode::OK, &json!({})))
}

/// ListSchedules.
pub fn list(agent: &Arc<Agent>, req: Req<'_>) -> Result<HttpResponse, ApiError> {
    let max = match query_param(req.query, "MaxResults") {
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|m| (1..=100).contains(m))
            .ok_or_else(|| ApiError::validation(format!("MaxResults {m}: 1 to 100")))?,
        None => 100,
    };
    let page = agent.scheduler.list(
        query_param(req.query, "ScheduleGroup").as_deref(),
        query_param(req.query, "NamePrefix").as_deref(),
        query_param(req.query, "State").as_deref(),
        query_param(req.query, "NextToken").as_deref(),
        max,
    )?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|s| {
            json!({
                "Arn": schedule_arn(&s.name), "Name": s.name, "GroupName": s.group, "State": s.state,
                "CreationDate": secs(s.created_ms), "LastModificationDate": secs(s.modified_ms),
                "Target": { "Arn": s.target["Arn"] },
            })
        })
        .collect();
    let mut out = json!({ "Schedules": items });
    if let Some(token) = page.next_marker {
        out["NextToken"] = json!(token);
    }
    Ok(body::json(StatusCode::OK, &out))
}
