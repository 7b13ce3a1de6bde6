//! Why configuration cannot work: a Provider whose Secrets or forge settings cannot make a
//! forge, or an expression that does not compile or evaluate. One type for the configuration
//! layer; its `Display` is the text users see (Flux's words where Flux has them), and it never
//! holds a Secret's value.

/// What is wrong inside one Secret. Names keys, never values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("malformed basic auth - has 'password' but missing 'username'")]
    PasswordWithoutUsername,
    #[error("malformed basic auth - has 'username' but missing 'password'")]
    UsernameWithoutPassword,
    #[error("failed to parse CA certificate: no PEM certificate found")]
    CaNotPem,
    #[error("failed to parse client certificate and key: no PEM data found")]
    ClientPairNotPem,
    #[error("found 'tls.crt' but missing 'tls.key'")]
    CertWithoutKey,
    #[error("found 'tls.key' but missing 'tls.crt'")]
    KeyWithoutCert,
    #[error("must contain either 'ca.crt' or both 'tls.crt' and 'tls.key'")]
    NoTlsMaterial,
    #[error("key 'address' not found")]
    NoAddress,
    #[error("address exceeds maximum length of {max} bytes")]
    AddressTooLong { max: usize },
    /// `address` is the proxy address with its user info and query removed.
    #[error("invalid proxy address {address:?}: scheme must be one of {schemes}")]
    ProxyScheme { address: String, schemes: String },
    #[error("unsupported secret type {0:?}, must be 'kubernetes.io/tls' or 'Opaque'")]
    Type(String),
}

impl SecretProblem {
    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SecretProblem::PasswordWithoutUsername | SecretProblem::UsernameWithoutPassword => {
                "secret_basic_auth"
            }
            SecretProblem::CaNotPem
            | SecretProblem::ClientPairNotPem
            | SecretProblem::CertWithoutKey
            | SecretProblem::KeyWithoutCert
            | SecretProblem::NoTlsMaterial => "secret_tls",
            SecretProblem::NoAddress
            | SecretProblem::AddressTooLong { .. }
            | SecretProblem::ProxyScheme { .. } => "secret_address",
            SecretProblem::Type(_) => "secret_type",
        }
    }
}

/// Why a Provider cannot post, or one of its expressions cannot name a status. Never worth
/// retrying: the same configuration fails the same way, and a changed one is a new catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to get secret '{namespace}/{name}': secrets \"{name}\" not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("secret '{namespace}/{name}': {problem}")]
    Secret {
        namespace: String,
        name: String,
        problem: SecretProblem,
    },
    /// The credentials Secret's `address` is longer than any repository address.
    #[error("invalid address in secret: address exceeds maximum length of {max} bytes")]
    SecretAddressTooLong { max: usize },
    /// The credentials Secret's `proxy` is not a URL (which is not shown: it may hold a password).
    #[error("invalid 'proxy' in secret '{namespace}/{name}'")]
    SecretProxy { namespace: String, name: String },
    /// The credentials Secret's `headers` is not a YAML map; a position only, no source text.
    #[error("failed to read headers from secret: {0}")]
    SecretHeaders(String),
    /// Reading `spec.proxySecretRef` failed.
    #[error("failed to get proxy URL: {0}")]
    Proxy(Box<ConfigError>),
    /// Reading the TLS material (`spec.certSecretRef`, or the credentials Secret) failed.
    #[error("failed to get TLS config: {0}")]
    Tls(Box<ConfigError>),
    /// The forge refuses the resolved configuration.
    #[error(transparent)]
    Forge(#[from] notify::ConfigError),
    /// A CEL expression does not parse: the parser's words.
    #[error("{0}")]
    Syntax(String),
    #[error("undeclared reference to '{0}'")]
    UndeclaredReference(String),
    /// A CEL expression whose result can be seen not to be a string before it is evaluated.
    #[error("expression must evaluate to a string, not a {0}")]
    NotString(&'static str),
    /// A CEL expression failed on this event: the evaluator's words.
    #[error("{0}")]
    Evaluation(String),
    #[error("expression returned {0}, not a string")]
    Returned(&'static str),
}

impl ConfigError {
    /// Whether trying the same configuration again may succeed: never.
    pub fn retry(&self) -> bool {
        false
    }

    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigError::SecretNotFound { .. } => "secret_not_found",
            ConfigError::Secret { problem, .. } => problem.name(),
            ConfigError::SecretAddressTooLong { .. } => "secret_address",
            ConfigError::SecretProxy { .. } => "secret_proxy",
            ConfigError::SecretHeaders(_) => "secret_headers",
            ConfigError::Proxy(e) | ConfigError::Tls(e) => e.name(),
            ConfigError::Forge(_) => "forge_config",
            ConfigError::Syntax(_)
            | ConfigError::UndeclaredReference(_)
            | ConfigError::NotString(_) => "expression_invalid",
            ConfigError::Evaluation(_) | ConfigError::Returned(_) => "expression_failed",
        }
    }

    pub(crate) fn secret(namespace: &str, name: &str, problem: SecretProblem) -> ConfigError {
        ConfigError::Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_itself_and_none_is_retried() {
        let secret = |problem| ConfigError::secret("ns", "s", problem);
        let cases: Vec<(ConfigError, &str, &str)> = vec![
            (
                ConfigError::SecretNotFound {
                    namespace: "ns".into(),
                    name: "s".into(),
                },
                "secret_not_found",
                "failed to get secret 'ns/s': secrets \"s\" not found",
            ),
            (
                secret(SecretProblem::PasswordWithoutUsername),
                "secret_basic_auth",
                "secret 'ns/s': malformed basic auth - has 'password' but missing 'username'",
            ),
            (
                ConfigError::Tls(Box::new(secret(SecretProblem::NoTlsMaterial))),
                "secret_tls",
                "failed to get TLS config: secret 'ns/s': must contain either 'ca.crt' or both 'tls.crt' and 'tls.key'",
            ),
            (
                ConfigError::Proxy(Box::new(secret(SecretProblem::ProxyScheme {
                    address: "ftp://h/".into(),
                    schemes: "http, https".into(),
                }))),
                "secret_address",
                "failed to get proxy URL: secret 'ns/s': invalid proxy address \"ftp://h/\": scheme must be one of http, https",
            ),
            (
                ConfigError::Tls(Box::new(secret(SecretProblem::Type("x".into())))),
                "secret_type",
                "failed to get TLS config: secret 'ns/s': unsupported secret type \"x\", must be 'kubernetes.io/tls' or 'Opaque'",
            ),
            (
                ConfigError::SecretAddressTooLong { max: 2048 },
                "secret_address",
                "invalid address in secret: address exceeds maximum length of 2048 bytes",
            ),
            (
                ConfigError::SecretProxy {
                    namespace: "ns".into(),
                    name: "s".into(),
                },
                "secret_proxy",
                "invalid 'proxy' in secret 'ns/s'",
            ),
            (
                ConfigError::SecretHeaders("line 1, column 2: x".into()),
                "secret_headers",
                "failed to read headers from secret: line 1, column 2: x",
            ),
            (
                notify::ConfigError::GitLabToken.into(),
                "forge_config",
                "gitlab token cannot be empty",
            ),
            (
                ConfigError::UndeclaredReference("x".into()),
                "expression_invalid",
                "undeclared reference to 'x'",
            ),
            (
                ConfigError::NotString("bool"),
                "expression_invalid",
                "expression must evaluate to a string, not a bool",
            ),
            (
                ConfigError::Returned("int"),
                "expression_failed",
                "expression returned int, not a string",
            ),
            (
                ConfigError::Evaluation("No such key: x".into()),
                "expression_failed",
                "No such key: x",
            ),
        ];
        for (error, name, text) in cases {
            assert_eq!(error.name(), name, "{error}");
            assert_eq!(error.to_string(), text);
            assert!(!error.retry(), "{error}");
        }
    }
}
