//! Errors that end a run, classified by what a person or a supervisor should do about them.
//!
//! Operators never end the process: an error the cluster cannot continue after is recorded in
//! the process's [`Failure`] as a [`PipelineError`]; every worker of the process sees it, stops
//! stepping its dataflow and returns, so that every `Drop` runs (the final consumer-group offset
//! commit, the I/O runtime's shutdown); `run` returns the error and `main` alone turns it into an
//! exit code. Bad input records are not errors: they go to the dead-letter output as data.

use std::sync::{Arc, Mutex};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Caused by something that may pass (a store or broker outage longer than the retry
    /// budget, a stalled client): restarting the cluster resumes exactly once from the last
    /// manifest.
    Transient,
    /// Will fail again the same way (a lost commit race with another cluster, an internal
    /// invariant broken): a person must look before restarting.
    Definite,
    /// The configuration is wrong: fix the named flag.
    Configuration,
}

/// An error that stops the pipeline.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PipelineError {
    /// How to treat it.
    pub class: ErrorClass,
    /// What failed, naming the object, epoch or partition and what to check.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PipelineError {
    /// An error of `class` with a message and no underlying cause.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        PipelineError { class, message: message.into(), source: None }
    }

    /// The message and every cause, `: `-separated.
    pub fn chain(&self) -> String {
        let mut text = self.message.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }

    /// An error of `class` caused by `source`.
    pub fn caused(class: ErrorClass, message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        PipelineError { class, message: message.into(), source: Some(Box::new(source)) }
    }
}

/// The first error any worker of this process met; shared by all of them.
#[derive(Debug, Clone, Default)]
pub struct Failure(Arc<Mutex<Option<PipelineError>>>);

impl Failure {
    /// Records `error` unless an earlier one is recorded (the first cause is the one to report;
    /// later ones are usually its consequences, logged here).
    pub fn set(&self, error: PipelineError) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(class = ?error.class, "{}", error.chain());
            *slot = Some(error);
        } else {
            tracing::warn!(class = ?error.class, "after the first error: {}", error.chain());
        }
    }

    /// Whether an error was recorded: the worker loops stop stepping when it is.
    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Takes the recorded error, if any.
    pub fn take(&self) -> Option<PipelineError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A configuration error, naming the flag at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {problem}")]
pub struct ConfigError {
    /// The flag, e.g. `--late-fraction`.
    pub flag: &'static str,
    /// What is wrong and what would be accepted.
    pub problem: String,
}

impl ConfigError {
    /// A new error for `flag`.
    pub fn new(flag: &'static str, problem: impl Into<String>) -> Self {
        ConfigError { flag, problem: problem.into() }
    }
}
