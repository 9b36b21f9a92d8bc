//! Routes of `/api/v1`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use pesc_protocol::api::{NewDomain, NewRequest, UploadFile, UploadProcess};
use serde::Deserialize;

use crate::auth::{AppState, AuthState, Caller, authenticate};
use crate::error::ApiFailure;
use crate::service::{LogStream, NodeService};
use pesc_protocol::access::Principal;

type Svc = State<AppState>;
type Who = axum::Extension<Caller>;

/// The whole HTTP surface of a node: the API and the pages.
pub fn router(svc: Arc<dyn NodeService>) -> Router {
    let st = AppState {
        auth: Arc::new(AuthState::new(svc.session_key())),
        svc,
    };
    let api = Router::new()
        .route("/node", get(node_info))
        .route("/nodes", get(nodes))
        .route("/processes", get(list_processes).post(upload_process))
        .route("/files", get(list_files).post(upload_file))
        .route("/files/{name}/fetch", post(fetch_file))
        .route("/domains", get(list_domains).post(create_domain))
        .route("/domains/{name}", get(get_domain))
        .route("/domains/{name}/review", post(review_domain))
        .route("/templates", get(templates))
        .route("/events", get(events))
        .route("/requests", get(list_requests).post(create_request))
        .route("/requests/{id}", get(get_request))
        .route("/requests/{id}/cancel", post(cancel_request))
        .route("/requests/{id}/runs/{rank}/logs", get(logs))
        .route("/requests/{id}/results", get(results))
        .route("/requests/{id}/receipt", get(receipt))
        .route("/sweep", post(sweep_preview))
        .route("/requests/{id}/rerun", post(rerun))
        .merge(crate::accounts::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            authenticate,
        ))
        .route("/login", post(crate::accounts::login))
        .route("/health", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiFailure::not_found("no such API path") });
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            crate::edge::guard,
        ))
        .with_state(st)
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

/// Server-sent events; `since` (or the `Last-Event-ID` a reconnecting
/// browser sends) resumes after that id.
async fn events(
    State(st): Svc,
    axum::Extension(c): Who,
    headers: axum::http::HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiFailure> {
    let Query(q) =
        q.map_err(|e| ApiFailure::bad_request(format!("bad events query ({e}); give ?since=ID")))?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let owner = c.who.request_owner_filter().map(str::to_string);
    let stream = st.svc.events(q.since.or(last).unwrap_or(0), owner).await?;
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiFailure::internal(e.to_string()))
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}

async fn metrics(State(st): Svc) -> Result<impl IntoResponse, ApiFailure> {
    let text = st.svc.metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

async fn node_info(State(st): Svc) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(st.svc.node_info().await?))
}

async fn nodes(State(st): Svc) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(st.svc.nodes().await?))
}

/// The processes `who` may see (the API and the pages).
pub(crate) async fn visible_processes(
    st: &AppState,
    who: &Principal,
) -> Result<Vec<pesc_protocol::model::Process>, ApiFailure> {
    let mut all = st.svc.list_processes().await?;
    let rooms = st.svc.access().await?.rooms;
    all.retain(|p| who.may_list_upload(&p.owner, &p.rooms, &rooms));
    Ok(all)
}

/// The shared files `who` may see (the API and the pages).
pub(crate) async fn visible_files(
    st: &AppState,
    who: &Principal,
) -> Result<Vec<pesc_protocol::api::SharedFileInfo>, ApiFailure> {
    let mut all = st.svc.list_files().await?;
    let rooms = st.svc.access().await?.rooms;
    all.retain(|f| who.may_list_upload(&f.file.owner, &f.file.rooms, &rooms));
    Ok(all)
}

async fn list_processes(
    State(st): Svc,
    axum::Extension(c): Who,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(visible_processes(&st, &c.who).await?))
}

async fn upload_process(
    State(st): Svc,
    axum::Extension(c): Who,
    meta: Result<Query<UploadProcess>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<impl IntoResponse, ApiFailure> {
    let Query(meta) = meta.map_err(|e| {
        ApiFailure::bad_request(format!(
            "bad upload parameters ({e}); give ?file_name=NAME and optionally kind=file|zip, language, entry, command, name, rooms"
        ))
    })?;
    let shared = pesc_protocol::api::room_list(meta.rooms.as_deref());
    pesc_protocol::access::check_share_rooms(&c.who, &shared, &st.svc.access().await?.rooms)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let p = st
        .svc
        .upload_process(meta, Box::pin(stream), &c.who.user)
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list_files(
    State(st): Svc,
    axum::Extension(c): Who,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(visible_files(&st, &c.who).await?))
}

async fn upload_file(
    State(st): Svc,
    axum::Extension(c): Who,
    meta: Result<Query<UploadFile>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<impl IntoResponse, ApiFailure> {
    let Query(meta) = meta.map_err(|e| {
        ApiFailure::bad_request(format!(
            "bad upload parameters ({e}); give ?name=NAME, the name runs see the file under, and optionally rooms=ROOM,…"
        ))
    })?;
    let shared = pesc_protocol::api::room_list(meta.rooms.as_deref());
    pesc_protocol::access::check_share_rooms(&c.who, &shared, &st.svc.access().await?.rooms)?;
    // Replacing a name someone else uploaded is theirs (or an admin's) to do.
    if let Some(old) = st
        .svc
        .list_files()
        .await?
        .into_iter()
        .find(|f| f.file.name == meta.name)
    {
        pesc_protocol::access::check_upload_use(
            &c.who,
            "shared file",
            &meta.name,
            &old.file.owner,
        )?;
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let f = st
        .svc
        .upload_file(meta, Box::pin(stream), &c.who.user)
        .await?;
    Ok((StatusCode::CREATED, Json(f)))
}

async fn fetch_file(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    // Only a file the caller may see (others' look absent).
    if !visible_files(&st, &c.who)
        .await?
        .iter()
        .any(|f| f.file.name == name)
    {
        return Err(ApiFailure::not_found(format!("no shared file '{name}'")));
    }
    Ok(Json(st.svc.fetch_file(&name).await?))
}

/// A page of requests.
#[derive(Deserialize)]
struct PageQuery {
    /// At most this many (all without).
    limit: Option<usize>,
    /// After skipping this many.
    offset: Option<usize>,
}

async fn list_requests(
    State(st): Svc,
    axum::Extension(c): Who,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Query(q) = q.map_err(|e| ApiFailure::bad_request(format!("bad query: {e}")))?;
    let owner = c.who.request_owner_filter().map(str::to_string);
    let page = st
        .svc
        .list_requests(owner, q.offset.unwrap_or(0), q.limit.unwrap_or(usize::MAX))
        .await?;
    Ok(Json(page))
}

/// A request the caller may see (others' look like missing ones).
pub(crate) async fn visible_request(
    st: &AppState,
    who: &Principal,
    id: &str,
    with_runs: bool,
) -> Result<pesc_protocol::api::RequestInfo, ApiFailure> {
    let r = st.svc.get_request(id, with_runs, None, 0).await?;
    only_visible(who, id, r)
}

fn only_visible(
    who: &Principal,
    id: &str,
    r: pesc_protocol::api::RequestInfo,
) -> Result<pesc_protocol::api::RequestInfo, ApiFailure> {
    if !who.may_see_request(&r.owner) {
        return Err(ApiFailure::not_found(format!(
            "request {id} does not exist, or is not yours"
        )));
    }
    Ok(r)
}

async fn list_domains(State(st): Svc) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(st.svc.list_domains().await?))
}

async fn get_domain(
    State(st): Svc,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(st.svc.get_domain(&name).await?))
}

async fn templates(State(st): Svc) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(st.svc.templates().await?))
}

async fn create_domain(
    State(st): Svc,
    axum::Extension(c): Who,
    body: Result<Json<NewDomain>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Json(d) =
        body.map_err(|e| ApiFailure::bad_request(format!("bad domain body: {}", e.body_text())))?;
    Ok((
        StatusCode::CREATED,
        Json(make_domain(&st, &c.who, d).await?),
    ))
}

/// Makes (or replaces) a domain as `who`: anyone from a template, a user's
/// own Dockerfile as a request operators review; only its owner (or an
/// operator) replaces it. The API and the Domains page both come here.
pub(crate) async fn make_domain(
    st: &AppState,
    who: &pesc_protocol::access::Principal,
    d: NewDomain,
) -> Result<pesc_protocol::domain::Domain, ApiFailure> {
    use pesc_protocol::access::{check_replace_domain, new_domain_review};
    if let Ok(existing) = st.svc.get_domain(&d.name).await {
        check_replace_domain(who, &existing)?;
    }
    let review = new_domain_review(who, d.dockerfile.is_some());
    st.svc.create_domain(d, &who.user, review).await
}

async fn review_domain(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(name): Path<String>,
    body: Result<Json<pesc_protocol::api::DomainReview>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Json(r) =
        body.map_err(|e| ApiFailure::bad_request(format!("bad review body: {}", e.body_text())))?;
    Ok(Json(answer_domain(&st, &c.who, &name, r).await?))
}

/// An operator's or admin's answer to a domain request: the API and the
/// Domains page both come here.
pub(crate) async fn answer_domain(
    st: &AppState,
    who: &pesc_protocol::access::Principal,
    name: &str,
    r: pesc_protocol::api::DomainReview,
) -> Result<pesc_protocol::domain::Domain, ApiFailure> {
    use pesc_protocol::domain::Review;
    pesc_protocol::access::check_review_domain(who)?;
    let access = st.svc.access().await?;
    pesc_protocol::access::check_share_rooms(who, &r.rooms, &access.rooms)?;
    let review = if r.approve {
        Review::Approved
    } else {
        let why = r.reason.unwrap_or_default();
        let why = why.trim();
        if why.is_empty() || why.len() > 1_000 {
            return Err(ApiFailure::bad_request(
                "say why it is rejected (reason, at most 1 000 bytes)",
            ));
        }
        Review::Rejected(why.to_string())
    };
    st.svc.review_domain(name, review, r.rooms).await
}

async fn create_request(
    State(st): Svc,
    axum::Extension(c): Who,
    body: Result<Json<NewRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Json(req) =
        body.map_err(|e| ApiFailure::bad_request(format!("bad request body: {}", e.body_text())))?;
    let access = st.svc.access().await?;
    pesc_protocol::access::check_request_rooms(&c.who, &req.rooms, &access.rooms)?;
    // The process and shared files must be the caller's, shared with a
    // room of theirs, or it is an admin's call.
    use pesc_protocol::access::check_shared_use;
    if let Some(p) = st
        .svc
        .list_processes()
        .await?
        .into_iter()
        .find(|p| p.id == req.process)
    {
        check_shared_use(
            &c.who,
            "process",
            &p.name,
            &p.owner,
            &p.rooms,
            &access.rooms,
            &req.rooms,
        )?;
    }
    let files = st.svc.list_files().await?;
    for name in &req.shared_files {
        if let Some(f) = files.iter().find(|f| &f.file.name == name) {
            let f = &f.file;
            check_shared_use(
                &c.who,
                "shared file",
                name,
                &f.owner,
                &f.rooms,
                &access.rooms,
                &req.rooms,
            )?;
        }
    }
    if let Some(name) = &req.domain
        && let Ok(d) = st.svc.get_domain(name).await
    {
        pesc_protocol::access::check_use_domain(&c.who, &d, &access.rooms, &req.rooms)?;
    }
    Ok((
        StatusCode::CREATED,
        Json(st.svc.create_request(req, &c.who.user).await?),
    ))
}

#[derive(Deserialize)]
struct GetQuery {
    #[serde(default = "yes")]
    runs: bool,
    since_version: Option<u64>,
    #[serde(default = "default_wait")]
    timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_wait() -> u64 {
    30_000
}

async fn get_request(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Query(q) = q.map_err(|e| {
        ApiFailure::bad_request(format!(
            "bad query ({e}); give runs=true|false, since_version=N, timeout_ms=N"
        ))
    })?;
    // Asked once; someone else's request is refused after the wait.
    let timeout = q.timeout_ms.min(120_000);
    let r = st
        .svc
        .get_request(&id, q.runs, q.since_version, timeout)
        .await?;
    Ok(Json(only_visible(&c.who, &id, r)?))
}

async fn cancel_request(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let r = visible_request(&st, &c.who, &id, false).await?;
    if !c.who.may_cancel_request(&r.owner) {
        return Err(ApiFailure::forbidden(format!(
            "request {id} is {}'s: only they or an admin may cancel it",
            r.owner
        )));
    }
    Ok(Json(st.svc.cancel_request(&id).await?))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default = "stdout")]
    stream: LogStream,
    #[serde(default)]
    follow: bool,
}

fn stdout() -> LogStream {
    LogStream::Stdout
}

async fn logs(
    State(st): Svc,
    axum::Extension(c): Who,
    Path((id, rank)): Path<(String, String)>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiFailure> {
    let rank: u32 = rank
        .parse()
        .map_err(|_| ApiFailure::bad_request(format!("'{rank}' is not a rank (0, 1, 2, …)")))?;
    let Query(q) = q.map_err(|e| {
        ApiFailure::bad_request(format!(
            "bad query ({e}); give stream=stdout|stderr and follow=true|false"
        ))
    })?;
    visible_request(&st, &c.who, &id, false).await?;
    let s = st.svc.logs(&id, rank, q.stream, q.follow).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(s),
    )
        .into_response())
}

/// What a sweep makes, before it is submitted (the form's count).
async fn sweep_preview(
    body: Result<Json<pesc_protocol::api::SweepAsk>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let Json(ask) =
        body.map_err(|e| ApiFailure::bad_request(format!("bad sweep: {}", e.body_text())))?;
    ask.preview()
        .map(Json)
        .map_err(|e| ApiFailure::bad_request(e.to_string()))
}

async fn receipt(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    visible_request(&st, &c.who, &id, false).await?;
    Ok(Json(st.svc.receipt(&id).await?))
}

/// The same request again from the same blobs: its owner only.
async fn rerun(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    visible_request(&st, &c.who, &id, false).await?;
    let r = st.svc.rerun(&id, &c.who).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn results(
    State(st): Svc,
    axum::Extension(c): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    visible_request(&st, &c.who, &id, false).await?;
    let r = st.svc.results(&id).await?;
    let stream = tokio_util::io::ReaderStream::new(r.file);
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (header::CONTENT_LENGTH, r.len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", r.name),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
