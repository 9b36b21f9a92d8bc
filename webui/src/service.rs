//! The interface between the HTTP layer and the node.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use pesc_protocol::access::{AccessChange, AccessState, ApiToken, User};
use pesc_protocol::api::{
    GridNode, NewDomain, NewRequest, NodeInfo, RequestInfo, SharedFileInfo, TemplateInfo,
    UploadFile, UploadProcess,
};
use pesc_protocol::domain::Domain;
use pesc_protocol::model::Process;

use crate::error::ApiFailure;

/// A stream of bytes (an upload body, or log output).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Which log of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A results archive ready to send; the file is unlinked once opened.
pub struct ResultsFile {
    pub file: tokio::fs::File,
    pub len: u64,
    pub name: String,
}

/// What the node offers the API. Ids may be given as unique prefixes.
#[async_trait::async_trait]
pub trait NodeService: Send + Sync + 'static {
    /// The node's own API token (file `api-token`): acts as an admin.
    fn api_token(&self) -> &str;
    /// The one-time code of the setup link the node printed at start
    /// (random, this run only; good until the grid has its first admin).
    fn setup_code(&self) -> &str;
    /// The user name the node's own token acts as.
    fn node_owner(&self) -> &str;
    /// Key that signs session cookies: the same on every node of the grid.
    fn session_key(&self) -> [u8; 32];
    /// The token that adds a desktop to this grid (`pesc node --join …`).
    fn join_token(&self) -> String;
    /// Host names (besides 127.0.0.1, localhost and [::1]) that browsers
    /// may use for this node (`api_hosts` in node.toml).
    fn allowed_hosts(&self) -> Vec<String> {
        Vec::new()
    }
    async fn user(&self, name: &str) -> Result<Option<User>, ApiFailure>;
    /// An API token by its id (the hash of the token).
    async fn token(&self, id: &str) -> Result<Option<ApiToken>, ApiFailure>;
    /// Users, tokens, rooms and room placements.
    async fn access(&self) -> Result<AccessState, ApiFailure>;
    async fn change_access(&self, change: AccessChange) -> Result<(), ApiFailure>;
    async fn node_info(&self) -> Result<NodeInfo, ApiFailure>;
    /// Every node of the grid with its live state.
    async fn nodes(&self) -> Result<Vec<GridNode>, ApiFailure>;
    /// Stores a process uploaded by `owner` (streamed).
    async fn upload_process(
        &self,
        meta: UploadProcess,
        body: ByteStream,
        owner: &str,
    ) -> Result<Process, ApiFailure>;
    async fn list_processes(&self) -> Result<Vec<Process>, ApiFailure>;
    /// Stores a shared file (streamed) under a name runs will see.
    async fn upload_file(
        &self,
        meta: UploadFile,
        body: ByteStream,
        owner: &str,
    ) -> Result<SharedFileInfo, ApiFailure>;
    async fn list_files(&self) -> Result<Vec<SharedFileInfo>, ApiFailure>;
    /// Makes the answering node keep a copy of a shared file (fetching it
    /// from the nodes that have it).
    async fn fetch_file(&self, name: &str) -> Result<SharedFileInfo, ApiFailure>;
    /// Makes (or replaces) a domain, checked.
    async fn create_domain(
        &self,
        d: NewDomain,
        owner: &str,
        review: pesc_protocol::domain::Review,
    ) -> Result<Domain, ApiFailure>;
    /// Records an operator's answer to a domain request.
    async fn review_domain(
        &self,
        name: &str,
        review: pesc_protocol::domain::Review,
        rooms: Vec<String>,
    ) -> Result<Domain, ApiFailure>;
    async fn list_domains(&self) -> Result<Vec<Domain>, ApiFailure>;
    async fn get_domain(&self, name: &str) -> Result<Domain, ApiFailure>;
    async fn templates(&self) -> Result<Vec<TemplateInfo>, ApiFailure>;
    /// Makes a request for `owner` (rooms were checked already).
    async fn create_request(&self, req: NewRequest, owner: &str)
    -> Result<RequestInfo, ApiFailure>;
    /// Requests, newest first: `owner`'s only when given, `limit` of them
    /// after `offset`.
    async fn list_requests(
        &self,
        owner: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<RequestInfo>, ApiFailure>;
    /// One request. With `since_version`, waits up to `timeout_ms` until its
    /// version is newer or it is finished (a long poll).
    async fn get_request(
        &self,
        id: &str,
        with_runs: bool,
        since_version: Option<u64>,
        timeout_ms: u64,
    ) -> Result<RequestInfo, ApiFailure>;
    async fn cancel_request(&self, id: &str) -> Result<RequestInfo, ApiFailure>;
    /// A run's log; with `follow`, the stream stays open until the run ends.
    async fn logs(
        &self,
        id: &str,
        rank: u32,
        stream: LogStream,
        follow: bool,
    ) -> Result<ByteStream, ApiFailure>;
    async fn results(&self, id: &str) -> Result<ResultsFile, ApiFailure>;
    /// A finished request's receipt (`pesc_protocol::receipt`).
    async fn receipt(&self, id: &str) -> Result<pesc_protocol::receipt::Receipt, ApiFailure>;
    /// Submits request `id` again, exactly, for `owner` (its owner).
    async fn rerun(
        &self,
        id: &str,
        who: &pesc_protocol::access::Principal,
    ) -> Result<RequestInfo, ApiFailure>;
    /// `/api/v1/events`: server-sent events, one per request change after
    /// version `since` (and every one after, as they happen).
    /// With `owner`, only that user's requests.
    async fn events(&self, since: u64, owner: Option<String>) -> Result<ByteStream, ApiFailure>;
    /// `/metrics`: Prometheus text exposition.
    async fn metrics(&self) -> Result<String, ApiFailure>;
}
