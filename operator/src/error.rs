//! The controllers' error type: one variant per failed step, with the object and the cause. Each
//! error yields a short CamelCase label for metrics, condition reasons and Events.

use switchboard_crds::{ValidationErrors, conditions::reasons};

use switchboard_crds::compile::CompileError;

/// Condition reason, metric label and Event reason of [`Error::SecretAccessNotGranted`].
pub const SECRET_ACCESS_NOT_GRANTED: &str = "SecretAccessNotGranted";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed (`verb` on `object`).
    #[error("{verb} {object}: {source}")]
    Kube {
        /// What was attempted (`get`, `list`, `apply`, `patch status`, ...).
        verb: &'static str,
        /// `Kind namespace/name` (or `Kind namespace` for lists).
        object: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The operator may not read or create a Secret in this namespace: Secret access is granted
    /// per namespace by binding the chart's `<release>-operator-secrets` ClusterRole.
    #[error(
        "the operator may not {verb} Secret {namespace}/{name}: Secret access is granted per namespace by its owner; bind the chart's ClusterRole `<release>-operator-secrets` to the operator's ServiceAccount in {namespace} (Helm value rbac.secretNamespaces, or `kubectl create rolebinding`; docs/install.md)"
    )]
    SecretAccessNotGranted {
        /// `get` or `create`.
        verb: &'static str,
        /// The namespace without the grant.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// The spec breaks a rule admission could not check.
    #[error("{object}: {source}")]
    InvalidSpec {
        /// `Kind namespace/name`.
        object: String,
        /// The broken rules.
        source: ValidationErrors,
    },
    /// A referenced Secret exists but its owner has not labelled it usable.
    #[error(
        "{object}: Secret {name} ({field}) is not labelled switchboard.dev/usable=true: Switchboard uses only Secrets their owner opted in (kubectl label secret {name} -n {namespace} switchboard.dev/usable=true); the running pods are left as they are"
    )]
    SecretNotUsable {
        /// The referencing object.
        object: String,
        /// The spec field naming the Secret.
        field: &'static str,
        /// Its namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// A referenced object does not exist.
    #[error("{object} references {kind} {name}, which does not exist")]
    ReferenceNotFound {
        /// The referencing object.
        object: String,
        /// Kind of the missing object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Compiling a Router's RuntimeConfig failed.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// An object has no name or namespace (the API server always sets them).
    #[error("{0} has no {1}")]
    MissingMetadata(&'static str, &'static str),
    /// A document could not be serialised.
    #[error("serialising {what}: {source}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a client error of `verb` on `object`.
    pub fn kube(verb: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            verb,
            object: object.into(),
            source: Box::new(source),
        }
    }

    /// Wraps a client error of `verb` on Secret `namespace/name`: a 403 is
    /// [`Error::SecretAccessNotGranted`], naming the grant that is missing.
    pub fn secret(verb: &'static str, namespace: &str, name: &str, source: kube::Error) -> Self {
        match &source {
            kube::Error::Api(status) if status.code == 403 => Self::SecretAccessNotGranted {
                verb,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            _ => Self::kube(verb, format!("Secret {namespace}/{name}"), source),
        }
    }

    /// Short CamelCase label for metrics (`reason` label), conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 409 => "Conflict",
                kube::Error::Api(status) if status.code == 403 => "Forbidden",
                kube::Error::Api(status) if status.code == 404 => "NotFound",
                kube::Error::Api(_) => "ApiError",
                _ => "ApiUnreachable",
            },
            Self::SecretAccessNotGranted { .. } => SECRET_ACCESS_NOT_GRANTED,
            Self::InvalidSpec { .. } => reasons::INVALID_SPEC,
            Self::ReferenceNotFound { .. } => reasons::REFERENCE_NOT_FOUND,
            Self::SecretNotUsable { .. } => reasons::SECRET_NOT_USABLE,
            Self::Compile(e) => e.reason(),
            Self::MissingMetadata(..) => "MissingMetadata",
            Self::Serialize { .. } => "SerializeFailed",
        }
    }
}

/// Result alias of the controllers.
pub type Result<T, E = Error> = std::result::Result<T, E>;
