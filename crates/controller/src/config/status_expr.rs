//! `spec.commitStatusExpr`: the CEL expression that names a commit status, compiled once when a
//! Provider is loaded and evaluated per event with `event`, `provider` and `alert` bound to the
//! JSON forms of the merged event and the two objects (§3.0.1).

use std::sync::{Arc, LazyLock};

use cel::common::ast::{Expr, operators};
use cel::objects::OptionalValue;
use cel::{Context, Env, Program, Value};

use crate::config::error::ConfigError;

/// The environment Flux's CEL helper offers: the standard library, optional types (for
/// `.first().value()`), the strings, lists and encoders extensions.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    for ext in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
    ] {
        ext(&mut env).expect("CEL extension declares once");
    }
    Arc::new(env)
});

/// A compiled `commitStatusExpr`.
pub struct StatusExpr {
    source: String,
    program: Program,
}

impl std::fmt::Debug for StatusExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatusExpr").field(&self.source).finish()
    }
}

const VARIABLES: [&str; 3] = ["event", "provider", "alert"];

impl StatusExpr {
    /// Parses the expression and checks, as far as can be known before evaluation, what Flux's
    /// type checker checks: only the three declared variables, and a result that can be a
    /// string (a comparison or a literal of another type is refused).
    pub fn compile(source: &str) -> Result<StatusExpr, ConfigError> {
        let program = ENV
            .compile(source)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        let refs = program.references();
        let mut undeclared: Vec<_> = refs
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v))
            .collect();
        undeclared.sort_unstable();
        if let Some(v) = undeclared.first() {
            return Err(ConfigError::UndeclaredReference(v.to_string()));
        }
        if let Some(kind) = non_string_result(&program.expression().expr) {
            return Err(ConfigError::NotString(kind));
        }
        Ok(StatusExpr {
            source: source.to_string(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the three variables bound; the result is used verbatim.
    pub fn evaluate(
        &self,
        event: &serde_json::Value,
        provider: &serde_json::Value,
        alert: &serde_json::Value,
    ) -> Result<String, ConfigError> {
        let evaluation = |e: &dyn std::fmt::Display| ConfigError::Evaluation(e.to_string());
        let mut ctx = Context::with_env(ENV.clone());
        for (name, value) in [("event", event), ("provider", provider), ("alert", alert)] {
            ctx.add_variable(name, value).map_err(|e| evaluation(&e))?;
        }
        // cel-go's optional library puts `first()`/`last()` on lists; cel-rust has no such
        // overload, so they are added here with cel-go's meaning (an optional element).
        ctx.add_function(
            "first",
            |cel::extractors::This(list): cel::extractors::This<Arc<Vec<Value>>>| {
                optional(list.first().cloned())
            },
        )
        .map_err(|e| evaluation(&e))?;
        ctx.add_function(
            "last",
            |cel::extractors::This(list): cel::extractors::This<Arc<Vec<Value>>>| {
                optional(list.last().cloned())
            },
        )
        .map_err(|e| evaluation(&e))?;
        match self.program.execute(&ctx) {
            Ok(Value::String(s)) => Ok(s.to_string()),
            Ok(other) => Err(ConfigError::Returned(type_name(&other))),
            Err(e) => Err(evaluation(&e)),
        }
    }
}

fn optional(v: Option<Value>) -> Value {
    Value::Opaque(Arc::new(match v {
        Some(v) => OptionalValue::of(v),
        None => OptionalValue::none(),
    }))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::Null => "null",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Bytes(_) => "bytes",
        _ => "non-string value",
    }
}

/// The type of a top-level expression that can never be a string, if it is one.
fn non_string_result(expr: &Expr) -> Option<&'static str> {
    use cel::common::ast::LiteralValue as L;
    match expr {
        Expr::Literal(L::Boolean(_)) => Some("bool"),
        Expr::Literal(L::Int(_)) => Some("int"),
        Expr::Literal(L::UInt(_)) => Some("uint"),
        Expr::Literal(L::Double(_)) => Some("double"),
        Expr::Literal(L::Null) => Some("null"),
        Expr::Literal(L::Bytes(_)) => Some("bytes"),
        Expr::List(_) => Some("list"),
        Expr::Map(_) => Some("map"),
        Expr::Call(call) => match call.func_name.as_str() {
            operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS
            | operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::IN
            | "startsWith"
            | "endsWith"
            | "contains"
            | "matches"
            | "has" => Some("bool"),
            "size" => Some("int"),
            _ => None,
        },
        Expr::Comprehension(_) => None,
        _ => None,
    }
}

/// A Provider annotation holding a CEL expression (same variables as `commitStatusExpr`) for
/// the status's link. Annotations leave Flux's CRD schema untouched, so they work with
/// Flux's CRDs installed.
pub const TARGET_URL_ANNOTATION: &str = "commit-status-controller/target-url";
/// A Provider annotation holding a CEL expression for the status's description.
pub const DESCRIPTION_ANNOTATION: &str = "commit-status-controller/description";

/// A Provider's compiled expressions.
#[derive(Debug, Default)]
pub struct ProviderExprs {
    /// `spec.commitStatusExpr`.
    pub status: Option<StatusExpr>,
    pub target_url: Option<StatusExpr>,
    pub description: Option<StatusExpr>,
}

/// Validates a Provider as its CRD does and compiles its expressions; every problem names its
/// field.
pub fn check_provider(provider: &api::Provider) -> Result<ProviderExprs, Vec<api::FieldError>> {
    let mut errors = provider.validate();
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut compile = |field: String, src: Option<&str>| {
        src.and_then(|src| match StatusExpr::compile(src) {
            Ok(e) => Some(e),
            Err(e) => {
                errors.push(api::FieldError::new(
                    field,
                    format!("invalid CEL expression: {e}"),
                ));
                None
            }
        })
    };
    let annotations = &provider.metadata.annotations;
    let exprs = ProviderExprs {
        status: compile(
            "spec.commitStatusExpr".into(),
            provider.spec.commit_status_expr.as_deref(),
        ),
        target_url: compile(
            format!("metadata.annotations[{TARGET_URL_ANNOTATION}]"),
            annotations.get(TARGET_URL_ANNOTATION).map(String::as_str),
        ),
        description: compile(
            format!("metadata.annotations[{DESCRIPTION_ANNOTATION}]"),
            annotations.get(DESCRIPTION_ANNOTATION).map(String::as_str),
        ),
    };
    if errors.is_empty() {
        Ok(exprs)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> (serde_json::Value, serde_json::Value, serde_json::Value) {
        (
            json!({"involvedObject": {"kind": "Kustomization", "name": "gitops-system"},
                   "metadata": {"environment": "production"}, "reason": "ApplySucceeded"}),
            json!({"metadata": {"uid": "0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a", "name": "p"}}),
            json!({"metadata": {"name": "test-alert"}}),
        )
    }

    fn eval(src: &str) -> Result<String, ConfigError> {
        let (e, p, a) = vars();
        StatusExpr::compile(src)?.evaluate(&e, &p, &a)
    }

    #[test]
    fn flux_vectors() {
        let base = "event.involvedObject.kind + '/' + event.involvedObject.name + '/' + event.metadata.environment + '/' + provider.metadata.uid";
        assert_eq!(
            eval(&format!("{base} + '/' + alert.metadata.name")).unwrap(),
            "Kustomization/gitops-system/production/0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a/test-alert"
        );
        assert_eq!(
            eval(&format!(
                "({base} + '/' + alert.metadata.name).lowerAscii()"
            ))
            .unwrap(),
            "kustomization/gitops-system/production/0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a/test-alert"
        );
        assert_eq!(
            eval(base).unwrap(),
            "Kustomization/gitops-system/production/0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a"
        );
        assert_eq!(
            eval("event.involvedObject.kind + '/' + event.involvedObject.name + '/' + event.metadata.environment + '/' + provider.metadata.uid.split('-').first().value()").unwrap(),
            "Kustomization/gitops-system/production/0c9c2e41"
        );
        assert!(
            !eval("(event.involvedObject.kind + '/' + event.involvedObject.name + '/' + event.metadata.foo + '/' + provider.metadata.uid.split('-').first().value()).lowerAscii()").unwrap_err().to_string().is_empty()
        );
    }

    #[test]
    fn refusals() {
        assert!(StatusExpr::compile("notification.metadata.name").is_err());
        assert!(StatusExpr::compile("kustomization.metadata.name").is_err());
        assert!(StatusExpr::compile("event.involvedObject.kind == 'Kustomization'").is_err());
        assert!(StatusExpr::compile("'unterminated").is_err());
        assert!(eval("event.metadata.notfound").is_err());
        // Not caught statically, caught at evaluation.
        assert!(eval("event.metadata").is_err());
        assert!(StatusExpr::compile("event.involvedObject.name + '-x'").is_ok());
    }
}
