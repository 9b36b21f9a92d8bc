//! Who is calling: API tokens, session cookies, CSRF and password hashes.
//!
//! * `Authorization: Bearer TOKEN` (or `?token=` for downloads): the node's
//!   own token (file `api-token` in its data dir) acts as an admin named
//!   after the node's user; any other token is looked up, by its hash, among
//!   the users' API tokens in the grid document.
//! * The `pesc_session` cookie, signed with a key derived from the grid key
//!   (so it is good on every node of the grid) and bound to the user's
//!   password hash (changing the password ends old sessions). Calls that
//!   change something with a cookie must carry the session's CSRF token
//!   (`X-CSRF-Token` header, or the `csrf` field of a page's form).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use pesc_protocol::access::{Principal, User};
use pesc_protocol::join::{hex, unhex};

use crate::error::ApiFailure;
use crate::service::NodeService;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "pesc_session";
/// How long a session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// Failed logins allowed per user name in [`LOGIN_WINDOW`].
const LOGIN_FAILURES: usize = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Failed logins allowed per client address in [`LOGIN_WINDOW`].
const ADDRESS_FAILURES: usize = 30;
/// Names (and client addresses) whose failures are remembered at once. A
/// flood of junk names beyond this is not recorded per name (the limit per
/// address still counts it), and never clears what is recorded.
const MAX_TRACKED: usize = 10_000;
/// Longest user name a login may give (longer ones cost no hash).
pub const MAX_USER_NAME: usize = 64;
/// Argon2 hashes computed at once (each takes 19 MiB): a login flood waits
/// instead of exhausting memory.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The caller, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub who: Principal,
    /// The CSRF token of the caller's session (None for token calls).
    pub csrf: Option<String>,
}

/// What the HTTP layer keeps between calls.
pub struct AuthState {
    key: [u8; 32],
    /// Recent failed logins per user name, and per client address.
    failures: Mutex<[HashMap<String, Vec<Instant>>; 2]>,
    /// When a full table was last cleared of expired entries (at most once
    /// a second: a flood must not make every failure scan the table).
    purged: Mutex<Option<Instant>>,
}

impl AuthState {
    pub fn new(key: [u8; 32]) -> Self {
        AuthState {
            key,
            failures: Mutex::new([HashMap::new(), HashMap::new()]),
            purged: Mutex::new(None),
        }
    }

    fn mac(&self, context: &str, data: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(context.as_bytes());
        h.update(b"\0");
        h.update(data.as_bytes());
        h.finalize().to_hex()[..32].to_string()
    }

    /// A signed session value for `user`, good until `expires` (unix s).
    pub fn session_value(&self, user: &User, expires: u64) -> String {
        let body = format!(
            "{}~{expires}~{}",
            hex(user.name.as_bytes()),
            fingerprint(&user.password_hash)
        );
        let mac = self.mac("session", &body);
        format!("{body}~{mac}")
    }

    /// The user name in a session value whose signature holds and that has
    /// not expired, with the password fingerprint it was made for.
    fn open_session(&self, value: &str, now: u64) -> Option<(String, String)> {
        let (body, mac) = value.rsplit_once('~')?;
        if !constant_time_eq(self.mac("session", body).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let mut it = body.split('~');
        let name = String::from_utf8(unhex(it.next()?)?).ok()?;
        let expires: u64 = it.next()?.parse().ok()?;
        let fp = it.next()?.to_string();
        (expires > now).then_some((name, fp))
    }

    /// The CSRF token that goes with a session value.
    pub fn csrf_for(&self, session_value: &str) -> String {
        self.mac("csrf", session_value)
    }

    /// Refuses a login when this name, or the client's address, failed too
    /// often lately (an address may fail [`ADDRESS_FAILURES`] times).
    pub fn check_login_rate(&self, name: &str, client: Option<IpAddr>) -> Result<(), ApiFailure> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut check = |table: usize, key: String, limit: usize, what: &str| {
            let Some(list) = f[table].get_mut(&key) else {
                return Ok(());
            };
            list.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
            if list.len() >= limit {
                let wait = LOGIN_WINDOW.saturating_sub(now.duration_since(list[0]));
                return Err(ApiFailure::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many failed logins {what}: try again in {} s",
                        wait.as_secs() + 1
                    ),
                ));
            }
            Ok(())
        };
        check(
            0,
            name.to_string(),
            LOGIN_FAILURES,
            &format!("for '{name}'"),
        )?;
        if let Some(ip) = client {
            check(1, ip.to_string(), ADDRESS_FAILURES, "from your address")?;
        }
        Ok(())
    }

    /// Records a failed login of `name` from `client`.
    pub fn login_failed(&self, name: &str, client: Option<IpAddr>) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut keys = vec![(0, name.to_string())];
        if let Some(ip) = client {
            keys.push((1, ip.to_string()));
        }
        for (table, key) in keys {
            let t = &mut f[table];
            if !t.contains_key(&key) && t.len() >= MAX_TRACKED {
                // Make room from what has expired; never from live counts.
                let mut purged = self.purged.lock().unwrap_or_else(|e| e.into_inner());
                if purged.is_none_or(|p| now.duration_since(p) > Duration::from_secs(1)) {
                    *purged = Some(now);
                    t.retain(|_, l| {
                        l.last()
                            .is_some_and(|at| now.duration_since(*at) < LOGIN_WINDOW)
                    });
                }
                if t.len() >= MAX_TRACKED {
                    continue;
                }
            }
            let list = t.entry(key).or_default();
            list.push(now);
            // A list needs no more than the limit's worth of entries.
            if list.len() > ADDRESS_FAILURES {
                list.remove(0);
            }
        }
    }

    pub fn login_succeeded(&self, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f[0].remove(name);
    }
}

/// Both halves of the HTTP layer's state.
#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<dyn NodeService>,
    pub auth: Arc<AuthState>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fingerprint(password_hash: &str) -> String {
    blake3::hash(password_hash.as_bytes()).to_hex()[..12].to_string()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hash the grid keeps of an API token (also the token's id).
pub fn token_id(token: &str) -> String {
    hex(&blake3::derive_key("pesc api token v1", token.as_bytes()))
}

/// A new random API token.
pub fn new_token() -> String {
    let b: [u8; 24] = rand::random();
    format!("pesc_{}", hex(&b))
}

/// Argon2id hash of a password (PHC string); slow on purpose, so run it
/// off the async threads.
pub async fn hash_password(password: String) -> Result<String, ApiFailure> {
    let _permit = HASHING
        .acquire()
        .await
        .map_err(|e| ApiFailure::internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::random();
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| ApiFailure::internal(format!("making a salt: {e}")))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiFailure::internal(format!("hashing the password: {e}")))
    })
    .await
    .map_err(|e| ApiFailure::internal(e.to_string()))?
}

pub async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}

/// The `Set-Cookie` value that starts a session (or ends it, with "").
pub fn session_cookie(value: &str) -> String {
    let max_age = if value.is_empty() { 0 } else { SESSION_SECS };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Who calls, from a token or a session cookie; None when neither holds.
pub async fn caller(st: &AppState, headers: &HeaderMap, query: Option<&str>) -> Option<Caller> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
    });
    if let Some(token) = from_header.or(from_query).filter(|t| !t.is_empty()) {
        if constant_time_eq(token.as_bytes(), st.svc.api_token().as_bytes()) {
            return Some(Caller {
                who: Principal {
                    user: st.svc.node_owner().to_string(),
                    role: pesc_protocol::access::Role::Admin,
                },
                csrf: None,
            });
        }
        let t = st.svc.token(&token_id(&token)).await.ok()??;
        let u = st.svc.user(&t.user).await.ok()??;
        if !u.accepts(&t) {
            return None;
        }
        return Some(Caller {
            who: Principal {
                user: u.name,
                role: u.role,
            },
            csrf: None,
        });
    }
    let value = cookie(headers, SESSION_COOKIE)?;
    let (name, fp) = st.auth.open_session(&value, unix_now())?;
    let u = st.svc.user(&name).await.ok()??;
    if u.disabled || fingerprint(&u.password_hash) != fp {
        return None;
    }
    Some(Caller {
        who: Principal {
            user: u.name,
            role: u.role,
        },
        csrf: Some(st.auth.csrf_for(&value)),
    })
}

/// Whether a method changes something (and so needs CSRF proof with a cookie).
pub fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `/api/v1` guard: 401 without a caller; 403 for a cookie call that
/// changes something without the session's CSRF token.
pub(crate) async fn authenticate(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiFailure> {
    let Some(c) = caller(&st, req.headers(), req.uri().query()).await else {
        return Err(ApiFailure::unauthorized(
            "log in first (POST /api/v1/login), or send 'Authorization: Bearer TOKEN' with an API token (yours from the Tokens page, or the node's, in its data dir, file api-token)",
        ));
    };
    if let Some(expected) = &c.csrf
        && is_unsafe(req.method())
    {
        let given = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiFailure::forbidden(
                "missing or wrong CSRF token: with a session cookie, send the X-CSRF-Token header (GET /api/v1/me gives it)",
            ));
        }
    }
    req.extensions_mut().insert(c);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_junk_names_never_clears_a_targeted_names_count() {
        let a = AuthState::new([0; 32]);
        for _ in 0..LOGIN_FAILURES {
            a.login_failed("alice", None);
        }
        assert!(a.check_login_rate("alice", None).is_err());
        for i in 0..2 * MAX_TRACKED {
            a.login_failed(&format!("junk{i}"), None);
        }
        assert!(
            a.check_login_rate("alice", None).is_err(),
            "the limit on alice still holds"
        );
        // One address failing with ever new names is stopped too, even
        // with the name table full.
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..ADDRESS_FAILURES {
            a.login_failed(&format!("new{i}"), Some(ip));
        }
        assert!(a.check_login_rate("someone-else", Some(ip)).is_err());
        assert!(a.check_login_rate("someone-else", None).is_ok());
    }
}
