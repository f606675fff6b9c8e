//! Errors as a Lambda client sees them: an HTTP status, the `x-amzn-ErrorType` header and a JSON
//! body `{"Type": "User", "message": "..."}` (what boto3 and the aws CLI parse).

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// Lambda's error type, e.g. `ResourceNotFoundException`.
    pub kind: &'static str,
    /// What went wrong, for a human.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into() }
    }

    /// 400 `InvalidParameterValueException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidParameterValueException", message)
    }

    /// 400 `InvalidRequestContentException`: a body that is not the JSON the call expects.
    pub fn bad_content(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequestContentException", message)
    }

    /// 404 `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }

    /// 404 `ProvisionedConcurrencyConfigNotFoundException`.
    pub fn no_provisioned_config() -> Self {
        Self::new(
            404,
            "ProvisionedConcurrencyConfigNotFoundException",
            "No Provisioned Concurrency Config found for this function",
        )
    }

    /// 409 `ResourceConflictException`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "ResourceConflictException", message)
    }

    /// 404 `UnknownOperationException`: no such route.
    pub fn unknown_operation(message: impl Into<String>) -> Self {
        Self::new(404, "UnknownOperationException", message)
    }

    /// 412 `PreconditionFailedException`: the `RevisionId` given is not the current one.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(412, "PreconditionFailedException", message)
    }

    /// 413 `RequestTooLargeException`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestTooLargeException", message)
    }

    /// 429 `TooManyRequestsException`.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequestsException", message)
    }

    /// 500 `ServiceException`: our fault, not the caller's.
    pub fn service(message: impl Into<String>) -> Self {
        Self::new(500, "ServiceException", message)
    }

    /// The JSON body Lambda sends with an error.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "Type": "User", "message": self.message, "Message": self.message }))
            .expect("error body serializes")
    }
}
