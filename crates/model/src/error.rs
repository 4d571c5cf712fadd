//! The error shape every failing event answers with (SPEC §7).

use std::borrow::Cow;

use serde::Serialize;

/// SPEC §7 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Unauthenticated,
    Forbidden,
    InvalidPayload,
    NotInRoom,
    NotFound,
    RateLimited,
    PayloadTooLarge,
    UserOffline,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::InvalidPayload => "INVALID_PAYLOAD",
            Code::NotInRoom => "NOT_IN_ROOM",
            Code::NotFound => "NOT_FOUND",
            Code::RateLimited => "RATE_LIMITED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::UserOffline => "USER_OFFLINE",
            Code::Internal => "INTERNAL",
        }
    }
}

/// A failed event: `{success:false, error, code}` as an ack, or an `error` event without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: Cow<'static, str>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn unauthenticated() -> Self {
        Self::new(Code::Unauthenticated, "Authentication required")
    }
    pub fn forbidden(message: &'static str) -> Self {
        Self::new(Code::Forbidden, message)
    }
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Code::InvalidPayload, message)
    }
    pub fn not_found(message: &'static str) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn internal() -> Self {
        Self::new(Code::Internal, "Internal error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// The ack body of a failure.
#[derive(Serialize)]
pub struct AckError<'a> {
    pub success: bool,
    pub error: &'a str,
    pub code: Code,
}

/// The `error` event body, for a failing event sent without an ack.
#[derive(Serialize)]
pub struct ErrorEvent<'a> {
    pub event: &'a str,
    pub error: &'a str,
    pub code: Code,
}

pub type HandlerResult = Result<serde_json::Value, ApiError>;
