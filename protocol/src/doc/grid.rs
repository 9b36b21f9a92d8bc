//! The grid document: rooms, processes, the index of requests, and nodes.

use automerge::{ActorId, AutoCommit, ObjId, ROOT, transaction::CommitOptions};
use serde::{Deserialize, Serialize};

use super::SCHEMA;
use super::fields::*;
use crate::access::{ApiToken, User};
use crate::error::{Error, Result};
use crate::ids::{BlobHash, NodeId, ProcessId, RequestId};
use crate::model::{Process, Room, SharedFile};

/// What the grid document says about a request, so every node finds its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIndex {
    pub id: RequestId,
    pub owner: String,
    pub process: ProcessId,
    pub repetitions: u32,
    pub created_ms: u64,
}

/// A node as the grid remembers it (live load travels by gossip, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    pub slots: u32,
    pub executor: String,
    /// How it walls runs in (`containers`, `sandbox (…)`, `none`).
    #[serde(default)]
    pub isolation: String,
    /// Where the node listened when it last started (multiaddrs), so peers
    /// that know the grid can find it again without mDNS.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// The grid document.
pub struct GridDoc {
    doc: AutoCommit,
    /// The genesis maps, by name (in [`MAPS`] order), found once: by their
    /// object ids, never again through the root's keys, so a peer that
    /// overwrites `users` at the root hides nothing from this node.
    maps: Vec<ObjId>,
    /// Entries that failed their checks when read (see [`super::checked`]).
    skipped: super::Skipped,
}

/// `files`: shared files by name; `holders`: `HASH.NODE` for every node that
/// keeps a whole copy of a shared file (each node writes only its own keys);
/// `domains`: execution environments by name.
/// `users`: accounts by name; `tokens`: API tokens by the hash of the
/// token; `placements`: the named room each node was put in by a room admin.
const MAPS: [&str; 10] = [
    "rooms",
    "processes",
    "requests",
    "nodes",
    "files",
    "holders",
    "domains",
    "users",
    "tokens",
    "placements",
];

impl GridDoc {
    /// The grid's first state, with the public General room. Every node
    /// builds byte-identical genesis changes from the grid id (fixed actor,
    /// time 0), so replicas that started apart merge into one document
    /// instead of hiding each other's top-level maps.
    pub fn genesis(grid_id: &str, actor: ActorId) -> Result<Self> {
        let genesis_actor =
            ActorId::from(blake3::hash(grid_id.as_bytes()).as_bytes()[..16].to_vec());
        let mut doc = AutoCommit::new().with_actor(genesis_actor);
        doc_put_header(&mut doc)?;
        {
            use automerge::transaction::Transactable;
            doc.put(ROOT, "grid", grid_id)?;
        }
        let maps = MAPS
            .iter()
            .map(|m| map(&doc, &ROOT, m))
            .collect::<Result<_>>()?;
        let mut g = GridDoc {
            doc,
            maps,
            skipped: Default::default(),
        };
        g.put_room(&Room::general())?;
        g.doc.commit_with(CommitOptions::default().with_time(0));
        g.doc.set_actor(actor);
        Ok(g)
    }

    /// Loads a saved grid document of grid `grid_id`: its maps are the
    /// ones its genesis made (whatever its root's keys say now).
    pub fn load_for(grid_id: &str, bytes: &[u8], actor: ActorId) -> Result<Self> {
        let doc = AutoCommit::load(bytes)?.with_actor(actor);
        Self::with_genesis_maps(grid_id, doc)
    }

    /// Rebuilds the document from one full save of itself. Built from
    /// many small changes (chunks read at start, a merge or commit per
    /// batch) automerge's in-memory form grows many times larger than the
    /// same document loaded whole: 16 MB against 1 MB for an index of
    /// 3 000 requests. Only memory changes. The rebuilt document takes
    /// nothing as saved: its next save must be a full one.
    pub fn compact(&mut self) -> Result<()> {
        let grid = self
            .grid_id()?
            .ok_or_else(|| Error::document("not a grid document"))?;
        let actor = self.doc.get_actor().clone();
        let doc = AutoCommit::load(&self.doc.save())?.with_actor(actor);
        let skipped = std::mem::take(&mut self.skipped);
        *self = Self::with_genesis_maps(&grid, doc)?;
        self.skipped = skipped;
        Ok(())
    }

    /// A loaded document with its genesis maps found by id.
    fn with_genesis_maps(grid_id: &str, doc: AutoCommit) -> Result<Self> {
        let genesis = GridDoc::genesis(grid_id, ActorId::random())?;
        let maps = genesis
            .maps
            .iter()
            .zip(MAPS)
            .map(|(id, name)| match doc.import(&id.to_string()) {
                Ok((id, automerge::ObjType::Map)) => Ok(id),
                _ => Err(Error::document(format!(
                    "the document lacks grid {grid_id}'s '{name}' (another grid's?)"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(GridDoc {
            doc,
            maps,
            skipped: Default::default(),
        })
    }

    /// Loads a saved grid document of the grid its root names.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self> {
        let doc = AutoCommit::load(bytes)?;
        let grid =
            get_str(&doc, &ROOT, "grid")?.ok_or_else(|| Error::document("not a grid document"))?;
        Self::load_for(&grid, bytes, actor)
    }

    /// Every well-formed entry of map `name` (the others are skipped and
    /// recorded).
    fn entries<T: serde::de::DeserializeOwned + super::Checked>(
        &self,
        name: &str,
    ) -> Result<Vec<(String, T)>> {
        Ok(json_entries(
            &self.doc,
            &self.obj(name)?,
            name,
            &self.skipped,
        ))
    }

    /// The entry `key` of map `name`; `None` when absent or malformed (then
    /// recorded).
    fn one<T: serde::de::DeserializeOwned + super::Checked>(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<T>> {
        let Some(text) = get_str(&self.doc, &self.obj(name)?, key).unwrap_or(None) else {
            return Ok(None);
        };
        match parse_checked(key, &text) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.skipped.record(format!("{name}/{key}"), e.to_string());
                Ok(None)
            }
        }
    }

    /// Entries skipped so far because they failed their checks.
    pub fn skipped(&self) -> &super::Skipped {
        &self.skipped
    }

    fn obj(&self, name: &str) -> Result<ObjId> {
        MAPS.iter()
            .position(|m| *m == name)
            .and_then(|i| self.maps.get(i).cloned())
            .ok_or_else(|| Error::document(format!("no map '{name}'")))
    }

    pub fn put_room(&mut self, room: &Room) -> Result<()> {
        let o = self.obj("rooms")?;
        put_json(&mut self.doc, &o, &room.name, room)
    }

    /// Every room: its record, with its members as the per-key entries
    /// say (`ROOM/admins/USER`, `ROOM/users/USER` → "1" present, "0"
    /// removed: concurrent edits of different members both stay; one
    /// member's concurrent add and remove keep the last writer's).
    pub fn rooms(&self) -> Result<Vec<Room>> {
        use automerge::{ReadDoc, ScalarValueRef, ValueRef};
        let o = self.obj("rooms")?;
        let mut rooms: std::collections::BTreeMap<String, Room> = Default::default();
        let mut members = Vec::new();
        for item in self.doc.map_range(&o, ..) {
            let key = item.key.to_string();
            let text = match item.value {
                ValueRef::Scalar(ScalarValueRef::Str(t)) => t.to_string(),
                _ => {
                    self.skipped
                        .record(format!("rooms/{key}"), "not a string".into());
                    continue;
                }
            };
            if key.contains('/') {
                members.push((key, text));
                continue;
            }
            match parse_checked::<Room>(&key, &text) {
                Ok(r) => {
                    rooms.insert(key, r);
                }
                Err(e) => self.skipped.record(format!("rooms/{key}"), e.to_string()),
            }
        }
        for (key, value) in members {
            let mut parts = key.splitn(3, '/');
            let (Some(room), Some(list), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Err(e) = crate::access::check_name("user", user) {
                // Written by a peer: a name no user could have is skipped.
                self.skipped.record(format!("rooms/{key}"), e.to_string());
                continue;
            }
            let Some(r) = rooms.get_mut(room) else {
                // Members of a room not (yet) here: kept until it arrives.
                continue;
            };
            let v = match list {
                "admins" => &mut r.admins,
                "users" => &mut r.users,
                _ => {
                    self.skipped
                        .record(format!("rooms/{key}"), "not a member list".into());
                    continue;
                }
            };
            match value.as_str() {
                "1" if !v.iter().any(|u| u == user) => v.push(user.to_string()),
                "0" => v.retain(|u| u != user),
                "1" => {}
                _ => self
                    .skipped
                    .record(format!("rooms/{key}"), "a member is \"1\" or \"0\"".into()),
            }
        }
        Ok(rooms.into_values().collect())
    }

    /// Adds a user to a room's admins or users, or takes them out, by its
    /// own key: a set that merges edit by edit.
    pub fn set_room_member(
        &mut self,
        room: &str,
        list: crate::access::RoomList,
        user: &str,
        present: bool,
    ) -> Result<()> {
        use automerge::transaction::Transactable;
        crate::access::check_name("room", room)?;
        crate::access::check_name("user", user)?;
        let o = self.obj("rooms")?;
        let key = format!("{room}/{}/{user}", list.as_str());
        self.doc.put(&o, key, if present { "1" } else { "0" })?;
        Ok(())
    }

    pub fn put_process(&mut self, p: &Process) -> Result<()> {
        let o = self.obj("processes")?;
        put_json(&mut self.doc, &o, p.id.as_str(), p)
    }

    pub fn process(&self, id: &ProcessId) -> Result<Option<Process>> {
        self.one("processes", id.as_str())
    }

    pub fn processes(&self) -> Result<Vec<Process>> {
        Ok(self
            .entries("processes")?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    pub fn put_request(&mut self, r: &RequestIndex) -> Result<()> {
        let o = self.obj("requests")?;
        put_json(&mut self.doc, &o, r.id.as_str(), r)
    }

    pub fn requests(&self) -> Result<Vec<RequestIndex>> {
        let mut v: Vec<RequestIndex> = self
            .entries("requests")?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    pub fn put_node(&mut self, n: &NodeRecord) -> Result<()> {
        let o = self.obj("nodes")?;
        put_json(&mut self.doc, &o, n.id.as_str(), n)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(self.entries("nodes")?.into_iter().map(|(_, n)| n).collect())
    }

    pub fn put_domain(&mut self, d: &crate::domain::Domain) -> Result<()> {
        let o = self.obj("domains")?;
        put_json(&mut self.doc, &o, &d.name, d)
    }

    pub fn domain(&self, name: &str) -> Result<Option<crate::domain::Domain>> {
        self.one("domains", name)
    }

    pub fn domains(&self) -> Result<Vec<crate::domain::Domain>> {
        Ok(self
            .entries("domains")?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    pub fn put_file(&mut self, f: &SharedFile) -> Result<()> {
        let o = self.obj("files")?;
        put_json(&mut self.doc, &o, &f.name, f)
    }

    pub fn file(&self, name: &str) -> Result<Option<SharedFile>> {
        self.one("files", name)
    }

    pub fn files(&self) -> Result<Vec<SharedFile>> {
        Ok(self.entries("files")?.into_iter().map(|(_, f)| f).collect())
    }

    /// Records that `node` keeps a whole copy of blob `h` (or no longer does).
    pub fn set_holder(&mut self, h: &BlobHash, node: &NodeId, holds: bool) -> Result<()> {
        use automerge::transaction::Transactable;
        let o = self.obj("holders")?;
        let key = format!("{}.{}", h.to_hex(), node);
        let now = get_scalar(&self.doc, &o, &key)?.is_some();
        match (holds, now) {
            (true, false) => self.doc.put(&o, key, true)?,
            (false, true) => self.doc.delete(&o, key)?,
            _ => {}
        }
        Ok(())
    }

    /// The nodes that keep a whole copy of blob `h`.
    pub fn holders(&self, h: &BlobHash) -> Result<Vec<NodeId>> {
        use automerge::ReadDoc;
        let o = self.obj("holders")?;
        let prefix = format!("{}.", h.to_hex());
        Ok(self
            .doc
            .map_range(&o, prefix.clone()..)
            .take_while(|item| item.key.starts_with(&prefix))
            .map(|item| NodeId::new(&item.key[prefix.len()..]))
            .collect())
    }

    pub fn put_user(&mut self, u: &User) -> Result<()> {
        let o = self.obj("users")?;
        put_json(&mut self.doc, &o, &u.name, u)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.one("users", name)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        Ok(self.entries("users")?.into_iter().map(|(_, u)| u).collect())
    }

    pub fn put_token(&mut self, t: &ApiToken) -> Result<()> {
        let o = self.obj("tokens")?;
        put_json(&mut self.doc, &o, &t.id, t)
    }

    pub fn token(&self, id: &str) -> Result<Option<ApiToken>> {
        self.one("tokens", id)
    }

    pub fn tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(self
            .entries("tokens")?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub fn remove_token(&mut self, id: &str) -> Result<bool> {
        self.remove("tokens", id)
    }

    /// Puts a node in a named room (or takes it out with None); `general`:
    /// it also stays in General (kept as `NODE/general` → "1" in the same
    /// map, last writer wins per key like the placement itself).
    pub fn place_node(&mut self, node: &NodeId, room: Option<&str>, general: bool) -> Result<()> {
        use automerge::transaction::Transactable;
        let o = self.obj("placements")?;
        let flag = format!("{node}/general");
        match room {
            Some(r) => {
                self.doc.put(&o, node.as_str(), r)?;
                if general {
                    self.doc.put(&o, flag.as_str(), "1")?;
                } else {
                    self.remove("placements", &flag)?;
                }
            }
            None => {
                self.remove("placements", node.as_str())?;
                self.remove("placements", &flag)?;
            }
        }
        Ok(())
    }

    /// Whether a node serves General: unless a room admin put it in a
    /// named room without leaving it in General too.
    pub fn in_general(&self, node: &NodeId) -> Result<bool> {
        if self.placement(node)?.is_none() {
            return Ok(true);
        }
        let flag = format!("{node}/general");
        Ok(get_str(&self.doc, &self.obj("placements")?, &flag)?.as_deref() == Some("1"))
    }

    /// Sets (or with `None` clears) a setting of a node
    /// (`crate::node_settings`), kept as `NODE/setting/KEY` in the
    /// placements map: what admins decided about each node, in one place.
    pub fn set_node_setting(
        &mut self,
        node: &NodeId,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        use automerge::transaction::Transactable;
        let o = self.obj("placements")?;
        let k = format!("{node}/setting/{key}");
        match value {
            Some(v) => self.doc.put(&o, k.as_str(), v)?,
            None => {
                self.remove("placements", &k)?;
            }
        }
        Ok(())
    }

    /// The settings admins gave a node: (key, value), by key.
    pub fn node_settings(&self, node: &NodeId) -> Result<Vec<(String, String)>> {
        use automerge::ReadDoc;
        let o = self.obj("placements")?;
        let prefix = format!("{node}/setting/");
        Ok(self
            .doc
            .map_range(&o, prefix.clone()..)
            .take_while(|item| item.key.starts_with(&prefix))
            .filter_map(|item| match item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(v)) => Some((
                    item.key[prefix.len()..].to_string(),
                    v.chars().take(64).collect(),
                )),
                _ => None,
            })
            .take(crate::node_settings::KEYS.len() * 2)
            .collect())
    }

    /// The named room a node was put in, if any.
    pub fn placement(&self, node: &NodeId) -> Result<Option<String>> {
        get_str(&self.doc, &self.obj("placements")?, node.as_str())
    }

    /// Every node put in a named room.
    pub fn placements(&self) -> Result<Vec<(NodeId, String)>> {
        use automerge::ReadDoc;
        let o = self.obj("placements")?;
        Ok(self
            .doc
            .map_range(&o, ..)
            // `NODE/general` flags are not placements.
            .filter(|item| !item.key.contains('/'))
            .filter_map(|item| match item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(r)) => {
                    Some((NodeId::new(item.key.as_ref()), r.to_string()))
                }
                _ => None,
            })
            .collect())
    }

    /// The access part of the document.
    pub fn access(&self) -> Result<crate::access::AccessState> {
        Ok(crate::access::AccessState {
            users: self.users()?,
            tokens: self.tokens()?,
            rooms: self.rooms()?,
            placements: self.placements()?,
            in_general: self
                .placements()?
                .into_iter()
                .filter(|(n, _)| self.in_general(n).unwrap_or(true))
                .map(|(n, _)| n)
                .collect(),
            min_isolation: self.min_isolation(),
            node_settings: self.all_node_settings()?,
        })
    }

    /// Every node's settings: (node, key, value).
    pub fn all_node_settings(&self) -> Result<Vec<(NodeId, String, String)>> {
        use automerge::ReadDoc;
        let o = self.obj("placements")?;
        Ok(self
            .doc
            .map_range(&o, ..)
            .filter_map(|item| {
                let (node, key) = item.key.split_once("/setting/")?;
                match item.value {
                    automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(v)) => Some((
                        NodeId::new(node),
                        key.to_string(),
                        v.chars().take(64).collect(),
                    )),
                    _ => None,
                }
            })
            .collect())
    }

    /// Applies a change to the access part.
    pub fn change_access(&mut self, c: &crate::access::AccessChange) -> Result<()> {
        use crate::access::AccessChange::*;
        match c {
            PutUser(u) => self.put_user(u),
            PutToken(t) => self.put_token(t),
            RemoveToken(id) => self.remove_token(id).map(|_| ()),
            RemoveUser(name) => self.remove("users", name).map(|_| ()),
            PutRoom(r) => self.put_room(r),
            RoomMember {
                room,
                list,
                user,
                present,
            } => self.set_room_member(room, *list, user, *present),
            PlaceNode(n, r, general) => self.place_node(n, r.as_deref(), *general),
            SetMinIsolation(l) => self.set_min_isolation(*l),
            NodeSetting { node, key, value } => {
                crate::node_settings::check_change(key, value.as_deref())
                    .map_err(Error::invalid)?;
                self.set_node_setting(node, key, value.as_deref())
            }
        }
    }

    /// The grid's minimum isolation level (`sandbox` when never set; a
    /// value this version cannot read counts as `sandbox` too, never as
    /// less). Merge law: last writer wins (one register at the root).
    pub fn min_isolation(&self) -> crate::isolation::IsolationLevel {
        get_str(&self.doc, &ROOT, "min_isolation")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }

    pub fn set_min_isolation(&mut self, l: crate::isolation::IsolationLevel) -> Result<()> {
        use automerge::transaction::Transactable;
        self.doc.put(ROOT, "min_isolation", l.as_str())?;
        Ok(())
    }

    fn remove(&mut self, map: &str, key: &str) -> Result<bool> {
        use automerge::transaction::Transactable;
        let o = self.obj(map)?;
        if get_scalar(&self.doc, &o, key)?.is_none() {
            return Ok(false);
        }
        self.doc.delete(&o, key)?;
        Ok(true)
    }

    /// The grid id written at genesis (None for documents older than it).
    pub fn grid_id(&self) -> Result<Option<String>> {
        get_str(&self.doc, &ROOT, "grid")
    }

    /// The record of one node.
    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>> {
        self.one("nodes", id.as_str())
    }

    pub fn commit(&mut self) -> bool {
        self.doc.commit().is_some()
    }
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }
    pub fn merge(&mut self, other: &mut GridDoc) -> Result<()> {
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }
}

fn doc_put_header(doc: &mut AutoCommit) -> Result<()> {
    use automerge::{ObjType, transaction::Transactable};
    doc.put(ROOT, "schema", SCHEMA)?;
    doc.put(ROOT, "kind", "grid")?;
    for m in MAPS {
        doc.put_object(ROOT, m, ObjType::Map)?;
    }
    Ok(())
}
