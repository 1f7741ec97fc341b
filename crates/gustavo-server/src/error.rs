//! The v1 API's error shape: a real status code and `{"error": {"code", "message"}}`, never
//! a 200 with a message in it (Samsung's mistake). The errors themselves are the operations
//! layer's [`OpError`]; this module is how the v1 surface shows them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gustavo_model::api::{ErrorBody, ErrorDetail};

pub use crate::ops::OpError;

/// The v1 handlers' name for the operations layer's error.
pub type ApiError = OpError;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidSpec(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated | ApiError::TokenRefused(_) | ApiError::BadLogin => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::TooManyRequests(_) | ApiError::RateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Forbidden(_) | ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidSpec(_) => "invalid_spec",
            ApiError::Unauthenticated | ApiError::TokenRefused(_) | ApiError::BadLogin => {
                "unauthenticated"
            }
            ApiError::TooManyRequests(_) | ApiError::RateLimited(_) => "rate_limited",
            ApiError::Forbidden(_) | ApiError::Denied(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::BodyTimeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        };
        let note = crate::audit::ErrorNote(format!("{}: {}", body.error.code, body.error.message));
        let mut resp = (self.status(), axum::Json(body)).into_response();
        resp.extensions_mut().insert(note);
        if let ApiError::TooManyRequests(s) | ApiError::RateLimited(s) = self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        if matches!(self, ApiError::Unauthenticated | ApiError::TokenRefused(_)) {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
