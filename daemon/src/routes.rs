//! Which operation a method and path ask for: a pure function, so every
//! 404 and 405 is decided (and tested) in one place.

use tandem::api::{check_name, ApiError, ErrorKind};

/// An operation of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/vms`.
    ListVms,
    /// `POST /v1/vms`.
    CreateVm,
    /// `GET /v1/vms/NAME`.
    GetVm(String),
    /// `DELETE /v1/vms/NAME`.
    DeleteVm(String),
    /// `POST /v1/vms/NAME/start`.
    Start(String),
    /// `POST /v1/vms/NAME/stop`.
    Stop(String),
    /// `POST /v1/vms/NAME/kill`.
    Kill(String),
    /// `POST /v1/vms/NAME/snapshot`.
    Snapshot(String),
    /// `POST /v1/vms/NAME/restore`.
    Restore(String),
    /// `GET /v1/vms/NAME/console`.
    Console(String),
    /// `GET /v1/vms/NAME/events`.
    VmEvents(String),
    /// `GET /v1/events`.
    Events,
    /// `GET /v1/fleets`.
    ListFleets,
    /// `POST /v1/fleets`.
    ApplyFleet,
    /// `GET /v1/fleets/ID`.
    GetFleet(u64),
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no such path: {path}"))
}

/// A 405, with the methods the path does take (for `Allow`).
pub fn method_not_allowed(
    method: &str,
    path: &str,
    allow: &'static str,
) -> (ApiError, &'static str) {
    (
        ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{path} does not take {method} (it takes {allow})"),
        ),
        allow,
    )
}

/// The route of `method` on `path`; an error is the answer (with the
/// `Allow` header's value for a 405).
pub fn route(method: &str, path: &str) -> Result<Route, (ApiError, Option<&'static str>)> {
    let nf = |p| (not_found(p), None);
    let wrong = |allow: &'static str| {
        let (e, a) = method_not_allowed(method, path, allow);
        (e, Some(a))
    };
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let parts: Vec<&str> = trimmed.split('/').skip(1).collect();
    let name = |n: &str| check_name(n).map(|()| n.to_string()).map_err(|e| (e, None));
    match parts.as_slice() {
        ["healthz"] => match method {
            "GET" => Ok(Route::Health),
            _ => Err(wrong("GET")),
        },
        ["metrics"] => match method {
            "GET" => Ok(Route::Metrics),
            _ => Err(wrong("GET")),
        },
        ["v1", "vms"] => match method {
            "GET" => Ok(Route::ListVms),
            "POST" => Ok(Route::CreateVm),
            _ => Err(wrong("GET, POST")),
        },
        ["v1", "vms", n] => match method {
            "GET" => Ok(Route::GetVm(name(n)?)),
            "DELETE" => Ok(Route::DeleteVm(name(n)?)),
            _ => Err(wrong("GET, DELETE")),
        },
        ["v1", "vms", n, op] => {
            let post = |r: fn(String) -> Route| match method {
                "POST" => Ok(r(name(n)?)),
                _ => Err(wrong("POST")),
            };
            let get = |r: fn(String) -> Route| match method {
                "GET" => Ok(r(name(n)?)),
                _ => Err(wrong("GET")),
            };
            match *op {
                "start" => post(Route::Start),
                "stop" => post(Route::Stop),
                "kill" => post(Route::Kill),
                "snapshot" => post(Route::Snapshot),
                "restore" => post(Route::Restore),
                "console" => get(Route::Console),
                "events" => get(Route::VmEvents),
                _ => Err(nf(path)),
            }
        }
        ["v1", "events"] => match method {
            "GET" => Ok(Route::Events),
            _ => Err(wrong("GET")),
        },
        ["v1", "fleets"] => match method {
            "GET" => Ok(Route::ListFleets),
            "POST" => Ok(Route::ApplyFleet),
            _ => Err(wrong("GET, POST")),
        },
        ["v1", "fleets", id] => match method {
            "GET" => id.parse().map(Route::GetFleet).map_err(|_| {
                (
                    ApiError::bad_request(format!("fleet id '{id}' is not a number")),
                    None,
                )
            }),
            _ => Err(wrong("GET")),
        },
        _ => Err(nf(path)),
    }
}

/// `since=N` from a query (0 when absent).
pub fn since(query: Option<&str>) -> Result<u64, ApiError> {
    let Some(q) = query else { return Ok(0) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("since=") {
            return v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("since '{v}' is not a number")));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: &str, path: &str) -> u16 {
        match route(method, path) {
            Ok(_) => 200,
            Err((e, _)) => e.status(),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/v1/vms"), Ok(Route::ListVms));
        assert_eq!(route("GET", "/v1/vms/"), Ok(Route::ListVms));
        assert_eq!(
            route("POST", "/v1/vms/web/start"),
            Ok(Route::Start("web".into()))
        );
        assert_eq!(
            route("DELETE", "/v1/vms/web"),
            Ok(Route::DeleteVm("web".into()))
        );
        assert_eq!(route("GET", "/v1/fleets/3"), Ok(Route::GetFleet(3)));
        assert_eq!(status("GET", "/v1/vms/web/start"), 405);
        assert_eq!(status("PUT", "/v1/vms"), 405);
        assert_eq!(status("GET", "/v2/vms"), 404);
        assert_eq!(status("POST", "/v1/vms/web/explode"), 404);
        assert_eq!(status("GET", "/v1/vms/Web"), 400);
        assert_eq!(status("GET", "/v1/vms/.."), 400);
        assert_eq!(status("GET", "/v1/fleets/x"), 400);
        assert_eq!(status("GET", ""), 404);
        assert!(matches!(route("PATCH", "/healthz"), Err((_, Some("GET")))));
    }

    #[test]
    fn since_is_read() {
        assert_eq!(since(None), Ok(0));
        assert_eq!(since(Some("a=1&since=7")), Ok(7));
        assert!(since(Some("since=x")).is_err());
    }
}
