//! Accounts, roles and who may do what: pure rules the API applies.
//!
//! Users and their API tokens live in the grid document, so an account works
//! on every node. Rooms say which users may send runs to which nodes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::MAX_NAME_BYTES;
use crate::model::{GENERAL_ROOM, Room};

/// PESC's three audiences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Submits requests and sees their own.
    User,
    /// Also manages domains and sees every request and node.
    Operator,
    /// Everything: users, rooms, every request, the join token.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::invalid(format!(
                "unknown role '{s}': use admin, operator or user"
            ))),
        }
    }
}

/// An account, as the grid document keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Argon2id, PHC string format.
    pub password_hash: String,
    pub created_ms: u64,
    /// A disabled account cannot log in, and its sessions and tokens stop
    /// working on every node as soon as the change arrives there.
    #[serde(default)]
    pub disabled: bool,
    /// Tokens made before this (unix ms) are void: set by a new password,
    /// so a token made on another node while the password changed does
    /// not survive it.
    #[serde(default)]
    pub tokens_after_ms: u64,
}

impl User {
    /// Whether `t` (one of this user's tokens) still counts: made after the
    /// account itself (a re-made account inherits nothing) and after its
    /// last new password.
    pub fn accepts(&self, t: &ApiToken) -> bool {
        t.user == self.name
            && !self.disabled
            && t.created_ms >= self.created_ms
            && t.created_ms >= self.tokens_after_ms
    }
}

/// An API token: the grid keeps only a hash of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    /// Hex BLAKE3 hash of the token (also its id).
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_ms: u64,
}

/// Who makes a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
    /// Sees every request and node (admins and operators).
    pub fn sees_all(&self) -> bool {
        self.role >= Role::Operator
    }
    /// May see a request made by `owner`.
    pub fn may_see_request(&self, owner: &str) -> bool {
        self.sees_all() || self.user == owner
    }
    /// Whose requests a listing shows this caller: everyone's (`None`) or
    /// their own (the same rule as [`Principal::may_see_request`]).
    pub fn request_owner_filter(&self) -> Option<&str> {
        (!self.sees_all()).then_some(self.user.as_str())
    }
    /// May cancel a request made by `owner`: its owner, or an admin.
    pub fn may_cancel_request(&self, owner: &str) -> bool {
        self.is_admin() || self.user == owner
    }
    /// May see a process or shared file `owner` uploaded (admins and
    /// operators see all).
    pub fn may_see_upload(&self, owner: &str) -> bool {
        self.sees_all() || self.user == owner
    }
    /// May replace a shared file (or change the sharing of an upload)
    /// that `owner` uploaded: its owner, or an admin.
    pub fn may_use_upload(&self, owner: &str) -> bool {
        self.is_admin() || self.user == owner
    }
    /// May see, run or use in a request an upload of `owner` shared with
    /// `shared` rooms: its owner, an admin (operators see it), or a user of
    /// one of those rooms.
    pub fn may_use_shared(&self, owner: &str, shared: &[String], rooms: &[Room]) -> bool {
        self.may_use_upload(owner)
            || rooms
                .iter()
                .filter(|r| shared.contains(&r.name))
                .any(|r| self.may_use_room(r))
    }
    /// Sees an upload of `owner` shared with `shared` rooms where uploads
    /// are listed: what [`Principal::may_see_upload`] or
    /// [`Principal::may_use_shared`] allows.
    pub fn may_list_upload(&self, owner: &str, shared: &[String], rooms: &[Room]) -> bool {
        self.may_see_upload(owner) || self.may_use_shared(owner, shared, rooms)
    }
    /// May add a domain (a container image recipe every node may build):
    /// operators and admins.
    pub fn may_make_domain(&self) -> bool {
        self.sees_all()
    }
    /// May send runs to this room.
    pub fn may_use_room(&self, room: &Room) -> bool {
        room.public
            || self.is_admin()
            || self.is_room_admin(room)
            || room.users.contains(&self.user)
    }
    /// Manages the room's users and nodes.
    pub fn is_room_admin(&self, room: &Room) -> bool {
        self.is_admin() || room.admins.contains(&self.user)
    }
    /// May put a node that is now in `from` (a named room, or none) into `to`.
    pub fn may_place_node(&self, from: Option<&Room>, to: &Room) -> bool {
        self.is_room_admin(to) && from.is_none_or(|f| self.is_room_admin(f))
    }
    /// May see (and revoke) API token `t`: its user's own, or an admin.
    pub fn may_see_token(&self, t: &ApiToken) -> bool {
        self.is_admin() || t.user == self.user
    }
}

/// Checks that `who` is an admin, the only ones who may `what` (make rooms,
/// list or delete users, change the grid's settings…).
pub fn check_admin(who: &Principal, what: &str) -> Result<()> {
    if who.is_admin() {
        return Ok(());
    }
    Err(Error::Forbidden(format!("only admins {what}")))
}

/// How a domain `who` makes starts out: operators' and admins' domains,
/// and anyone's made from a template, are usable at once; a user's own
/// Dockerfile is a request an operator or admin reviews.
pub fn new_domain_review(who: &Principal, own_dockerfile: bool) -> crate::domain::Review {
    if who.may_make_domain() || !own_dockerfile {
        crate::domain::Review::Approved
    } else {
        crate::domain::Review::Requested
    }
}

/// Checks that `who` may replace domain `existing` (its owner, or an
/// operator or admin).
pub fn check_replace_domain(who: &Principal, existing: &crate::domain::Domain) -> Result<()> {
    if who.may_make_domain() || existing.owner == who.user {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "domain '{}' is {}'s: choose another name",
        existing.name, existing.owner
    )))
}

/// Checks that `who` may approve or reject domains.
pub fn check_review_domain(who: &Principal) -> Result<()> {
    if who.may_make_domain() {
        return Ok(());
    }
    Err(Error::Forbidden(
        "only operators and admins approve or reject domains".into(),
    ))
}

/// Checks that `who` may run requests in domain `d` (in `request_rooms`):
/// it is approved, and a reviewed one (a user's own Dockerfile) is its
/// owner's and the rooms' the operator chose.
pub fn check_use_domain(
    who: &Principal,
    d: &crate::domain::Domain,
    rooms: &[Room],
    request_rooms: &[String],
) -> Result<()> {
    d.usable()?;
    if d.template.is_some() || d.owner == who.user {
        return Ok(());
    }
    check_shared_use(
        who,
        "domain",
        &d.name,
        &d.owner,
        &d.rooms,
        rooms,
        request_rooms,
    )
}

/// Checks that `who` may change user `name`: anyone their own password;
/// only admins roles, disabling, and other users.
pub fn check_user_change(who: &Principal, name: &str, role_or_disabled: bool) -> Result<()> {
    if who.is_admin() || (who.user == name && !role_or_disabled) {
        return Ok(());
    }
    Err(Error::Forbidden(
        "only admins change roles, disable accounts or change other users' passwords".into(),
    ))
}

/// Checks that `who` may change `list` of `room`: grid admins name room
/// admins; room admins change its users.
pub fn check_room_list_change(who: &Principal, room: &Room, list: RoomList) -> Result<()> {
    match list {
        RoomList::Admins if who.is_admin() => Ok(()),
        RoomList::Users if who.is_room_admin(room) => Ok(()),
        RoomList::Admins => Err(Error::Forbidden("only admins name room admins".into())),
        RoomList::Users => Err(Error::Forbidden(format!(
            "only admins of room '{}' change its users",
            room.name
        ))),
    }
}

/// Checks that `who` may put node `node` (now in `from`, or in no named
/// room) into room `to`, or with `to` = `None` take it out of `from`.
pub fn check_node_placement(
    who: &Principal,
    node: &str,
    from: Option<&Room>,
    to: Option<&Room>,
) -> Result<()> {
    match (from, to) {
        (from, Some(to)) => {
            let from = from.filter(|f| f.name != to.name);
            if who.may_place_node(from, to) {
                return Ok(());
            }
            Err(Error::Forbidden(match from {
                Some(f) => format!(
                    "node {node} is in room '{}': moving it to '{}' needs admin of both rooms",
                    f.name, to.name
                ),
                None => format!("only admins of room '{}' add nodes to it", to.name),
            }))
        }
        (Some(from), None) if who.is_room_admin(from) => Ok(()),
        (Some(from), None) => Err(Error::Forbidden(format!(
            "only admins of room '{}' take nodes out of it",
            from.name
        ))),
        (None, None) => Ok(()),
    }
}

/// Everything about access the grid document holds.
#[derive(Debug, Clone, Default)]
pub struct AccessState {
    pub users: Vec<User>,
    pub tokens: Vec<ApiToken>,
    pub rooms: Vec<Room>,
    /// The named room each placed node is in.
    pub placements: Vec<(crate::NodeId, String)>,
    /// Placed nodes that also stay in General.
    pub in_general: Vec<crate::NodeId>,
    /// The grid's minimum isolation level: nodes below it take no runs.
    pub min_isolation: crate::isolation::IsolationLevel,
    /// Settings admins gave nodes: (node, key, value).
    pub node_settings: Vec<(crate::NodeId, String, String)>,
}

impl AccessState {
    pub fn room(&self, name: &str) -> Option<&Room> {
        self.rooms.iter().find(|r| r.name == name)
    }
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
    pub fn placement(&self, node: &crate::NodeId) -> Option<&str> {
        self.placements
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| r.as_str())
    }
}

/// A change to the access part of the grid document.
#[derive(Debug, Clone)]
pub enum AccessChange {
    PutUser(User),
    PutToken(ApiToken),
    RemoveToken(String),
    /// Deletes an account (its tokens are removed with their own changes).
    RemoveUser(String),
    PutRoom(Room),
    /// Adds a user to one of a room's lists, or takes them out (one key
    /// per member: concurrent edits of a room all stay).
    RoomMember {
        room: String,
        list: RoomList,
        user: String,
        present: bool,
    },
    /// Puts a node in a named room, or takes it out of its room.
    /// A node into a named room (or out of it), and whether it also stays
    /// in General.
    PlaceNode(crate::NodeId, Option<String>, bool),
    /// Sets the grid's minimum isolation level (admins only).
    SetMinIsolation(crate::isolation::IsolationLevel),
    /// Sets one of a node's settings (`crate::node_settings`), or clears
    /// it (`None`: the node's own configuration decides again). Admins only.
    NodeSetting {
        node: crate::NodeId,
        key: String,
        value: Option<String>,
    },
}

/// A room's list of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomList {
    Admins,
    Users,
}

impl RoomList {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomList::Admins => "admins",
            RoomList::Users => "users",
        }
    }
}

/// Checks a user or room name: short, printable, no separators that
/// would confuse a URL or a document key.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "the {what} name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(Error::invalid(format!(
            "the {what} name '{name}' may hold only letters, digits and - _ . @"
        )));
    }
    Ok(())
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;

pub fn check_password(p: &str) -> Result<()> {
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if p.len() > 1024 {
        return Err(Error::invalid("the password is longer than 1024 bytes"));
    }
    Ok(())
}

/// The rooms a request may name: each must exist and be open to the user.
pub fn check_request_rooms(who: &Principal, wanted: &[String], rooms: &[Room]) -> Result<()> {
    for name in wanted {
        if name == GENERAL_ROOM {
            continue;
        }
        let Some(room) = rooms.iter().find(|r| &r.name == name) else {
            return Err(Error::invalid(format!("room '{name}' does not exist")));
        };
        if !who.may_use_room(room) {
            return Err(Error::Forbidden(format!(
                "room '{name}' is not open to {}: ask one of its admins ({})",
                who.user,
                if room.admins.is_empty() {
                    "the grid admins".to_string()
                } else {
                    room.admins.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Checks that `who` may replace `what` (a process or shared file, named
/// `name`, uploaded by `owner`).
pub fn check_upload_use(who: &Principal, what: &str, name: &str, owner: &str) -> Result<()> {
    if who.may_use_upload(owner) {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "{what} '{name}' belongs to {owner}: only they (or an admin) may replace it; upload your own under another name"
    )))
}

/// Checks that `who` may put `what` (named `name`, uploaded by `owner`,
/// shared with `shared` rooms) in a request for `request_rooms`. Someone
/// it was shared with may send it only to those rooms: what was shared with
/// a room stays on that room's nodes.
#[allow(clippy::too_many_arguments)]
pub fn check_shared_use(
    who: &Principal,
    what: &str,
    name: &str,
    owner: &str,
    shared: &[String],
    rooms: &[Room],
    request_rooms: &[String],
) -> Result<()> {
    if who.may_use_upload(owner) {
        return Ok(());
    }
    if who.may_use_shared(owner, shared, rooms) {
        if !request_rooms.is_empty() && request_rooms.iter().all(|r| shared.contains(r)) {
            return Ok(());
        }
        return Err(Error::Forbidden(format!(
            "{what} '{name}' is shared with {} only: send the request there (rooms)",
            shared.join(", ")
        )));
    }
    Err(Error::Forbidden(format!(
        "{what} '{name}' belongs to {owner} and is not shared with a room of yours: ask them to share it (upload with rooms=ROOM), or upload your own"
    )))
}

/// Checks the rooms an upload is shared with: each exists and its
/// uploader may use it.
pub fn check_share_rooms(who: &Principal, shared: &[String], rooms: &[Room]) -> Result<()> {
    if shared.len() > crate::limits::MAX_LIST_ITEMS {
        return Err(Error::invalid(format!(
            "share with at most {} rooms",
            crate::limits::MAX_LIST_ITEMS
        )));
    }
    for name in shared {
        let room = rooms
            .iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| Error::invalid(format!("no room '{name}' to share with")))?;
        if !who.may_use_room(room) {
            return Err(Error::Forbidden(format!(
                "you cannot share with room '{name}': you are not one of its users"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: &str, role: Role) -> Principal {
        Principal {
            user: user.into(),
            role,
        }
    }

    fn room(name: &str, admins: &[&str], users: &[&str]) -> Room {
        Room {
            name: name.into(),
            public: false,
            admins: admins.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn account_and_room_changes_follow_roles() {
        let (root, op, ana, bob) = (
            p("root", Role::Admin),
            p("op", Role::Operator),
            p("ana", Role::User),
            p("bob", Role::User),
        );
        assert!(check_admin(&root, "make rooms").is_ok());
        assert!(
            matches!(check_admin(&op, "make rooms"), Err(Error::Forbidden(m)) if m == "only admins make rooms")
        );
        // Own password yes; own role, or anyone else's account, no.
        assert!(check_user_change(&ana, "ana", false).is_ok());
        assert!(check_user_change(&ana, "ana", true).is_err());
        assert!(check_user_change(&ana, "bob", false).is_err());
        assert!(check_user_change(&root, "bob", true).is_ok());
        let lab = room("lab", &["ana"], &["bob"]);
        assert!(check_room_list_change(&ana, &lab, RoomList::Users).is_ok());
        assert!(check_room_list_change(&ana, &lab, RoomList::Admins).is_err());
        assert!(check_room_list_change(&bob, &lab, RoomList::Users).is_err());
        assert!(check_room_list_change(&root, &lab, RoomList::Admins).is_ok());
        // Moving a node between rooms needs admin of both.
        let gpu = room("gpu", &["bob"], &[]);
        assert!(check_node_placement(&ana, "n1", None, Some(&lab)).is_ok());
        assert!(check_node_placement(&ana, "n1", Some(&gpu), Some(&lab)).is_err());
        assert!(check_node_placement(&ana, "n1", Some(&lab), Some(&lab)).is_ok());
        assert!(check_node_placement(&bob, "n1", Some(&lab), None).is_err());
        assert!(check_node_placement(&root, "n1", Some(&gpu), Some(&lab)).is_ok());
        // Users make domains from templates at once; their own Dockerfiles
        // wait for an operator.
        use crate::domain::Review;
        assert_eq!(new_domain_review(&op, true), Review::Approved);
        assert_eq!(new_domain_review(&ana, false), Review::Approved);
        assert_eq!(new_domain_review(&ana, true), Review::Requested);
        assert!(check_review_domain(&op).is_ok() && check_review_domain(&ana).is_err());
        let t = |user: &str| ApiToken {
            id: "t1".into(),
            user: user.into(),
            label: String::new(),
            created_ms: 0,
        };
        assert!(ana.may_see_token(&t("ana")) && !ana.may_see_token(&t("bob")));
        assert!(root.may_see_token(&t("bob")));
    }

    #[test]
    fn rooms_are_open_to_their_users_admins_and_grid_admins() {
        let lab = room("lab", &["ana"], &["bob"]);
        assert!(p("bob", Role::User).may_use_room(&lab));
        assert!(p("ana", Role::User).may_use_room(&lab));
        assert!(p("root", Role::Admin).may_use_room(&lab));
        assert!(!p("eve", Role::Operator).may_use_room(&lab));
        assert!(p("eve", Role::User).may_use_room(&Room::general()));
    }

    #[test]
    fn moving_a_node_needs_admin_of_both_rooms() {
        let a = room("a", &["ana"], &[]);
        let b = room("b", &["bob"], &[]);
        assert!(p("ana", Role::User).may_place_node(None, &a));
        assert!(!p("ana", Role::User).may_place_node(Some(&b), &a));
        assert!(!p("bob", Role::User).may_place_node(Some(&b), &a));
        let both = room("c", &["ana"], &[]);
        assert!(p("ana", Role::User).may_place_node(Some(&both), &a));
        assert!(p("root", Role::Admin).may_place_node(Some(&b), &a));
    }

    #[test]
    fn requests_are_seen_by_owner_and_operators_and_cancelled_by_owner_and_admins() {
        assert!(p("bob", Role::User).may_see_request("bob"));
        assert!(!p("bob", Role::User).may_see_request("ana"));
        assert!(p("op", Role::Operator).may_see_request("ana"));
        assert!(!p("op", Role::Operator).may_cancel_request("ana"));
        assert!(p("root", Role::Admin).may_cancel_request("ana"));
    }

    #[test]
    fn request_rooms_must_exist_and_be_open() {
        let rooms = vec![Room::general(), room("lab", &["ana"], &[])];
        let bob = p("bob", Role::User);
        assert!(check_request_rooms(&bob, &["General".into()], &rooms).is_ok());
        assert!(matches!(
            check_request_rooms(&bob, &["lab".into()], &rooms),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            check_request_rooms(&bob, &["nope".into()], &rooms),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("user", "ana.silva@ufpe").is_ok());
        assert!(check_name("user", "a/b").is_err());
        assert!(check_name("user", "").is_err());
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
    }
}
