//! The OpenAPI document of `/api/v1`, served at `/api/v1/openapi.json`.
//!
//! Each route of [`crate::routes::router`] is described here by a function
//! carrying its `#[utoipa::path]`; the bodies are the protocol crate's own
//! types (their schemas are derived from the code). A test checks that every
//! route the router serves is in the document.

// The functions below exist only to carry their `#[utoipa::path]`.
#![allow(dead_code)]

use pesc_protocol::access::ApiToken;
use pesc_protocol::api::{
    ApiError, CreatedToken, GridNode, GridSettings, JoinInfo, Login, Me, NewDomain, NewRequest,
    NewRoom, NewToken, NewUser, NodeInfo, NodeSetting, NodeSettingValue, RequestInfo, RoomInfo,
    SharedFileInfo, TemplateInfo, UserChange, UserInfo,
};
use pesc_protocol::domain::Domain;
use pesc_protocol::model::Process;
use pesc_protocol::model::Room;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PESC node API",
        description = "Every node of a PESC grid serves this API. Every call but `/health`, \
            `POST /login` and this document needs a session (the `pesc_session` cookie from \
            `POST /login`; calls that change something then also need the `X-CSRF-Token` header) \
            or `Authorization: Bearer TOKEN` (a user's API token, or the node's own, file \
            `api-token` in its data dir); without either the answer is 401. Errors are JSON: \
            `{\"error\": \"…\"}`."
    ),
    paths(
        node, nodes, list_processes, upload_process, list_files, upload_file, fetch_file,
        list_domains, create_domain, get_domain, review_domain, templates, events, list_requests,
        create_request, get_request, cancel_request, logs, results, receipt, rerun, sweep_preview,
        health, login, logout, me,
        list_users, create_user, change_user, delete_user, list_tokens, create_token, delete_token,
        list_rooms, create_room, get_room, add_room_admin, remove_room_admin, add_room_user,
        remove_room_user, place_node, unplace_node, node_settings, set_node_setting,
        clear_node_setting, join_token, grid_settings, set_grid_settings
    ),
    components(schemas(ApiError)),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        api.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "token",
            Vec::<String>::new(),
        )]);
    }
}

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[utoipa::path(get, path = "/api/v1/node", responses(
    (status = 200, description = "This node", body = NodeInfo),
    (status = 401, description = "No or wrong token", body = ApiError)))]
fn node() {}

#[utoipa::path(get, path = "/api/v1/nodes", responses(
    (status = 200, description = "The grid's nodes with their live state", body = Vec<GridNode>),
    (status = 401, body = ApiError)))]
fn nodes() {}

#[utoipa::path(get, path = "/api/v1/processes", responses(
    (status = 200, description = "Uploaded processes", body = Vec<Process>),
    (status = 401, body = ApiError)))]
fn list_processes() {}

#[utoipa::path(post, path = "/api/v1/processes",
    params(
        ("file_name" = String, Query, description = "The uploaded file's name, e.g. main.py or project.zip"),
        ("kind" = Option<String>, Query, description = "file or zip"),
        ("language" = Option<String>, Query, description = "python, r, java, c or shell"),
        ("entry" = Option<String>, Query, description = "The entry file inside a zip"),
        ("command" = Option<String>, Query, description = "A whole command line instead of an entry"),
        ("name" = Option<String>, Query, description = "Display name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file or zip itself"),
    responses(
        (status = 201, description = "The stored process", body = Process),
        (status = 400, description = "Bad upload (broken zip, unsafe path, too large…)", body = ApiError),
        (status = 401, body = ApiError)))]
fn upload_process() {}

#[utoipa::path(get, path = "/api/v1/files", responses(
    (status = 200, description = "Shared files", body = Vec<SharedFileInfo>),
    (status = 401, body = ApiError)))]
fn list_files() {}

#[utoipa::path(post, path = "/api/v1/files",
    params(("name" = String, Query, description = "The name runs see the file under")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "The shared file", body = SharedFileInfo),
        (status = 400, body = ApiError),
        (status = 403, description = "The name belongs to another user's file", body = ApiError),
        (status = 401, body = ApiError)))]
fn upload_file() {}

#[utoipa::path(post, path = "/api/v1/files/{name}/fetch",
    params(("name" = String, Path, description = "A shared file's name")),
    responses(
        (status = 200, description = "This node now keeps a copy", body = SharedFileInfo),
        (status = 404, body = ApiError),
        (status = 503, description = "No node can give it", body = ApiError),
        (status = 401, body = ApiError)))]
fn fetch_file() {}

#[utoipa::path(get, path = "/api/v1/domains", responses(
    (status = 200, description = "Domains", body = Vec<Domain>),
    (status = 401, body = ApiError)))]
fn list_domains() {}

#[utoipa::path(post, path = "/api/v1/domains", request_body = NewDomain, responses(
    (status = 201, description = "The domain, checked", body = Domain),
    (status = 400, description = "A Dockerfile that cannot work, an unknown template…", body = ApiError),
    (status = 401, body = ApiError)))]
fn create_domain() {}

#[utoipa::path(get, path = "/api/v1/domains/{name}",
    params(("name" = String, Path)),
    responses(
        (status = 200, body = Domain),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn get_domain() {}

#[utoipa::path(post, path = "/api/v1/domains/{name}/review",
    params(("name" = String, Path)),
    request_body = pesc_protocol::api::DomainReview,
    responses(
        (status = 200, body = Domain, description = "Approved (usable by its owner and the rooms named) or rejected with the reason"),
        (status = 400, description = "A rejection without a reason", body = ApiError),
        (status = 403, description = "Only operators and admins review domains", body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn review_domain() {}

#[utoipa::path(get, path = "/api/v1/templates", responses(
    (status = 200, description = "Templates, with this node's base images", body = Vec<TemplateInfo>),
    (status = 401, body = ApiError)))]
fn templates() {}

#[utoipa::path(get, path = "/api/v1/events",
    params(("since" = Option<u64>, Query, description = "Resume after this event id")),
    responses(
        (status = 200, description = "Server-sent events: hello, request, reset",
            content_type = "text/event-stream", body = String),
        (status = 401, body = ApiError)))]
fn events() {}

#[utoipa::path(get, path = "/api/v1/requests",
    params(
        ("limit" = Option<usize>, Query, description = "At most this many (all without)"),
        ("offset" = Option<usize>, Query, description = "After skipping this many")),
    responses(
    (status = 200, description = "The requests the caller may see, newest first, without runs (finished requests archived long ago too)", body = Vec<RequestInfo>),
    (status = 400, description = "A limit or offset that is not a number", body = ApiError),
    (status = 401, body = ApiError)))]
fn list_requests() {}

#[utoipa::path(post, path = "/api/v1/requests", request_body = NewRequest, responses(
    (status = 201, description = "The request", body = RequestInfo),
    (status = 400, description = "Nonsense parameters", body = ApiError),
    (status = 403, description = "A room not open to the caller, or another user's process or shared file", body = ApiError),
    (status = 404, description = "Unknown process, shared file or domain", body = ApiError),
    (status = 401, body = ApiError)))]
fn create_request() {}

#[utoipa::path(get, path = "/api/v1/requests/{id}",
    params(
        ("id" = String, Path, description = "A request id or a unique prefix"),
        ("runs" = Option<bool>, Query, description = "Include the runs (default true)"),
        ("since_version" = Option<u64>, Query, description = "Long poll: wait for a newer version"),
        ("timeout_ms" = Option<u64>, Query, description = "Longest wait of the long poll")),
    responses(
        (status = 200, body = RequestInfo),
        (status = 400, description = "Not a request id (16 hex digits, or a prefix)", body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn get_request() {}

#[utoipa::path(post, path = "/api/v1/requests/{id}/cancel",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The cancelled request", body = RequestInfo),
        (status = 400, description = "Not a request id (16 hex digits, or a prefix)", body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn cancel_request() {}

#[utoipa::path(get, path = "/api/v1/requests/{id}/runs/{rank}/logs",
    params(
        ("id" = String, Path),
        ("rank" = u32, Path),
        ("stream" = Option<String>, Query, description = "stdout (default) or stderr"),
        ("follow" = Option<bool>, Query, description = "Stay open until the run ends")),
    responses(
        (status = 200, description = "The log", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn logs() {}

#[utoipa::path(get, path = "/api/v1/requests/{id}/results",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The results zip", content_type = "application/zip", body = Vec<u8>),
        (status = 409, description = "The request still runs", body = ApiError),
        (status = 400, description = "Not a request id (16 hex digits, or a prefix)", body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn results() {}

#[utoipa::path(get, path = "/api/v1/requests/{id}/receipt",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "What the finished request ran, exactly: code, domain, shared files, parameters, sweep, seeds, and per rank node, attempt, exit code, output hash", body = Object),
        (status = 409, description = "The request still runs", body = ApiError),
        (status = 400, description = "Not a request id (16 hex digits, or a prefix)", body = ApiError),
        (status = 403, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn receipt() {}

#[utoipa::path(post, path = "/api/v1/sweep", request_body = pesc_protocol::api::SweepAsk,
    responses(
        (status = 200, description = "The parameters, combinations and runs the sweep makes", body = pesc_protocol::api::SweepPreview),
        (status = 400, description = "A line that is not NAME=V1,V2 or NAME=FROM..TO:STEP", body = ApiError),
        (status = 401, body = ApiError)))]
fn sweep_preview() {}

#[utoipa::path(post, path = "/api/v1/requests/{id}/rerun",
    params(("id" = String, Path)),
    responses(
        (status = 201, description = "The same request again (same blobs, parameters, sweep and seeds), its owner's", body = RequestInfo),
        (status = 400, description = "Not a request id (16 hex digits, or a prefix)", body = ApiError),
        (status = 403, description = "Not the request's owner", body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn rerun() {}

#[utoipa::path(get, path = "/api/v1/health", security(()), responses(
    (status = 200, description = "The node answers", content_type = "text/plain", body = String)))]
fn health() {}

#[utoipa::path(post, path = "/api/v1/login", security(()), request_body = Login, responses(
    (status = 200, description = "Logged in: the `pesc_session` cookie is set", body = Me),
    (status = 400, body = ApiError),
    (status = 401, description = "Wrong user name or password", body = ApiError),
    (status = 429, description = "Too many failed logins for this name lately", body = ApiError)))]
fn login() {}

#[utoipa::path(post, path = "/api/v1/logout", responses(
    (status = 204, description = "The session cookie is cleared"),
    (status = 401, body = ApiError)))]
fn logout() {}

#[utoipa::path(get, path = "/api/v1/me", responses(
    (status = 200, description = "Who calls (with the CSRF token of a session)", body = Me),
    (status = 401, body = ApiError)))]
fn me() {}

#[utoipa::path(get, path = "/api/v1/users", responses(
    (status = 200, description = "Every account (admins only)", body = Vec<UserInfo>),
    (status = 403, body = ApiError),
    (status = 401, body = ApiError)))]
fn list_users() {}

#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser, responses(
    (status = 201, description = "Account made (admins only)", body = UserInfo),
    (status = 400, body = ApiError),
    (status = 403, body = ApiError),
    (status = 409, description = "The name is taken", body = ApiError),
    (status = 401, body = ApiError)))]
fn create_user() {}

#[utoipa::path(patch, path = "/api/v1/users/{name}", params(("name" = String, Path)),
    request_body = UserChange, responses(
    (status = 200, description = "Changed (admins: anyone; users: their own password)", body = UserInfo),
    (status = 400, body = ApiError),
    (status = 403, body = ApiError),
    (status = 404, body = ApiError),
    (status = 409, description = "It would leave the grid without an admin", body = ApiError),
    (status = 401, body = ApiError)))]
fn change_user() {}

#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path)), responses(
    (status = 204, description = "Deleted, with its tokens (admins only)"),
    (status = 403, body = ApiError),
    (status = 404, body = ApiError),
    (status = 409, description = "It would leave the grid without an admin", body = ApiError),
    (status = 401, body = ApiError)))]
fn delete_user() {}

#[utoipa::path(get, path = "/api/v1/tokens",
    params(("all" = Option<bool>, Query, description = "Admins: every user's tokens")),
    responses(
    (status = 200, description = "The caller's API tokens (hashes only)", body = Vec<ApiToken>),
    (status = 400, body = ApiError),
    (status = 403, description = "`all` without being an admin", body = ApiError),
    (status = 401, body = ApiError)))]
fn list_tokens() {}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken, responses(
    (status = 201, description = "A new token, shown once", body = CreatedToken),
    (status = 400, body = ApiError),
    (status = 401, body = ApiError)))]
fn create_token() {}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)), responses(
    (status = 204, description = "Revoked"),
    (status = 404, body = ApiError),
    (status = 401, body = ApiError)))]
fn delete_token() {}

#[utoipa::path(get, path = "/api/v1/rooms", responses(
    (status = 200, description = "The rooms open to the caller, with their nodes", body = Vec<RoomInfo>),
    (status = 401, body = ApiError)))]
fn list_rooms() {}

#[utoipa::path(post, path = "/api/v1/rooms", request_body = NewRoom, responses(
    (status = 201, description = "Room made (admins only)", body = Room),
    (status = 400, body = ApiError),
    (status = 403, body = ApiError),
    (status = 409, body = ApiError),
    (status = 401, body = ApiError)))]
fn create_room() {}

#[utoipa::path(get, path = "/api/v1/rooms/{name}", params(("name" = String, Path)), responses(
    (status = 200, body = RoomInfo),
    (status = 404, description = "No such room open to the caller", body = ApiError),
    (status = 401, body = ApiError)))]
fn get_room() {}

macro_rules! member_path {
    ($f:ident, $m:ident, $path:literal, $what:literal) => {
        #[utoipa::path($m, path = $path,
                                    params(("name" = String, Path), ("user" = String, Path)),
                                    responses(
                                        (status = 200, description = $what, body = Room),
                                        (status = 400, body = ApiError),
                                        (status = 403, body = ApiError),
                                        (status = 404, body = ApiError),
                                        (status = 401, body = ApiError)))]
        fn $f() {}
    };
}
member_path!(
    add_room_admin,
    put,
    "/api/v1/rooms/{name}/admins/{user}",
    "Made room admin (admins only)"
);
member_path!(
    remove_room_admin,
    delete,
    "/api/v1/rooms/{name}/admins/{user}",
    "No longer room admin (admins only)"
);
member_path!(
    add_room_user,
    put,
    "/api/v1/rooms/{name}/users/{user}",
    "May use the room (room admins)"
);
member_path!(
    remove_room_user,
    delete,
    "/api/v1/rooms/{name}/users/{user}",
    "May no longer use the room (room admins)"
);

#[utoipa::path(put, path = "/api/v1/rooms/{name}/nodes/{node}",
    params(("name" = String, Path), ("node" = String, Path, description = "Node id or name"),
        ("general" = Option<bool>, Query, description = "The node also stays in General (default: it runs only this room's requests)")),
    responses(
        (status = 400, description = "general is neither true nor false", body = ApiError),
        (status = 204, description = "The node is in the room (moving it from another room needs admin of both)"),
        (status = 403, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn place_node() {}

#[utoipa::path(delete, path = "/api/v1/rooms/{name}/nodes/{node}",
    params(("name" = String, Path), ("node" = String, Path, description = "Node id or name")),
    responses(
        (status = 204, description = "The node left the room"),
        (status = 403, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn unplace_node() {}

#[utoipa::path(get, path = "/api/v1/nodes/{node}/settings",
    params(("node" = String, Path, description = "Node id or name")),
    responses(
        (status = 200, description = "Every setting an admin may give the node, with its value if one was set", body = [NodeSetting]),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn node_settings() {}

#[utoipa::path(put, path = "/api/v1/nodes/{node}/settings/{key}", request_body = NodeSettingValue,
    params(("node" = String, Path, description = "Node id or name"), ("key" = String, Path)),
    responses(
        (status = 200, description = "Set (admins only); the node applies it without a restart", body = [NodeSetting]),
        (status = 400, body = ApiError),
        (status = 403, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn set_node_setting() {}

#[utoipa::path(delete, path = "/api/v1/nodes/{node}/settings/{key}",
    params(("node" = String, Path, description = "Node id or name"), ("key" = String, Path)),
    responses(
        (status = 200, description = "Cleared (admins only): the node's node.toml decides again", body = [NodeSetting]),
        (status = 400, body = ApiError),
        (status = 403, body = ApiError),
        (status = 404, body = ApiError),
        (status = 401, body = ApiError)))]
fn clear_node_setting() {}

#[utoipa::path(get, path = "/api/v1/grid/join-token", responses(
    (status = 200, description = "What adds a desktop to this grid (admins only)", body = JoinInfo),
    (status = 403, body = ApiError),
    (status = 401, body = ApiError)))]
fn join_token() {}

#[utoipa::path(get, path = "/api/v1/grid/settings", responses(
    (status = 200, description = "Grid-wide settings", body = GridSettings),
    (status = 401, body = ApiError)))]
fn grid_settings() {}

#[utoipa::path(put, path = "/api/v1/grid/settings", request_body = GridSettings, responses(
    (status = 200, description = "The settings now (admins only)", body = GridSettings),
    (status = 400, body = ApiError),
    (status = 403, body = ApiError),
    (status = 401, body = ApiError)))]
fn set_grid_settings() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let routes = [include_str!("routes.rs"), include_str!("accounts.rs")].concat();
        let mut n = 0;
        for chunk in routes.split(".route(").skip(1) {
            let Some(rest) = chunk.trim_start().strip_prefix('"') else {
                continue;
            };
            let path = rest.split('"').next().unwrap();
            if path == "/metrics" {
                continue;
            }
            let full = format!("/api/v1{path}");
            if full == "/api/v1/openapi.json" {
                continue;
            }
            assert!(
                paths.contains_key(&full),
                "{full} is not in the OpenAPI document"
            );
            n += 1;
        }
        assert!(n >= 25, "only {n} routes found");
        // Schemas come from the code.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for s in [
            "RequestInfo",
            "RunInfo",
            "NewRequest",
            "Domain",
            "GridNode",
            "Gpu",
        ] {
            assert!(schemas.contains_key(s), "no schema {s}");
        }
    }
}
