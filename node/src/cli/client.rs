//! The CLI's HTTP client for the local node's `/api/v1`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use pesc_protocol::api::ApiError;
use reqwest::{Method, RequestBuilder, Response};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Finds the node through `PESC_API` (host:port) or the `api.addr` of
    /// `data_dir`; authenticates with `PESC_TOKEN` or the node's
    /// `api-token`. A user with a token of their own on a desktop whose
    /// node is the service (its data dir is not theirs to read) names the
    /// address: never guessed, since whoever listens there would get the
    /// token.
    pub fn from_data_dir(data_dir: &Path) -> Result<Self> {
        let addr = match std::env::var("PESC_API") {
            Ok(a) if !a.trim().is_empty() => a,
            _ => std::fs::read_to_string(data_dir.join("api.addr")).with_context(|| {
                format!(
                    "no node has run with data dir {}: start one with `pesc node` (or pass --data-dir; for the desktop's service, set PESC_API=127.0.0.1:7372 and PESC_TOKEN)",
                    data_dir.display()
                )
            })?,
        };
        // A user's own token (from the Tokens page) acts as that user;
        // without one, the node's token acts as its admin.
        let token = match std::env::var("PESC_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t,
            _ => std::fs::read_to_string(data_dir.join("api-token")).with_context(|| {
                format!(
                    "cannot read the API token in {} (or set PESC_TOKEN to your own)",
                    data_dir.display()
                )
            })?,
        };
        Ok(Client {
            http: reqwest::Client::builder().no_proxy().build()?,
            base: format!("http://{}/api/v1", addr.trim()),
            token: token.trim().to_string(),
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends and turns API errors into their message.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "the node at {} does not answer: is `pesc node` running?",
                    self.base
                )
            } else {
                anyhow::anyhow!("talking to the node: {e}")
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("the node answered {status}: {text}"),
        }
    }

    pub async fn json<T: serde::de::DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        self.send(rb)
            .await?
            .json()
            .await
            .context("reading the node's answer")
    }
}
