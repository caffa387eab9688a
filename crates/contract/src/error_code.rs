//! The error codes of the native side (addon and msb-runtime). An addon error's message
//! is `"<code>: <text>"`; the SDK maps each code to its typed error class, and the
//! generated `ErrorCode` union makes that map exhaustive at compile time.

use serde::Serialize;
use ts_rs::TS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, TS)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// A configuration field is not acceptable (the text starts with the field).
    InvalidConfig,
    SandboxNotFound,
    SandboxAlreadyExists,
    SandboxStillRunning,
    SandboxNotRunning,
    /// The sandbox is draining: it refuses new commands.
    SandboxDraining,
    /// The sandbox is paused (`pause()`): resume it first.
    SandboxPaused,
    ImageNotFound,
    Image,
    RegistryAuth,
    KernelNotFound,
    QemuNotFound,
    /// The guest did not become ready within the boot timeout.
    AgentTimeout,
    /// Anything else that failed on the host.
    Runtime,
    /// A peer broke the protocol.
    Protocol,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidConfig,
        ErrorCode::SandboxNotFound,
        ErrorCode::SandboxAlreadyExists,
        ErrorCode::SandboxStillRunning,
        ErrorCode::SandboxNotRunning,
        ErrorCode::SandboxDraining,
        ErrorCode::SandboxPaused,
        ErrorCode::ImageNotFound,
        ErrorCode::Image,
        ErrorCode::RegistryAuth,
        ErrorCode::KernelNotFound,
        ErrorCode::QemuNotFound,
        ErrorCode::AgentTimeout,
        ErrorCode::Runtime,
        ErrorCode::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidConfig => "invalidConfig",
            ErrorCode::SandboxNotFound => "sandboxNotFound",
            ErrorCode::SandboxAlreadyExists => "sandboxAlreadyExists",
            ErrorCode::SandboxStillRunning => "sandboxStillRunning",
            ErrorCode::SandboxNotRunning => "sandboxNotRunning",
            ErrorCode::SandboxDraining => "sandboxDraining",
            ErrorCode::SandboxPaused => "sandboxPaused",
            ErrorCode::ImageNotFound => "imageNotFound",
            ErrorCode::Image => "image",
            ErrorCode::RegistryAuth => "registryAuth",
            ErrorCode::KernelNotFound => "kernelNotFound",
            ErrorCode::QemuNotFound => "qemuNotFound",
            ErrorCode::AgentTimeout => "agentTimeout",
            ErrorCode::Runtime => "runtime",
            ErrorCode::Protocol => "protocol",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_and_as_str_is_the_serde_name() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            // Exhaustive: a new variant fails to compile here until ALL has it.
            match c {
                ErrorCode::InvalidConfig
                | ErrorCode::SandboxNotFound
                | ErrorCode::SandboxAlreadyExists
                | ErrorCode::SandboxStillRunning
                | ErrorCode::SandboxNotRunning
                | ErrorCode::SandboxDraining
                | ErrorCode::SandboxPaused
                | ErrorCode::ImageNotFound
                | ErrorCode::Image
                | ErrorCode::RegistryAuth
                | ErrorCode::KernelNotFound
                | ErrorCode::QemuNotFound
                | ErrorCode::AgentTimeout
                | ErrorCode::Runtime
                | ErrorCode::Protocol => {}
            }
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::parse("nonsense"), None);
    }
}
