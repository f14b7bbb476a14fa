//! Which functions may run on a replica.
//!
//! A statement is read-only only if every function it calls is known not to write.
//! PostgreSQL tells us through `pg_proc.provolatile`: a function that is not
//! `VOLATILE` may not modify the database. The catalog is loaded from the primary with
//! [`LOAD_SQL`] and seeded with [`FunctionCatalog::builtin`] until the first load.
//!
//! Rules, in order (the first that applies decides):
//! 1. the built-in deny list and the configured `force_primary` names: never read-only;
//! 2. the configured `extra_safe` names: read-only;
//! 3. SQL-standard constructs that look like calls but are grammar, not pg_proc
//!    entries (`coalesce`, `current_timestamp`, `array(...)`...): read-only;
//! 4. pg_proc: read-only when every overload is non-volatile; an unqualified name
//!    only when that holds in every schema (the session's search_path is unknown);
//! 5. anything else (unknown names): not read-only, so the statement goes to the
//!    primary.
//!
//! Names are compared case-insensitively (ASCII): unquoted SQL names fold to lower
//! case, and folding quoted ones too can only merge entries, which are merged
//! conservatively (read-only only if all of them are).

use std::collections::{HashMap, HashSet};

/// Loads `(schema, name, non_volatile)` rows from the primary. An overloaded name is
/// non-volatile only if every overload is.
pub const LOAD_SQL: &str = "SELECT n.nspname::text AS schema, p.proname::text AS name, \
     bool_and(p.provolatile <> 'v') AS non_volatile \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     GROUP BY n.nspname, p.proname";

/// Functions that always go to the primary, whatever pg_proc says: they write, take
/// session-scoped locks, or report the state of the server or session that runs them
/// (a replica's answer would be wrong, or the call fails there).
const DENY: &[&str] = &[
    // Transaction ids and snapshots of the primary.
    "txid_current",
    "txid_current_if_assigned",
    "txid_current_snapshot",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_snapshot",
    "pg_export_snapshot",
    // WAL positions and server control.
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_promote",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_terminate_backend",
    "pg_cancel_backend",
    // Which server / session answers: drivers ask `pg_is_in_recovery()` to find a
    // read-write server (libpq's target_session_attrs), so it must see the primary.
    "pg_is_in_recovery",
    "pg_backend_pid",
    // Sequences.
    "nextval",
    "setval",
    "currval",
    "lastval",
    // Session state and notifications.
    "set_config",
    "pg_notify",
    // Large-object writers (the lo_ prefix below covers the rest).
    "lowrite",
    "loread",
];

/// Name prefixes that always go to the primary.
const DENY_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "dblink",
    "lo_",
    "pg_create_",
    "pg_drop_replication_slot",
    "pg_replication_origin_",
    "pg_logical_",
    "pg_stat_reset",
];

/// Grammar constructs that sqlparser presents as function calls; none is in pg_proc
/// under that name and none can write.
const GRAMMAR: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "array",
    "row",
    "grouping",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "current_catalog",
    "current_schema",
    "xmlconcat",
    "xmlelement",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "json_object",
    "json_array",
    "json_objectagg",
    "json_arrayagg",
    "json_scalar",
    "json_serialize",
    "json_query",
    "json_value",
    "json_exists",
];

/// Common read-only built-ins, known before the first pg_proc load.
const BUILTIN_READ_ONLY: &[&str] = &[
    // Aggregates.
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "percentile_cont",
    "percentile_disc",
    "mode",
    // Window functions.
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    // Strings.
    "lower",
    "upper",
    "length",
    "char_length",
    "octet_length",
    "substring",
    "substr",
    "position",
    "strpos",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "lpad",
    "rpad",
    "split_part",
    "regexp_replace",
    "regexp_matches",
    "starts_with",
    "format",
    "md5",
    "initcap",
    "reverse",
    "translate",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    "encode",
    "decode",
    "quote_ident",
    "quote_literal",
    // Numbers.
    "abs",
    "round",
    "ceil",
    "ceiling",
    "floor",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "sign",
    // Dates and times (stable: fixed for the transaction).
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    // Arrays, sets, JSON.
    "array_length",
    "array_to_string",
    "string_to_array",
    "array_position",
    "array_remove",
    "array_append",
    "cardinality",
    "unnest",
    "generate_series",
    "generate_subscripts",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "jsonb_pretty",
    "json_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "json_array_length",
    "jsonb_array_length",
    "json_array_elements",
    "jsonb_array_elements",
    "json_each",
    "jsonb_each",
    "json_object_keys",
    "jsonb_object_keys",
    "jsonb_typeof",
    "jsonb_path_query",
    "jsonb_path_exists",
    // Server and catalog introspection drivers and ORMs use.
    "version",
    "current_setting",
    "current_database",
    "current_schemas",
    "inet_server_addr",
    "inet_server_port",
    "pg_typeof",
    "format_type",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_userbyid",
    "pg_table_is_visible",
    "pg_type_is_visible",
    "pg_function_is_visible",
    "pg_encoding_to_char",
    "obj_description",
    "col_description",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_size_pretty",
];

/// Which functions are known not to write; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionCatalog {
    /// `(schema, name)` → read-only (every overload non-volatile, after the
    /// configured lists were applied).
    qualified: HashMap<(Box<str>, Box<str>), bool>,
    /// `name` → read-only in every schema that has it.
    unqualified: HashMap<Box<str>, bool>,
    /// Unqualified `extra_safe` names, also for functions not (yet) in pg_proc.
    safe_names: HashSet<Box<str>>,
    /// Unqualified `force_primary` names.
    forced_names: HashSet<Box<str>>,
}

impl FunctionCatalog {
    /// Builds a catalog from [`LOAD_SQL`] rows plus the configured lists. Each list
    /// entry is `name` (every schema) or `schema.name`; `force_primary` wins over
    /// `extra_safe`, and the built-in deny list wins over both.
    pub fn from_rows(
        rows: impl IntoIterator<Item = (String, String, bool)>,
        extra_safe: &[String],
        force_primary: &[String],
    ) -> Self {
        let mut catalog = FunctionCatalog::default();
        for (schema, name, non_volatile) in rows {
            catalog
                .qualified
                .entry((fold(&schema), fold(&name)))
                .and_modify(|v| *v &= non_volatile)
                .or_insert(non_volatile);
        }
        for (list, value) in [(extra_safe, true), (force_primary, false)] {
            for entry in list {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                match entry.rsplit_once('.') {
                    Some((schema, name)) => {
                        catalog.qualified.insert((fold(schema), fold(name)), value);
                    }
                    None => {
                        let name = fold(entry);
                        for (key, v) in &mut catalog.qualified {
                            if key.1 == name {
                                *v = value;
                            }
                        }
                        if value {
                            catalog.safe_names.insert(name);
                        } else {
                            catalog.safe_names.remove(&name);
                            catalog.forced_names.insert(name);
                        }
                    }
                }
            }
        }
        for ((_, name), &v) in &catalog.qualified {
            catalog
                .unqualified
                .entry(name.clone())
                .and_modify(|all| *all &= v)
                .or_insert(v);
        }
        catalog
    }

    /// The seed used before the first pg_proc load: common read-only built-ins in
    /// `pg_catalog`. Unknown names are not read-only.
    pub fn builtin() -> Self {
        Self::from_rows(
            BUILTIN_READ_ONLY
                .iter()
                .map(|name| ("pg_catalog".to_owned(), (*name).to_owned(), true)),
            &[],
            &[],
        )
    }

    /// Whether a call to `schema.name` (or unqualified `name`) cannot write and may
    /// run on a replica.
    pub fn is_read_only(&self, schema: Option<&str>, name: &str) -> bool {
        let name = fold(name);
        if is_denied(&name) || self.forced_names.contains(&name) {
            return false;
        }
        let grammar = GRAMMAR.contains(&&*name);
        let known = match schema {
            None => {
                if grammar {
                    return true;
                }
                self.unqualified.get(&name).copied()
            }
            Some(schema) => {
                let schema = fold(schema);
                if grammar && &*schema == "pg_catalog" {
                    return true;
                }
                self.qualified.get(&(schema, name.clone())).copied()
            }
        };
        known.unwrap_or_else(|| self.safe_names.contains(&name))
    }

    /// Number of `(schema, name)` entries.
    pub fn len(&self) -> usize {
        self.qualified.len()
    }

    /// True when the catalog has no `(schema, name)` entry.
    pub fn is_empty(&self) -> bool {
        self.qualified.is_empty()
    }
}

fn fold(name: &str) -> Box<str> {
    name.to_ascii_lowercase().into_boxed_str()
}

/// Whether the built-in deny list forces `name` (lower case) to the primary.
fn is_denied(name: &str) -> bool {
    DENY.contains(&name) || DENY_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(list: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        list.iter()
            .map(|(s, n, v)| ((*s).to_owned(), (*n).to_owned(), *v))
            .collect()
    }

    #[test]
    fn builtin_knows_common_read_only_functions() {
        let c = FunctionCatalog::builtin();
        for name in ["count", "LOWER", "now", "coalesce", "current_timestamp"] {
            assert!(c.is_read_only(None, name), "{name}");
        }
        assert!(c.is_read_only(Some("pg_catalog"), "count"));
        assert!(!c.is_read_only(None, "my_function"));
        assert!(!c.is_read_only(Some("public"), "count"));
        assert!(!c.is_read_only(None, "nextval"));
        assert!(!c.is_read_only(None, "random"));
        assert!(!c.is_empty());
    }

    #[test]
    fn overloads_and_schemas_are_conservative() {
        let c = FunctionCatalog::from_rows(
            rows(&[
                ("pg_catalog", "lower", true),
                ("public", "lower", false),
                ("public", "price_of", true),
                ("app", "f", true),
                ("app", "F", false),
            ]),
            &[],
            &[],
        );
        assert!(!c.is_read_only(None, "lower"));
        assert!(c.is_read_only(Some("pg_catalog"), "lower"));
        assert!(!c.is_read_only(Some("public"), "lower"));
        assert!(c.is_read_only(None, "price_of"));
        assert!(c.is_read_only(Some("PUBLIC"), "Price_Of"));
        assert!(!c.is_read_only(Some("app"), "f"));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn configured_lists_and_deny_list() {
        let c = FunctionCatalog::from_rows(
            rows(&[
                ("pg_catalog", "random", false),
                ("pg_catalog", "pg_backend_pid", true),
                ("pg_catalog", "pg_advisory_lock", true),
                ("public", "report", true),
                ("app", "summary", true),
                ("app", "audit", true),
            ]),
            &[
                "random".to_owned(),
                "nextval".to_owned(),
                "app.new_fn".to_owned(),
            ],
            &["public.report".to_owned(), "AUDIT".to_owned()],
        );
        assert!(c.is_read_only(None, "random"));
        assert!(!c.is_read_only(None, "nextval"), "deny beats extra_safe");
        assert!(!c.is_read_only(None, "pg_backend_pid"));
        assert!(!c.is_read_only(None, "pg_advisory_lock"));
        assert!(!c.is_read_only(Some("public"), "report"));
        assert!(
            !c.is_read_only(None, "report"),
            "may resolve to public.report"
        );
        assert!(c.is_read_only(None, "summary"));
        assert!(!c.is_read_only(Some("app"), "audit"));
        assert!(!c.is_read_only(None, "audit"));
        assert!(c.is_read_only(Some("app"), "new_fn"));
        assert!(c.is_read_only(None, "new_fn"));
        assert!(!c.is_read_only(Some("other"), "new_fn"));
    }

    #[test]
    fn equality_tells_whether_a_refresh_changed_anything() {
        let a = FunctionCatalog::from_rows(rows(&[("s", "f", true)]), &[], &[]);
        let b = FunctionCatalog::from_rows(rows(&[("s", "f", true)]), &[], &[]);
        let c = FunctionCatalog::from_rows(rows(&[("s", "f", false)]), &[], &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
