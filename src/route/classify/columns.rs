//! Select-list columns whose value says when or where a statement ran, not
//! what the data is: `now()`, `current_timestamp`, `inet_server_port()`,
//! `pg_backend_pid()`... An optimistic transaction leaves them out of the
//! digest it verifies on the primary (they would differ there whatever the
//! data), so such a read keeps its place on a replica without turning a
//! later write into a certain 40001. The same functions anywhere else in a
//! statement (a WHERE clause, an argument) are verified as usual.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, SelectItem, SetExpr,
    Statement,
};

/// Functions whose result depends on the time, the server or the session's
/// backend, never on data.
const WHEN_OR_WHERE: &[&str] = &[
    "now",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "localtimestamp",
    "transaction_timestamp",
    "statement_timestamp",
    "clock_timestamp",
    "timeofday",
    "inet_server_port",
    "inet_server_addr",
    "inet_client_port",
    "inet_client_addr",
    "pg_backend_pid",
    "txid_current_if_assigned",
    "pg_current_xact_id_if_assigned",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "current_setting",
    "random",
    "gen_random_uuid",
];

/// The first 64 columns of a lone SELECT's list that are only such a call
/// (perhaps cast or parenthesised, with literal arguments), as a bit mask:
/// bit `i` for column `i`. 0 for anything else, and from a `*` on (its
/// columns cannot be counted here).
pub(super) fn unverified_columns(statement: &Statement) -> u64 {
    let Statement::Query(query) = statement else {
        return 0;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return 0;
    };
    let mut mask = 0u64;
    for (i, item) in select.projection.iter().enumerate().take(64) {
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            // `*` and an expression giving several columns: the columns
            // after them cannot be placed.
            _ => break,
        };
        if reflects_no_data(expr) {
            mask |= 1 << i;
        }
    }
    mask
}

fn reflects_no_data(expr: &Expr) -> bool {
    match expr {
        Expr::Nested(inner) => reflects_no_data(inner),
        Expr::Cast { expr, .. } => reflects_no_data(expr),
        Expr::Function(f) => {
            let name = match f.name.0.as_slice() {
                [ObjectNamePart::Identifier(n)] => n,
                [
                    ObjectNamePart::Identifier(schema),
                    ObjectNamePart::Identifier(n),
                ] if schema.value.eq_ignore_ascii_case("pg_catalog") => n,
                _ => return false,
            };
            let literal_args = match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(list) => list.args.iter().all(|a| {
                    matches!(
                        a,
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(_)))
                    )
                }),
                FunctionArguments::Subquery(_) => false,
            };
            literal_args
                && f.filter.is_none()
                && f.over.is_none()
                && WHEN_OR_WHERE
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(&name.value))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    use super::*;

    fn mask(sql: &str) -> u64 {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        unverified_columns(&statements[0])
    }

    #[test]
    fn columns_that_say_when_or_where() {
        let cases: &[(&str, u64)] = &[
            ("SELECT inet_server_port()", 0b1),
            ("SELECT id, now(), v FROM t", 0b010),
            ("SELECT current_timestamp AS at, count(*) FROM t", 0b01),
            ("SELECT now()::date, pg_catalog.pg_backend_pid()", 0b11),
            (
                "SELECT (clock_timestamp()), current_setting('TimeZone')",
                0b11,
            ),
            // Data goes into it: verified.
            ("SELECT now() - created FROM t", 0),
            ("SELECT current_setting(name) FROM settings", 0),
            ("SELECT id FROM t WHERE created < now()", 0),
            ("SELECT max(now()) FROM t", 0),
            ("SELECT other.now()", 0),
            // Columns after a `*` cannot be placed.
            ("SELECT *, now() FROM t", 0),
            ("SELECT now(), t.* FROM t", 0b1),
            // Not a lone SELECT.
            ("SELECT now() UNION SELECT now()", 0),
            ("VALUES (now())", 0),
        ];
        for (sql, want) in cases {
            assert_eq!(mask(sql), *want, "{sql}");
        }
    }
}
