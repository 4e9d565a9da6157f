//! One request to its answer: the route, the body decoded (refusing
//! unknown fields, naming the problem), the daemon's operation, the answer.

use serde::de::DeserializeOwned;
use tandem::api::{ApiError, EventList, VmList};

use crate::daemon::Daemon;
use crate::fleets::Fleets;
use crate::http::{Answer, Request};
use crate::routes::{route, since, Route};

/// Decodes a JSON body.
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// Decodes an optional JSON body (an empty one is `None`).
fn optional_body<T: DeserializeOwned>(req: &Request) -> Result<Option<T>, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    body(req).map(Some)
}

/// Answers `req`.
pub fn answer(d: &Daemon, fleets: &Fleets, req: &Request) -> Answer {
    let r = match route(&req.head.method, &req.head.path) {
        Ok(r) => r,
        Err((e, allow)) => {
            let mut a = Answer::error(&e);
            a.allow = allow;
            return a;
        }
    };
    match serve(d, fleets, req, r) {
        Ok(a) => a,
        Err(e) => {
            if e.status() >= 500 {
                log::error!("{} {}: {e}", req.head.method, req.head.path);
            }
            Answer::error(&e)
        }
    }
}

fn serve(d: &Daemon, fleets: &Fleets, req: &Request, r: Route) -> Result<Answer, ApiError> {
    let q = req.head.query.as_deref();
    Ok(match r {
        Route::Health => Answer::json(200, &d.health()),
        Route::Metrics => Answer::text(
            200,
            d.metrics_page().into_bytes(),
            tandem::metrics::CONTENT_TYPE,
        ),
        Route::ListVms => Answer::json(200, &VmList { vms: d.list() }),
        Route::CreateVm => Answer::json(201, &d.create(body(req)?)?),
        Route::GetVm(n) => Answer::json(200, &d.get(&n)?),
        Route::DeleteVm(n) => Answer::json(200, &d.delete(&n)?),
        Route::Start(n) => Answer::json(200, &d.start(&n)?),
        Route::Stop(n) => {
            let how = optional_body(req)?.unwrap_or_default();
            Answer::json(200, &d.stop(&n, Some(how))?)
        }
        Route::Kill(n) => Answer::json(200, &d.stop(&n, None)?),
        Route::Snapshot(n) => Answer::json(200, &d.snapshot(&n, body(req)?)?),
        Route::Restore(n) => Answer::json(200, &d.restore(&n, body(req)?)?),
        Route::Console(n) => Answer::text(200, d.console(&n)?, "text/plain; charset=utf-8"),
        Route::VmEvents(n) => Answer::json(
            200,
            &EventList {
                events: d.events(Some(&n), since(q)?)?,
            },
        ),
        Route::Events => Answer::json(
            200,
            &EventList {
                events: d.events(None, since(q)?)?,
            },
        ),
        Route::ListFleets => Answer::json(200, &fleets.list()),
        Route::ApplyFleet => Answer::json(201, &fleets.apply(body(req)?)?),
        Route::GetFleet(id) => Answer::json(200, &fleets.get(id)?),
    })
}
