//! `SET` / `RESET` / `SET SESSION CHARACTERISTICS`: which are session changes
//! to replay, which pin the session, which are pgsplit's own routing setting.

use sqlparser::ast::{
    ContextModifier, Expr, ObjectName, ObjectNamePart, Set, TransactionIsolationLevel,
    TransactionMode, Value,
};

use super::Decision;
use crate::route::class::{Kind, PinReason, RouteMode};

/// What a session change does to the connection's settings, for pooling:
/// connections are told the difference between the settings they have and
/// the ones a client needs (see `backend::settings`), which takes a name
/// per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingEffect {
    /// Gives the setting (lower case) a value.
    Set(String),
    /// Puts the setting back to the connection's default.
    Reset(String),
    /// `RESET ALL`, `DISCARD ALL`: every setting back to its default.
    ResetAll,
    /// Changes no setting (`DISCARD PLANS`, `DISCARD TEMP`...).
    Nothing,
    /// Anything else (`SET ROLE`, several statements, text that does not
    /// parse): only replaying the statement in order reproduces it.
    Other,
}

/// The [`SettingEffect`] of one logged session change.
pub fn setting_effect(sql: &str) -> SettingEffect {
    use sqlparser::ast::{DiscardObject, Reset, Statement};
    let Ok(statements) =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql)
    else {
        return SettingEffect::Other;
    };
    let [statement] = statements.as_slice() else {
        return SettingEffect::Other;
    };
    let named = |name: Option<String>| match name {
        Some(n) if n != "pgsplit.route" && !n.starts_with("transaction_") => SettingEffect::Set(n),
        _ => SettingEffect::Other,
    };
    match statement {
        Statement::Set(Set::SingleAssignment {
            scope: None | Some(ContextModifier::Session),
            hivevar: false,
            variable,
            ..
        }) => named(dotted(variable)),
        Statement::Set(Set::SetTimeZone { local: false, .. }) => named(Some("timezone".into())),
        Statement::Set(Set::SetNames { .. } | Set::SetNamesDefault {}) => {
            named(Some("client_encoding".into()))
        }
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => SettingEffect::ResetAll,
            Reset::ConfigurationParameter(name) => match dotted(name) {
                Some(n) if n != "pgsplit.route" => SettingEffect::Reset(n),
                _ => SettingEffect::Other,
            },
            Reset::SessionAuthorization => SettingEffect::Other,
        },
        Statement::Discard { object_type } => match object_type {
            DiscardObject::ALL => SettingEffect::ResetAll,
            DiscardObject::PLANS | DiscardObject::SEQUENCES | DiscardObject::TEMP => {
                SettingEffect::Nothing
            }
        },
        _ => SettingEffect::Other,
    }
}

pub(super) fn decide_set(set: &Set) -> Decision {
    match set {
        Set::SingleAssignment {
            scope,
            hivevar: false,
            variable,
            values,
        } => match scope {
            Some(ContextModifier::Local) => Decision::of(Kind::TxnControl),
            Some(ContextModifier::Global) => Decision::of(Kind::Write),
            None | Some(ContextModifier::Session) => decide_assignment(variable, values),
        },
        Set::SetSessionAuthorization(param) => match param.scope {
            ContextModifier::Local => Decision::of(Kind::TxnControl),
            ContextModifier::Session => Decision::of(Kind::Session),
            ContextModifier::Global => Decision::of(Kind::Write),
        },
        Set::SetRole {
            context_modifier, ..
        } => match context_modifier {
            Some(ContextModifier::Local) => Decision::of(Kind::TxnControl),
            Some(ContextModifier::Global) => Decision::of(Kind::Write),
            None | Some(ContextModifier::Session) => Decision::of(Kind::Session),
        },
        Set::SetTimeZone { local: true, .. } => Decision::of(Kind::TxnControl),
        Set::SetTimeZone { local: false, .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => {
            Decision::of(Kind::Session)
        }
        Set::SetTransaction {
            modes,
            session: true,
            ..
        } => {
            let serializable = modes.iter().any(|m| {
                matches!(
                    m,
                    TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable)
                )
            });
            Decision {
                pin: serializable.then_some(PinReason::Serializable),
                ..Decision::of(Kind::Session)
            }
        }
        Set::SetTransaction { session: false, .. } => Decision::of(Kind::TxnControl),
        // MySQL/MSSQL/Hive forms PostgreSQL does not have.
        _ => Decision::of(Kind::Write),
    }
}

/// `SET [SESSION] name = value`.
fn decide_assignment(variable: &ObjectName, values: &[Expr]) -> Decision {
    let Some(name) = dotted(variable) else {
        return Decision::of(Kind::Write);
    };
    let value = match values {
        [one] => setting_text(one),
        _ => None,
    };
    match name.as_str() {
        // These act on the current transaction only, like SET TRANSACTION.
        "transaction_isolation" | "transaction_read_only" | "transaction_deferrable" => {
            Decision::of(Kind::TxnControl)
        }
        "default_transaction_isolation" => Decision {
            pin: (value.as_deref() == Some("serializable")).then_some(PinReason::Serializable),
            ..Decision::of(Kind::Session)
        },
        "pgsplit.route" => {
            let mode = match value.as_deref() {
                Some("primary") => Some(RouteMode::Primary),
                Some("replica") => Some(RouteMode::Replica),
                Some("auto" | "default") => Some(RouteMode::Auto),
                _ => None,
            };
            Decision {
                set_route: mode,
                pin: (mode == Some(RouteMode::Primary)).then_some(PinReason::Hint),
                ..Decision::of(Kind::Session)
            }
        }
        _ => Decision::of(Kind::Session),
    }
}

/// A SET value as PostgreSQL reads it: an identifier, a string, a number or a
/// boolean, lower-cased and trimmed.
pub(super) fn setting_text(expr: &Expr) -> Option<String> {
    let text = match expr {
        Expr::Identifier(ident) => ident.value.clone(),
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
                s.clone()
            }
            Value::Number(n, _) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            _ => return None,
        },
        _ => return None,
    };
    Some(text.trim().to_ascii_lowercase())
}

/// `a.b.c` lower-cased, when every part is a plain identifier.
pub(super) fn dotted(name: &ObjectName) -> Option<String> {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        let ObjectNamePart::Identifier(ident) = part else {
            return None;
        };
        if i > 0 {
            out.push('.');
        }
        out.push_str(&ident.value.to_ascii_lowercase());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{SettingEffect as E, setting_effect};

    #[test]
    fn setting_effects() {
        let set = |n: &str| E::Set(n.to_owned());
        let cases = [
            ("SET search_path TO a, b", set("search_path")),
            ("set SESSION \"TimeZone\" = 'UTC'", set("timezone")),
            ("SET my.opt = 'x'", set("my.opt")),
            ("SET TIME ZONE 'UTC'", set("timezone")),
            ("SET NAMES 'UTF8'", set("client_encoding")),
            ("SET statement_timeout TO DEFAULT", set("statement_timeout")),
            ("RESET search_path", E::Reset("search_path".to_owned())),
            ("RESET ALL", E::ResetAll),
            ("DISCARD ALL", E::ResetAll),
            ("DISCARD TEMP", E::Nothing),
            ("SET ROLE other", E::Other),
            ("SET SESSION AUTHORIZATION other", E::Other),
            ("RESET SESSION AUTHORIZATION", E::Other),
            ("SET LOCAL search_path TO a", E::Other),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                E::Other,
            ),
            ("SET pgsplit.route = primary", E::Other),
            ("SET transaction_isolation = 'serializable'", E::Other),
            ("SET a.b = 1; SET c.d = 2", E::Other),
            ("SET search_path TO", E::Other),
        ];
        for (sql, want) in cases {
            assert_eq!(setting_effect(sql), want, "{sql}");
        }
    }
}
