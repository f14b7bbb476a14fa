//! A console answer as an ordinary result set: RowDescription, DataRows,
//! CommandComplete, encoded with pgwire's message types (text format), so
//! that psql, `\x`, `\watch` and any driver read it as a query result.

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::CommandComplete;

/// A column's type, as the client is told it (values are sent as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int8,
    Float8,
    Bool,
}

impl Type {
    /// The type's OID and size in PostgreSQL's catalog.
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int8 => (20, 8),
            Type::Float8 => (701, 8),
            Type::Bool => (16, 1),
        }
    }
}

/// A value of a cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    /// The text form PostgreSQL would send.
    fn text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format!("{f:.3}")),
            Value::Bool(b) => Some(if *b { "t" } else { "f" }.to_owned()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Columns and rows, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<(&'static str, Type)>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        self.rows.push(row);
    }

    /// The messages of the result, ending with CommandComplete `tag`.
    pub fn encode(&self, tag: &str, out: &mut BytesMut) -> Result<(), EncodeError> {
        let fields = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let (oid, size) = ty.oid_and_size();
                FieldDescription::new((*name).to_owned(), 0, 0, oid, size, -1, 0)
            })
            .collect();
        RowDescription::new(fields)
            .encode(out)
            .map_err(|e| EncodeError(e.to_string()))?;
        let count = i16::try_from(self.columns.len()).map_err(|_| EncodeError("columns".into()))?;
        for row in &self.rows {
            let mut data = BytesMut::new();
            for value in row.iter().take(self.columns.len()) {
                match value.text() {
                    None => data.put_i32(-1),
                    Some(t) => {
                        let len =
                            i32::try_from(t.len()).map_err(|_| EncodeError("value".into()))?;
                        data.put_i32(len);
                        data.put_slice(t.as_bytes());
                    }
                }
            }
            // A short row is padded with NULLs: the count must match.
            for _ in row.len()..self.columns.len() {
                data.put_i32(-1);
            }
            DataRow::new(data, count)
                .encode(out)
                .map_err(|e| EncodeError(e.to_string()))?;
        }
        CommandComplete::new(format!("{tag} {}", self.rows.len()))
            .encode(out)
            .map_err(|e| EncodeError(e.to_string()))
    }
}

/// pgwire could not encode a message (a value beyond the protocol's sizes).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the console's answer: {0}")]
pub struct EncodeError(String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_frame, fields, tag};

    #[test]
    fn a_table_is_an_ordinary_result_set() {
        let mut t = Table::new(&[("name", Type::Text), ("n", Type::Int8), ("ok", Type::Bool)]);
        t.push(vec!["a".into(), Value::Int(3), Value::Bool(true)]);
        t.push(vec![Value::Null, Value::Int(-1)]);
        let mut out = BytesMut::new();
        t.encode("SELECT", &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tags = Vec::new();
        let mut bodies = Vec::new();
        while let Ok(Some(f)) = decode_frame(&mut out, 1 << 20) {
            tags.push(f.tag);
            bodies.push(f.body().to_vec());
        }
        assert_eq!(
            tags,
            [
                tag::backend::ROW_DESCRIPTION,
                tag::backend::DATA_ROW,
                tag::backend::DATA_ROW,
                tag::backend::COMMAND_COMPLETE
            ]
        );
        // Three columns; the first row's values as text.
        assert_eq!(&bodies[0][..2], &[0, 3]);
        assert_eq!(
            bodies[1],
            [
                &[0, 3][..],
                &[0, 0, 0, 1],
                b"a",
                &[0, 0, 0, 1],
                b"3",
                &[0, 0, 0, 1],
                b"t"
            ]
            .concat()
        );
        // The short row is padded with a NULL.
        assert_eq!(
            bodies[2],
            [
                &[0, 3][..],
                &[255, 255, 255, 255],
                &[0, 0, 0, 2],
                b"-1",
                &[255, 255, 255, 255]
            ]
            .concat()
        );
        assert_eq!(
            fields::command_tag(&bodies[3]).unwrap_or_default(),
            b"SELECT 2"
        );
    }
}
