//! Errors as a Lambda client sees them: an HTTP status, the `x-amzn-ErrorType` header and a JSON
//! body `{"Type": "User", "message": "..."}` (what boto3 and the aws CLI parse). Every domain
//! error becomes an [`ApiError`] here, and nowhere else.

use crate::agent::codezip::CodeError;
use crate::agent::functions;
use crate::agent::ids::RefError;
use crate::agent::images::ImageError;
use crate::agent::invoke;
use crate::agent::pool::PoolError;
use crate::agent::store::StoreError;
use crate::agent::triggers::schedule::ScheduleError;

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
    /// A throttle's `Reason`.
    pub reason: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), reason: None }
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

    /// 409 `ResourceConflictException`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "ResourceConflictException", message)
    }

    /// 404 `UnknownOperationException`: no such route.
    pub fn unknown_operation(message: impl Into<String>) -> Self {
        Self::new(404, "UnknownOperationException", message)
    }

    /// 413 `RequestTooLargeException`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestTooLargeException", message)
    }

    /// 400 `ValidationException` (EventBridge Scheduler's).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }

    /// 500 `ServiceException`: our fault, not the caller's.
    pub fn service(message: impl Into<String>) -> Self {
        Self::new(500, "ServiceException", message)
    }

    /// The JSON body Lambda sends with an error.
    pub fn body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({ "Type": "User", "message": self.message, "Message": self.message });
        if let Some(reason) = self.reason {
            body["Reason"] = reason.into();
        }
        serde_json::to_vec(&body).expect("error body serializes")
    }
}

impl From<CodeError> for ApiError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::Host { .. } | CodeError::Mkfs(_) => ApiError::service(e.to_string()),
            CodeError::ZippedTooLarge => ApiError::too_large(e.to_string()),
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Exists(m) | StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::RevisionMismatch => ApiError::new(412, "PreconditionFailedException", e.to_string()),
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::Code(e) => e.into(),
            StoreError::Locked(_)
            | StoreError::TooNew { .. }
            | StoreError::Migration { .. }
            | StoreError::Db(_)
            | StoreError::Io { .. } => ApiError::service(e.to_string()),
        }
    }
}

impl From<functions::Error> for ApiError {
    fn from(e: functions::Error) -> Self {
        match e {
            functions::Error::Invalid(m) => ApiError::invalid(m),
            functions::Error::NotFound(m) => ApiError::not_found(m),
            functions::Error::Conflict(m) => ApiError::conflict(m),
            functions::Error::NoProvisionedConfig => {
                ApiError::new(404, "ProvisionedConcurrencyConfigNotFoundException", e.to_string())
            }
            functions::Error::Store(e) => e.into(),
            functions::Error::Image(e) => e.into(),
            functions::Error::Internal(m) => ApiError::service(m),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(m) | ImageError::TooLarge(m) => ApiError::invalid(m),
            ImageError::NotFound(m) => {
                ApiError::invalid(format!("Source image does not exist. Provide a valid source image. ({m})"))
            }
            ImageError::Digest(m) | ImageError::Layer(m) => {
                ApiError::invalid(format!("The image could not be used: {m}"))
            }
            ImageError::Registry(m) => ApiError::service(format!("Pulling the image failed: {m}")),
            ImageError::Host(m) => ApiError::service(m),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Throttled(throttle) => ApiError {
                reason: Some(throttle.reason()),
                ..ApiError::new(429, "TooManyRequestsException", e.to_string())
            },
            PoolError::Host(_) | PoolError::Lost(_) => ApiError::service(e.to_string()),
        }
    }
}

impl From<invoke::Error> for ApiError {
    fn from(e: invoke::Error) -> Self {
        match e {
            invoke::Error::Store(e) => e.into(),
            invoke::Error::NotReady => ApiError::new(409, "SnapStartNotReadyException", e.to_string()),
            invoke::Error::Failed(_) => ApiError::conflict(e.to_string()),
            invoke::Error::Pool(e) => e.into(),
        }
    }
}

impl From<invoke::queue::QueueError> for ApiError {
    fn from(e: invoke::queue::QueueError) -> Self {
        match e {
            invoke::queue::QueueError::Store(_) => ApiError::service(e.to_string()),
        }
    }
}

impl From<invoke::destinations::DestinationError> for ApiError {
    fn from(e: invoke::destinations::DestinationError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Validation(m) => ApiError::validation(m),
            ScheduleError::NotFound(m) | ScheduleError::Store(StoreError::NotFound(m)) => ApiError::not_found(m),
            ScheduleError::Store(StoreError::Exists(m)) => ApiError::new(409, "ConflictException", m),
            ScheduleError::Store(StoreError::Invalid(m)) => ApiError::validation(m),
            other => ApiError::new(500, "InternalServerException", other.to_string()),
        }
    }
}

impl From<RefError> for ApiError {
    fn from(e: RefError) -> Self {
        match e {
            RefError::NoSuchFunction(_) => ApiError::not_found(e.to_string()),
            RefError::QualifierMismatch | RefError::Unsupported(_) => ApiError::invalid(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pool::concurrency::Throttle;

    #[test]
    fn domain_errors_get_lambda_s_types() {
        let e = ApiError::from(CodeError::NotZip);
        assert_eq!((e.status, e.kind), (400, "InvalidParameterValueException"));
        let e = ApiError::from(StoreError::RevisionMismatch);
        assert_eq!((e.status, e.kind), (412, "PreconditionFailedException"));
        let e = ApiError::from(PoolError::Throttled(Throttle::Reserved));
        assert_eq!((e.status, e.kind), (429, "TooManyRequestsException"));
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["Reason"], "ReservedFunctionConcurrentInvocationLimitExceeded");
        assert_eq!(body["message"], "Rate Exceeded.");
        let e = ApiError::from(invoke::Error::NotReady);
        assert_eq!((e.status, e.kind), (409, "SnapStartNotReadyException"));
        let e = ApiError::from(functions::Error::NoProvisionedConfig);
        assert_eq!((e.status, e.kind), (404, "ProvisionedConcurrencyConfigNotFoundException"));
        let e = ApiError::from(RefError::QualifierMismatch);
        assert_eq!(e.status, 400);
    }
}
