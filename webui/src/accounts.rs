//! `/api/v1` for accounts, API tokens, rooms and the join token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Extension, Json, Router};
use pesc_protocol::NodeId;
use pesc_protocol::access::{
    AccessChange, AccessState, ApiToken, Principal, Role, User, check_name, check_password,
};
use pesc_protocol::api::{
    CreatedToken, GridSettings, JoinInfo, Login, Me, NewRoom, NewToken, NewUser, NodeSetting,
    NodeSettingValue, RoomInfo, UserChange, UserInfo,
};
use pesc_protocol::model::{GENERAL_ROOM, Room};

use crate::auth::{
    AppState, Caller, SESSION_SECS, hash_password, new_token, session_cookie, token_id, unix_now,
    verify_password,
};
use crate::error::ApiFailure;

type St = State<AppState>;
type Who = Extension<Caller>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}", patch(change_user).delete(delete_user))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(delete_token))
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{name}", get(get_room))
        .route(
            "/rooms/{name}/admins/{user}",
            put(add_room_admin).delete(remove_room_admin),
        )
        .route(
            "/rooms/{name}/users/{user}",
            put(add_room_user).delete(remove_room_user),
        )
        .route(
            "/rooms/{name}/nodes/{node}",
            put(place_node).delete(unplace_node),
        )
        .route("/nodes/{node}/settings", get(node_settings))
        .route(
            "/nodes/{node}/settings/{key}",
            put(set_node_setting).delete(clear_node_setting),
        )
        .route("/grid/join-token", get(join_token))
        .route("/grid/settings", get(grid_settings).put(set_grid_settings))
}

fn body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    what: &str,
) -> Result<T, ApiFailure> {
    b.map(|Json(x)| x)
        .map_err(|e| ApiFailure::bad_request(format!("bad {what}: {}", e.body_text())))
}

fn need_admin(c: &Caller, what: &str) -> Result<(), ApiFailure> {
    need_admin_principal(&c.who, what)
}

fn need_admin_principal(who: &Principal, what: &str) -> Result<(), ApiFailure> {
    Ok(pesc_protocol::access::check_admin(who, what)?)
}

/// Checks a user and password; starts a session.
pub(crate) async fn login(
    State(st): St,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    b: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let l = body(b, "login body")?;
    let client = client.map(|Extension(ConnectInfo(a))| a.ip());
    let (value, user) = start_session(&st, &l.user, &l.password, client).await?;
    let me = Me {
        user: user.name,
        role: user.role,
        csrf: Some(st.auth.csrf_for(&value)),
    };
    Ok(([(header::SET_COOKIE, session_cookie(&value))], Json(me)).into_response())
}

/// The signed session value for a user whose password is right.
pub(crate) async fn start_session(
    st: &AppState,
    name: &str,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<(String, User), ApiFailure> {
    if name.chars().count() > crate::auth::MAX_USER_NAME || password.len() > 4096 {
        return Err(ApiFailure::bad_request(format!(
            "user names have at most {} characters and passwords at most 4096 bytes",
            crate::auth::MAX_USER_NAME
        )));
    }
    st.auth.check_login_rate(name, client)?;
    let user = st.svc.user(name).await?;
    // Unknown users cost a hash too, so timing does not tell who exists.
    let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| {
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Wm3KDuRyB4S8dT0aEUpDmnQ7N30pbGgJV6U3mHZ20Hk".into()
    });
    let ok = verify_password(password.to_string(), hash).await;
    match user {
        Some(u) if ok && u.disabled => Err(ApiFailure::forbidden(
            "this account is disabled: ask an admin to enable it",
        )),
        Some(u) if ok => {
            st.auth.login_succeeded(name);
            let value = st.auth.session_value(&u, unix_now() + SESSION_SECS);
            Ok((value, u))
        }
        _ => {
            st.auth.login_failed(name, client);
            Err(ApiFailure::unauthorized("wrong user name or password"))
        }
    }
}

async fn logout() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session_cookie(""))],
    )
        .into_response()
}

async fn me(Extension(c): Who) -> Json<Me> {
    Json(Me {
        user: c.who.user,
        role: c.who.role,
        csrf: c.csrf,
    })
}

fn info(u: &User) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        role: u.role,
        created_ms: u.created_ms,
        disabled: u.disabled,
    }
}

async fn list_users(State(st): St, Extension(c): Who) -> Result<Json<Vec<UserInfo>>, ApiFailure> {
    need_admin(&c, "list users")?;
    let a = st.svc.access().await?;
    Ok(Json(a.users.iter().map(info).collect()))
}

/// Makes an account (checks the name and password, refuses a taken name).
pub(crate) async fn add_user(st: &AppState, n: NewUser) -> Result<User, ApiFailure> {
    check_name("user", &n.name)?;
    check_password(&n.password)?;
    if st.svc.user(&n.name).await?.is_some() {
        return Err(ApiFailure::conflict(format!(
            "user '{}' exists already",
            n.name
        )));
    }
    let u = User {
        disabled: false,
        tokens_after_ms: 0,
        name: n.name,
        role: n.role,
        password_hash: hash_password(n.password).await?,
        created_ms: unix_now() * 1000,
    };
    st.svc
        .change_access(AccessChange::PutUser(u.clone()))
        .await?;
    Ok(u)
}

async fn create_user(
    State(st): St,
    Extension(c): Who,
    b: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    need_admin(&c, "add users")?;
    let u = add_user(&st, body(b, "user body")?).await?;
    Ok((StatusCode::CREATED, Json(info(&u))))
}

/// Admins change anyone's role or password; a user changes their own password.
pub(crate) async fn apply_user_change(
    st: &AppState,
    who: &Principal,
    name: &str,
    ch: UserChange,
) -> Result<User, ApiFailure> {
    let mut u = st
        .svc
        .user(name)
        .await?
        .ok_or_else(|| ApiFailure::not_found(format!("no user '{name}'")))?;
    pesc_protocol::access::check_user_change(
        who,
        name,
        ch.role.is_some() || ch.disabled.is_some(),
    )?;
    let stays_admin =
        ch.role.unwrap_or(u.role) == Role::Admin && !ch.disabled.unwrap_or(u.disabled);
    if u.role == Role::Admin && !u.disabled && !stays_admin {
        need_another_admin(st, name).await?;
    }
    if let Some(role) = ch.role {
        u.role = role;
    }
    if let Some(d) = ch.disabled {
        u.disabled = d;
    }
    let new_password = ch.password.is_some();
    if let Some(p) = ch.password {
        check_password(&p)?;
        u.password_hash = hash_password(p).await?;
        u.tokens_after_ms = unix_now() * 1000;
    }
    st.svc
        .change_access(AccessChange::PutUser(u.clone()))
        .await?;
    // A new password ends every session (they carry the old password's
    // fingerprint) and every token of the account.
    if new_password {
        remove_tokens_of(st, name).await?;
    }
    Ok(u)
}

/// Refuses to take away the last enabled admin (then nobody could manage
/// the grid).
async fn need_another_admin(st: &AppState, name: &str) -> Result<(), ApiFailure> {
    let a = st.svc.access().await?;
    let others = a
        .users
        .iter()
        .filter(|x| x.role == Role::Admin && !x.disabled && x.name != name)
        .count();
    if others == 0 {
        return Err(ApiFailure::conflict(
            "this is the last admin: make another admin first",
        ));
    }
    Ok(())
}

/// Removes every API token of `name`.
async fn remove_tokens_of(st: &AppState, name: &str) -> Result<(), ApiFailure> {
    let a = st.svc.access().await?;
    for t in a.tokens.into_iter().filter(|t| t.user == name) {
        st.svc
            .change_access(AccessChange::RemoveToken(t.id))
            .await?;
    }
    Ok(())
}

/// Deletes an account and its tokens (admins only; never the last admin).
pub(crate) async fn remove_user(
    st: &AppState,
    who: &Principal,
    name: &str,
) -> Result<(), ApiFailure> {
    need_admin_principal(who, "delete users")?;
    let u = st
        .svc
        .user(name)
        .await?
        .ok_or_else(|| ApiFailure::not_found(format!("no user '{name}'")))?;
    if u.role == Role::Admin && !u.disabled {
        need_another_admin(st, name).await?;
    }
    remove_tokens_of(st, name).await?;
    st.svc
        .change_access(AccessChange::RemoveUser(name.to_string()))
        .await
}

async fn delete_user(
    State(st): St,
    Extension(c): Who,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    remove_user(&st, &c.who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_user(
    State(st): St,
    Extension(c): Who,
    Path(name): Path<String>,
    b: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UserInfo>, ApiFailure> {
    let ch = body(b, "user change")?;
    let u = apply_user_change(&st, &c.who, &name, ch).await?;
    Ok(Json(info(&u)))
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    /// Admins: every user's tokens, not only their own.
    #[serde(default)]
    all: bool,
}

async fn list_tokens(
    State(st): St,
    Extension(c): Who,
    q: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ApiToken>>, ApiFailure> {
    let Query(q) = q.map_err(|e| {
        ApiFailure::bad_request(format!("bad query ({e}): the only one is all=true|false"))
    })?;
    if q.all {
        need_admin(&c, "list every user's tokens")?;
    }
    let a = st.svc.access().await?;
    Ok(Json(
        a.tokens
            .into_iter()
            .filter(|t| q.all || t.user == c.who.user)
            .collect(),
    ))
}

/// A new API token for the caller.
pub(crate) async fn make_token(
    st: &AppState,
    who: &Principal,
    label: String,
) -> Result<CreatedToken, ApiFailure> {
    if st.svc.user(&who.user).await?.is_none() {
        return Err(ApiFailure::bad_request(format!(
            "'{}' has no account: API tokens belong to accounts (the node's own token needs none)",
            who.user
        )));
    }
    if label.len() > 200 {
        return Err(ApiFailure::bad_request(
            "the label is longer than 200 bytes",
        ));
    }
    let token = new_token();
    let t = ApiToken {
        id: token_id(&token),
        user: who.user.clone(),
        label,
        created_ms: unix_now() * 1000,
    };
    st.svc
        .change_access(AccessChange::PutToken(t.clone()))
        .await?;
    Ok(CreatedToken { token, info: t })
}

async fn create_token(
    State(st): St,
    Extension(c): Who,
    b: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let n = body(b, "token body")?;
    Ok((
        StatusCode::CREATED,
        Json(make_token(&st, &c.who, n.label).await?),
    ))
}

/// Revokes one of the caller's tokens (admins: anyone's).
pub(crate) async fn revoke_token(
    st: &AppState,
    who: &Principal,
    id: &str,
) -> Result<(), ApiFailure> {
    let t = st
        .svc
        .token(id)
        .await?
        .filter(|t| who.may_see_token(t))
        .ok_or_else(|| ApiFailure::not_found(format!("you have no token {id}")))?;
    st.svc.change_access(AccessChange::RemoveToken(t.id)).await
}

async fn delete_token(
    State(st): St,
    Extension(c): Who,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    revoke_token(&st, &c.who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The rooms the caller may use (admins: all), with their nodes.
pub(crate) fn visible_rooms(a: &AccessState, who: &Principal) -> Vec<RoomInfo> {
    let mut rooms: Vec<RoomInfo> = a
        .rooms
        .iter()
        .filter(|r| who.may_use_room(r))
        .map(|r| RoomInfo {
            nodes: a
                .placements
                .iter()
                .filter(|(_, p)| p == &r.name)
                .map(|(n, _)| n.clone())
                .collect(),
            manage: r.name != GENERAL_ROOM && who.is_room_admin(r),
            room: r.clone(),
        })
        .collect();
    rooms.sort_by(|a, b| {
        (a.room.name != GENERAL_ROOM, &a.room.name)
            .cmp(&(b.room.name != GENERAL_ROOM, &b.room.name))
    });
    rooms
}

async fn list_rooms(State(st): St, Extension(c): Who) -> Result<Json<Vec<RoomInfo>>, ApiFailure> {
    Ok(Json(visible_rooms(&st.svc.access().await?, &c.who)))
}

async fn get_room(
    State(st): St,
    Extension(c): Who,
    Path(name): Path<String>,
) -> Result<Json<RoomInfo>, ApiFailure> {
    visible_rooms(&st.svc.access().await?, &c.who)
        .into_iter()
        .find(|r| r.room.name == name)
        .map(Json)
        .ok_or_else(|| ApiFailure::not_found(format!("no room '{name}' open to you")))
}

/// Makes a room (admins only).
pub(crate) async fn add_room(
    st: &AppState,
    who: &Principal,
    n: NewRoom,
) -> Result<Room, ApiFailure> {
    need_admin_principal(who, "make rooms")?;
    check_name("room", &n.name)?;
    let a = st.svc.access().await?;
    if a.room(&n.name).is_some() {
        return Err(ApiFailure::conflict(format!(
            "room '{}' exists already",
            n.name
        )));
    }
    for u in &n.admins {
        if a.user(u).is_none() {
            return Err(ApiFailure::bad_request(format!(
                "no user '{u}' to make room admin"
            )));
        }
    }
    let r = Room {
        name: n.name,
        public: n.public,
        admins: n.admins,
        users: Vec::new(),
    };
    st.svc
        .change_access(AccessChange::PutRoom(r.clone()))
        .await?;
    Ok(r)
}

async fn create_room(
    State(st): St,
    Extension(c): Who,
    b: Result<Json<NewRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiFailure> {
    let r = add_room(&st, &c.who, body(b, "room body")?).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// Which list of a room an edit touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Member {
    Admin,
    User,
}

/// Adds or removes a room admin (grid admins) or a room user (room admins).
pub(crate) async fn edit_member(
    st: &AppState,
    who: &Principal,
    room: &str,
    user: &str,
    list: Member,
    present: bool,
) -> Result<Room, ApiFailure> {
    let a = st.svc.access().await?;
    let mut r = a
        .room(room)
        .filter(|r| r.name != GENERAL_ROOM)
        .cloned()
        .ok_or_else(|| {
            ApiFailure::not_found(format!(
                "no room '{room}' to change (General is open to everyone)"
            ))
        })?;
    let which = match list {
        Member::Admin => pesc_protocol::access::RoomList::Admins,
        Member::User => pesc_protocol::access::RoomList::Users,
    };
    pesc_protocol::access::check_room_list_change(who, &r, which)?;
    if present && a.user(user).is_none() {
        return Err(ApiFailure::bad_request(format!("no user '{user}'")));
    }
    let v = match list {
        Member::Admin => &mut r.admins,
        Member::User => &mut r.users,
    };
    v.retain(|u| u != user);
    if present {
        v.push(user.to_string());
    }
    // One key per member: another admin's concurrent edit of this room
    // stays too.
    st.svc
        .change_access(AccessChange::RoomMember {
            room: room.to_string(),
            list: which,
            user: user.to_string(),
            present,
        })
        .await?;
    Ok(r)
}

async fn add_room_admin(
    State(st): St,
    Extension(c): Who,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<Room>, ApiFailure> {
    Ok(Json(
        edit_member(&st, &c.who, &room, &user, Member::Admin, true).await?,
    ))
}

async fn remove_room_admin(
    State(st): St,
    Extension(c): Who,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<Room>, ApiFailure> {
    Ok(Json(
        edit_member(&st, &c.who, &room, &user, Member::Admin, false).await?,
    ))
}

async fn add_room_user(
    State(st): St,
    Extension(c): Who,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<Room>, ApiFailure> {
    Ok(Json(
        edit_member(&st, &c.who, &room, &user, Member::User, true).await?,
    ))
}

async fn remove_room_user(
    State(st): St,
    Extension(c): Who,
    Path((room, user)): Path<(String, String)>,
) -> Result<Json<Room>, ApiFailure> {
    Ok(Json(
        edit_member(&st, &c.who, &room, &user, Member::User, false).await?,
    ))
}

/// Puts a node in a room (or, with None, takes it out of `room`). Moving
/// a node out of another named room needs admin of that room too. In a
/// named room a node runs only that room's requests unless `general`
/// keeps it in General as well.
pub(crate) async fn move_node(
    st: &AppState,
    who: &Principal,
    room: &str,
    node: &str,
    put_in: bool,
    general: bool,
) -> Result<(), ApiFailure> {
    let a = st.svc.access().await?;
    let target = a
        .room(room)
        .filter(|r| r.name != GENERAL_ROOM)
        .ok_or_else(|| {
            ApiFailure::not_found(format!(
                "no room '{room}' (every node is in General already)"
            ))
        })?;
    let n = grid_node(st, node).await?;
    let id: NodeId = n.id.clone();
    let current = a.placement(&id).and_then(|r| a.room(r));
    if put_in {
        pesc_protocol::access::check_node_placement(who, &n.name, current, Some(target))?;
        st.svc
            .change_access(AccessChange::PlaceNode(
                id,
                Some(target.name.clone()),
                general,
            ))
            .await
    } else {
        pesc_protocol::access::check_node_placement(who, &n.name, Some(target), None)?;
        if current.is_none_or(|c| c.name != target.name) {
            return Err(ApiFailure::not_found(format!(
                "node {} is not in room '{}'",
                n.name, target.name
            )));
        }
        st.svc
            .change_access(AccessChange::PlaceNode(id, None, true))
            .await
    }
}

/// `?general=true`: the node stays in General too.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Placing {
    #[serde(default)]
    general: bool,
}

async fn place_node(
    State(st): St,
    Extension(c): Who,
    Path((room, node)): Path<(String, String)>,
    q: Result<Query<Placing>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiFailure> {
    let Query(q) = q.map_err(|e| {
        ApiFailure::bad_request(format!("general is true or false: {}", e.body_text()))
    })?;
    move_node(&st, &c.who, &room, &node, true, q.general).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unplace_node(
    State(st): St,
    Extension(c): Who,
    Path((room, node)): Path<(String, String)>,
) -> Result<StatusCode, ApiFailure> {
    move_node(&st, &c.who, &room, &node, false, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The node an API path names (by id or name).
async fn grid_node(st: &AppState, node: &str) -> Result<pesc_protocol::api::GridNode, ApiFailure> {
    st.svc
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.id.as_str() == node || n.name == node)
        .ok_or_else(|| ApiFailure::not_found(format!("no node '{node}' in this grid")))
}

/// A node's settings, every key with its value (if an admin set one).
pub(crate) async fn settings_of(
    st: &AppState,
    node: &NodeId,
) -> Result<Vec<NodeSetting>, ApiFailure> {
    let a = st.svc.access().await?;
    Ok(pesc_protocol::node_settings::KEYS
        .iter()
        .map(|(k, meaning)| NodeSetting {
            key: k.to_string(),
            value: a
                .node_settings
                .iter()
                .find(|(n, key, _)| n == node && key == k)
                .map(|(_, _, v)| v.clone()),
            meaning: meaning.to_string(),
        })
        .collect())
}

async fn node_settings(
    State(st): St,
    Path(node): Path<String>,
) -> Result<Json<Vec<NodeSetting>>, ApiFailure> {
    let id = grid_node(&st, &node).await?.id;
    Ok(Json(settings_of(&st, &id).await?))
}

/// Sets or clears one setting of a node: admins only (the API, `pesc
/// config` and the Nodes page).
pub(crate) async fn change_node_setting(
    st: &AppState,
    who: &Principal,
    node: &str,
    key: &str,
    value: Option<String>,
) -> Result<NodeId, ApiFailure> {
    need_admin_principal(who, "change a node's settings")?;
    let id = grid_node(st, node).await?.id;
    st.svc
        .change_access(AccessChange::NodeSetting {
            node: id.clone(),
            key: key.to_string(),
            value,
        })
        .await?;
    Ok(id)
}

async fn set_node_setting(
    State(st): St,
    Extension(c): Who,
    Path((node, key)): Path<(String, String)>,
    b: Result<Json<NodeSettingValue>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Vec<NodeSetting>>, ApiFailure> {
    let v = body(b, "setting")?;
    let id = change_node_setting(&st, &c.who, &node, &key, Some(v.value)).await?;
    Ok(Json(settings_of(&st, &id).await?))
}

async fn clear_node_setting(
    State(st): St,
    Extension(c): Who,
    Path((node, key)): Path<(String, String)>,
) -> Result<Json<Vec<NodeSetting>>, ApiFailure> {
    let id = change_node_setting(&st, &c.who, &node, &key, None).await?;
    Ok(Json(settings_of(&st, &id).await?))
}

pub(crate) fn join_info(st: &AppState) -> JoinInfo {
    let token = st.svc.join_token();
    JoinInfo {
        command: format!("pesc node --join {token}"),
        token,
    }
}

async fn join_token(State(st): St, Extension(c): Who) -> Result<Json<JoinInfo>, ApiFailure> {
    need_admin(&c, "see the join token")?;
    Ok(Json(join_info(&st)))
}

async fn grid_settings(State(st): St) -> Result<Json<GridSettings>, ApiFailure> {
    let a = st.svc.access().await?;
    Ok(Json(GridSettings {
        min_isolation: a.min_isolation,
    }))
}

async fn set_grid_settings(
    State(st): St,
    Extension(c): Who,
    b: Result<Json<GridSettings>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<GridSettings>, ApiFailure> {
    let g = body(b, "grid settings")?;
    change_grid_settings(&st, &c.who, &g).await?;
    Ok(Json(g))
}

/// Changes the grid's settings: admins only (the API and the Nodes page).
pub(crate) async fn change_grid_settings(
    st: &AppState,
    who: &Principal,
    g: &GridSettings,
) -> Result<(), ApiFailure> {
    need_admin_principal(who, "change the grid's settings")?;
    st.svc
        .change_access(AccessChange::SetMinIsolation(g.min_isolation))
        .await
}
