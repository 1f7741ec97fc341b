//! What can go wrong in an operation, in the domain's words. No HTTP here: each API surface
//! maps these onto its own error shape (the v1 API in `error.rs`: a status code and
//! `{"error": {"code", "message"}}`; the compat APIs to come, their systems' shapes).

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("missing or malformed bearer token")]
    Unauthenticated,
    /// A well-formed token this server does not take: unknown, expired, revoked, its user
    /// gone. Says which, so a person knows to log in again.
    #[error("the token {0}; log in again or ask for a new one")]
    TokenRefused(&'static str),
    #[error("unknown user or wrong password")]
    BadLogin,
    #[error("too many failed attempts; try again in {0} s")]
    TooManyRequests(u64),
    #[error("this token may not {0}")]
    Forbidden(&'static str),
    /// A refusal whose reason names the object (grants, policies).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit of {0} bytes (the server's --body-limit)")]
    TooLarge(usize),
    #[error(
        "the request body did not arrive within {} s of its headers (the server's --body-timeout)",
        .0.as_secs_f64()
    )]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Internal(String),
    /// Too many requests from one client (anonymous deploys); try again in N s.
    #[error("too many requests from this client; try again in {0} s")]
    RateLimited(u64),
}
