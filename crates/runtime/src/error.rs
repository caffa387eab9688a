use msb_contract::ErrorCode;

/// An error with the code the SDK maps to a typed error class.
#[derive(Debug)]
pub struct RtError {
    pub code: ErrorCode,
    pub message: String,
}

impl RtError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RtError {
            code,
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Runtime, message)
    }
}

impl std::fmt::Display for RtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<std::io::Error> for RtError {
    fn from(e: std::io::Error) -> Self {
        RtError::runtime(e.to_string())
    }
}
