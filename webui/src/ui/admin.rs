//! Rooms, nodes, users and API tokens.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use pesc_protocol::access::Role;
use pesc_protocol::api::{NewRoom, NewUser, UserChange};
use pesc_protocol::isolation::IsolationLevel;
use serde::Deserialize;

use super::{Flash, Page, back, csrf_field, failed, layout, when};
use crate::accounts::{
    Member, add_room, add_user, apply_user_change, edit_member, join_info, make_token, move_node,
    revoke_token, visible_rooms,
};
use crate::auth::AppState;

type St = State<AppState>;

pub(crate) async fn rooms_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let (access, nodes) = match tokio::try_join!(st.svc.access(), st.svc.nodes()) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let names = super::node_names(&nodes);
    let rooms = visible_rooms(&access, p.who());
    let users: Vec<&str> = access.users.iter().map(|u| u.name.as_str()).collect();
    let body = html! {
        p { "A room is a group of nodes (a lab, a classroom). Every node is in the public General room; "
            "a room admin adds nodes and the users allowed to send runs there. You see the rooms open to you." }
        @for r in &rooms {
            section.card.room data-room=(r.room.name) {
                h2 { (r.room.name) @if r.room.public { " " span.badge { "public" } } }
                @if r.room.name == pesc_protocol::model::GENERAL_ROOM {
                    p { "Every node and every user." }
                } @else {
                    p { b { "Admins: " } (if r.room.admins.is_empty() { "grid admins only".to_string() } else { r.room.admins.join(", ") }) }
                    p { b { "Users: " } (if r.room.users.is_empty() { "none".to_string() } else { r.room.users.join(", ") }) }
                    p { b { "Nodes: " } @if r.nodes.is_empty() { "none" } @for (i, n) in r.nodes.iter().enumerate() { @if i > 0 { ", " } (names.get(n.as_str()).copied().unwrap_or(n.as_str())) } }
                    @if r.manage {
                        form.inline method="post" action={ "/rooms/" (r.room.name) "/members" } {
                            (csrf_field(&p))
                            select name="user" { @for u in &users { option value=(u) { (u) } } }
                            select name="list" {
                                option value="user" { "as a user" }
                                @if p.who().is_admin() { option value="admin" { "as a room admin" } }
                            }
                            button name="action" value="add" { "Add" }
                            button name="action" value="remove" { "Remove" }
                        }
                        form.inline method="post" action={ "/rooms/" (r.room.name) "/nodes" } {
                            (csrf_field(&p))
                            select name="node" { @for n in &nodes { option value=(n.id) { (n.name) } } }
                            label.check { input type="checkbox" name="general" value="1"; " also General" }
                            button name="action" value="add" { "Put node in this room" }
                            button name="action" value="remove" { "Take node out" }
                        }
                    }
                }
            }
        }
        @if p.who().is_admin() {
            h2 { "New room" }
            form.card method="post" action="/rooms" {
                (csrf_field(&p))
                label { "Name " input name="name" required pattern="[A-Za-z0-9._@-]+"; }
                label { "Room admin " select name="admin" { option value="" { "—" } @for u in &users { option value=(u) { (u) } } } }
                label.check { input type="checkbox" name="public" value="on"; " Public (open to every user)" }
                button type="submit" { "Create room" }
            }
        }
    };
    layout(&p, "Rooms", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct RoomForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    admin: String,
    #[serde(default)]
    public: Option<String>,
}

pub(crate) async fn room_form(State(st): St, p: Page, Form(f): Form<RoomForm>) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let n = NewRoom {
        name: f.name.trim().to_string(),
        public: f.public.is_some(),
        admins: Some(f.admin)
            .filter(|a| !a.is_empty())
            .into_iter()
            .collect(),
    };
    let r = add_room(&st, p.who(), n)
        .await
        .map(|r| format!("Room {} created.", r.name));
    back("/rooms", r)
}

#[derive(Deserialize)]
pub(crate) struct MemberForm {
    #[serde(default)]
    csrf: String,
    user: String,
    list: String,
    action: String,
}

pub(crate) async fn member_form(
    State(st): St,
    p: Page,
    Path(room): Path<String>,
    Form(f): Form<MemberForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let list = if f.list == "admin" {
        Member::Admin
    } else {
        Member::User
    };
    let add = f.action == "add";
    let r = edit_member(&st, p.who(), &room, &f.user, list, add)
        .await
        .map(|_| {
            format!(
                "{} {} {} room {room}.",
                f.user,
                if add { "added to" } else { "removed from" },
                if list == Member::Admin {
                    "the admins of"
                } else {
                    "the users of"
                }
            )
        });
    back("/rooms", r)
}

#[derive(Deserialize)]
pub(crate) struct NodeForm {
    #[serde(default)]
    csrf: String,
    node: String,
    action: String,
    /// The node also stays in General (a checkbox: present when ticked).
    #[serde(default)]
    general: Option<String>,
}

pub(crate) async fn node_form(
    State(st): St,
    p: Page,
    Path(room): Path<String>,
    Form(f): Form<NodeForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let add = f.action == "add";
    let general = f.general.is_some();
    let r = move_node(&st, p.who(), &room, &f.node, add, general)
        .await
        .map(|_| {
            format!(
                "Node {} {} room {room}.",
                f.node.chars().take(12).collect::<String>(),
                if add { "put in" } else { "taken out of" }
            )
        });
    back("/rooms", r)
}

pub(crate) async fn nodes_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let (nodes, access, me) =
        match tokio::try_join!(st.svc.nodes(), st.svc.access(), st.svc.node_info()) {
            Ok(x) => x,
            Err(e) => return failed(e),
        };
    let body = html! {
        @if p.who().is_admin() && me.skipped.total > 0 {
            section.card.skipped {
                h2 { "Skipped entries (" (me.skipped.total) ")" }
                p { "This node skips these entries of the grid's documents: they fail its checks, so a faulty or hostile node wrote them. Everything else keeps working; find the node that wrote them." }
                ul {
                    @for e in &me.skipped.entries {
                        li { code { (e.entry) } ": " (e.reason) }
                    }
                }
            }
        }
        @if p.who().is_admin() {
            section.card.join {
                h2 { "Add a desktop" }
                p { "Run this on the new desktop (it joins this grid and finds the others on the LAN):" }
                pre.join-command { (join_info(&st).command) }
            }
            section.card.isolation {
                h2 { "Minimum isolation" }
                p { "Nodes that wall runs in less than this take no runs: " code { "sandbox" } " (the default: each run in its own uid, Landlock and namespaces), " code { "containers" } " (Docker only), or " code { "none" } " (plain processes that can read the node's data: only for grids whose every user is trusted)." }
                form.inline method="post" action="/nodes/isolation" {
                    (csrf_field(&p))
                    select name="min_isolation" {
                        @for l in [IsolationLevel::None, IsolationLevel::Sandbox, IsolationLevel::Containers] {
                            option value=(l.as_str()) selected[l == access.min_isolation] { (l.as_str()) }
                        }
                    }
                    button type="submit" { "Save" }
                }
            }
        }
        table.nodes {
            thead { tr { th { "Node" } th { "State" } th { "Room" } th { "Executor" } th { "Isolation" } th { "Slots (free)" } th { "Load" } th { "Memory (free of all)" } th { "GPUs" } th { "Last heard" } } }
            tbody {
                @for n in &nodes {
                    tr data-node=(n.id) {
                        td { (n.name) @if n.this_node { " " span.badge { "this node" } } br; small { code { (n.id.as_str().chars().take(16).collect::<String>()) "…" } } }
                        // Up by the grid's view of liveness: a node whose
                        // heartbeats go to others is not offline.
                        td {
                            @if n.this_node || n.connected || n.up { (super::badge("online")) } @else { (super::badge("offline")) }
                            @if let Some(why) = &n.pause { br; span title=(why) { (super::badge(if n.owner_here { "in use by its owner" } else { "paused" })) } br; small { (why) } }
                            @if n.suspended > 0 { br; small { (n.suspended) " run(s) suspended" } }
                        }
                        td {
                            @match access.placement(&n.id) {
                                Some(r) if access.in_general.contains(&n.id) => { (r) " and General" }
                                Some(r) => { (r) " only" }
                                None => "General",
                            }
                        }
                        td { (n.executor) }
                        td { (n.isolation) @if !n.meets_minimum { br; (super::badge("below minimum")) } }
                        td { (n.slots) @if let Some(f) = n.slots_free { " (" (f) " free)" } }
                        td { @if let Some(l) = n.load { (format!("{:.0}%", l * 100.0)) } }
                        td {
                            @if let (Some(f), Some(t)) = (n.mem_free_mb, n.mem_total_mb) { (format!("{:.1} of {:.1} GiB", f as f64 / 1024.0, t as f64 / 1024.0)) }
                            @if let Some(r) = n.mem_room_mb { br; small { (format!("{:.1} GiB for runs", r as f64 / 1024.0)) } }
                        }
                        td { @for g in &n.gpus { div { (g.name) " (" (g.memory_total_mb) " MiB, capability " (g.capability) ")" } } }
                        td { @if let Some(ms) = n.last_seen_ms_ago { (super::fmt_duration(ms)) " ago" } @else if n.this_node { "now" } }
                    }
                }
            }
        }
        @if p.who().is_admin() {
            section.card.node-settings {
                h2 { "Node settings" }
                p { "Change a node's limits, idle times or slots: the node applies them at once, its runs go on. An empty value clears the setting (its " code { "node.toml" } " decides again). The same as " code { "pesc config set NODE KEY VALUE" } "." }
                @if !access.node_settings.is_empty() {
                    table.settings {
                        thead { tr { th { "Node" } th { "Setting" } th { "Value" } } }
                        tbody {
                            @for (n, k, v) in &access.node_settings {
                                tr {
                                    td { (nodes.iter().find(|x| &x.id == n).map_or(n.as_str(), |x| x.name.as_str())) }
                                    td { code { (k) } }
                                    td { (v) }
                                }
                            }
                        }
                    }
                }
                form.inline method="post" action="/nodes/settings" {
                    (csrf_field(&p))
                    select name="node" {
                        @for n in &nodes { option value=(n.id) { (n.name) } }
                    }
                    select name="key" {
                        @for (k, meaning) in pesc_protocol::node_settings::KEYS {
                            option value=(k) title=(meaning) { (k) }
                        }
                    }
                    input name="value" placeholder="value (empty: clear)";
                    button type="submit" { "Set" }
                }
                dl.setting-help {
                    @for (k, meaning) in pesc_protocol::node_settings::KEYS { dt { code { (k) } } dd { (meaning) } }
                }
            }
        }
    };
    layout(&p, "Nodes", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NodeSettingForm {
    csrf: String,
    node: String,
    key: String,
    value: String,
}

pub(crate) async fn node_setting_form(
    State(st): St,
    p: Page,
    Form(f): Form<NodeSettingForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let value = Some(f.value.trim().to_string()).filter(|v| !v.is_empty());
    let said = match &value {
        Some(v) => format!("{} is now {v} on the node.", f.key),
        None => format!("{} cleared: the node's node.toml decides.", f.key),
    };
    let r = crate::accounts::change_node_setting(&st, p.who(), &f.node, &f.key, value)
        .await
        .map(|_| said);
    back("/nodes", r)
}

#[derive(Deserialize)]
pub(crate) struct IsolationForm {
    csrf: String,
    min_isolation: String,
}

pub(crate) async fn isolation_form(
    State(st): St,
    p: Page,
    Form(f): Form<IsolationForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = match f.min_isolation.parse::<IsolationLevel>() {
        Ok(l) => crate::accounts::change_grid_settings(
            &st,
            p.who(),
            &pesc_protocol::api::GridSettings { min_isolation: l },
        )
        .await
        .map(|_| format!("The grid's minimum isolation is now {l}.")),
        Err(e) => Err(crate::ApiFailure::bad_request(e.to_string())),
    };
    back("/nodes", r)
}

pub(crate) async fn users_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    if !p.who().is_admin() {
        return super::error_page(
            axum::http::StatusCode::FORBIDDEN,
            "Only admins manage users.",
        );
    }
    let access = match st.svc.access().await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let roles = [Role::User, Role::Operator, Role::Admin];
    let body = html! {
        table.users {
            thead { tr { th { "User" } th { "Role" } th { "Since" } th { "Change" } th { "Account" } } }
            tbody {
                @for u in &access.users {
                    tr data-user=(u.name) {
                        td { (u.name) @if u.disabled { " " (super::badge("disabled")) } }
                        td { (u.role.as_str()) }
                        td { (when(u.created_ms)) }
                        td {
                            form.inline method="post" action={ "/users/" (u.name) } {
                                (csrf_field(&p))
                                select name="role" { @for r in roles { option value=(r.as_str()) selected[r == u.role] { (r.as_str()) } } }
                                input type="password" name="password" placeholder="new password (optional)" minlength="8" autocomplete="new-password";
                                button type="submit" { "Save" }
                            }
                        }
                        td {
                            form.inline method="post" action={ "/users/" (u.name) } {
                                (csrf_field(&p))
                                input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                button type="submit" { @if u.disabled { "Enable" } @else { "Disable" } }
                            }
                            form.inline method="post" action={ "/users/" (u.name) "/delete" } {
                                (csrf_field(&p))
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New user" }
        form.card #new-user method="post" action="/users" {
            (csrf_field(&p))
            label { "Name " input name="name" required pattern="[A-Za-z0-9._@-]+"; }
            label { "Password (8 characters or more) " input type="password" name="password" minlength="8" required autocomplete="new-password"; }
            label { "Role " select name="role" { @for r in roles { option value=(r.as_str()) { (r.as_str()) } } } }
            button type="submit" { "Add user" }
        }
    };
    layout(&p, "Users", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct UserForm {
    #[serde(default)]
    csrf: String,
    name: String,
    password: String,
    role: String,
}

pub(crate) async fn user_form(State(st): St, p: Page, Form(f): Form<UserForm>) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = async {
        if !p.who().is_admin() {
            return Err(crate::ApiFailure::forbidden("only admins add users"));
        }
        let role: Role = f.role.parse()?;
        let u = add_user(
            &st,
            NewUser {
                name: f.name.trim().to_string(),
                password: f.password,
                role,
            },
        )
        .await?;
        Ok(format!("User {} added ({}).", u.name, u.role.as_str()))
    }
    .await;
    back("/users", r)
}

#[derive(Deserialize)]
pub(crate) struct UserChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    disabled: String,
}

pub(crate) async fn user_change_form(
    State(st): St,
    p: Page,
    Path(name): Path<String>,
    Form(f): Form<UserChangeForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = async {
        let role = if f.role.is_empty() {
            None
        } else {
            Some(f.role.parse::<Role>()?)
        };
        let disabled = match f.disabled.as_str() {
            "" => None,
            d => Some(d == "true"),
        };
        let ch = UserChange {
            role,
            password: Some(f.password).filter(|p| !p.is_empty()),
            disabled,
        };
        let u = apply_user_change(&st, p.who(), &name, ch).await?;
        Ok(match disabled {
            Some(true) => format!(
                "User {} disabled: their sessions and tokens stop working.",
                u.name
            ),
            Some(false) => format!("User {} enabled.", u.name),
            None => format!("User {} saved ({}).", u.name, u.role.as_str()),
        })
    }
    .await;
    back(
        if p.who().is_admin() {
            "/users"
        } else {
            "/tokens"
        },
        r,
    )
}

pub(crate) async fn tokens_page(State(st): St, p: Page, flash: Query<Flash>) -> Response {
    let access = match st.svc.access().await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let mine: Vec<_> = access
        .tokens
        .iter()
        .filter(|t| t.user == p.who().user)
        .collect();
    let body = html! {
        p { "API tokens let the CLI and scripts act as you: " code { "PESC_TOKEN=… pesc submit ." }
            " The grid keeps only a hash of each token, so a token is shown once, when it is made." }
        table.tokens {
            thead { tr { th { "Label" } th { "Id" } th { "Made" } th {} } }
            tbody {
                @for t in &mine {
                    tr {
                        td { (t.label) }
                        td { code { (t.id[..12]) } }
                        td { (when(t.created_ms)) }
                        td { form.inline method="post" action={ "/tokens/" (t.id) "/revoke" } { (csrf_field(&p)) button.danger { "Revoke" } } }
                    }
                }
            }
        }
        form.card method="post" action="/tokens" {
            (csrf_field(&p))
            label { "Label " input name="label" placeholder="laptop CLI"; }
            button type="submit" { "Make a token" }
        }
        h2 { "My password" }
        form.card method="post" action={ "/users/" (p.who().user) } {
            (csrf_field(&p))
            label { "New password " input type="password" name="password" minlength="8" required autocomplete="new-password"; }
            button type="submit" { "Change password" }
        }
    };
    layout(&p, "API tokens", &flash, body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
}

pub(crate) async fn token_form(State(st): St, p: Page, Form(f): Form<TokenForm>) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    match make_token(&st, p.who(), f.label).await {
        // Shown once, on this page (not in a URL).
        Ok(t) => layout(
            &p,
            "Your new API token",
            &Flash::default(),
            html! {
                p { "Copy it now: it is not shown again." }
                pre.token { (t.token) }
                p { a href="/tokens" { "Back to tokens" } }
            },
        )
        .into_response(),
        Err(e) => back("/tokens", Err(e)),
    }
}

pub(crate) async fn revoke_form(
    State(st): St,
    p: Page,
    Path(id): Path<String>,
    Form(f): Form<super::session::CsrfOnly>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = revoke_token(&st, p.who(), &id)
        .await
        .map(|_| "Token revoked.".to_string());
    back("/tokens", r)
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn user_delete_form(
    State(st): St,
    p: Page,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = p.check_csrf(&f.csrf) {
        return *r;
    }
    let r = crate::accounts::remove_user(&st, p.who(), &name)
        .await
        .map(|_| format!("User {name} deleted, with their tokens."));
    back("/users", r)
}
