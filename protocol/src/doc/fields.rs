//! Small typed readers and writers for scalar fields of Automerge maps.

use automerge::{
    AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
    transaction::Transactable,
};

use crate::error::{Error, Result};

pub(crate) fn get_scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> Result<Option<ScalarValue>> {
    match doc.get(obj, key)? {
        Some((Value::Scalar(s), _)) => Ok(Some(s.into_owned())),
        Some((Value::Object(_), _)) => Err(Error::document(format!("'{key}' is an object"))),
        None => Ok(None),
    }
}

pub(crate) fn get_str(doc: &AutoCommit, obj: &ObjId, key: &str) -> Result<Option<String>> {
    as_str(key, get_scalar(doc, obj, key)?)
}

/// Every field of a map of scalars, read in one pass (one seek instead of
/// one per field); a field holding an object is an error.
pub(crate) struct Fields(std::collections::BTreeMap<String, Option<ScalarValue>>);

impl Fields {
    pub(crate) fn read(doc: &AutoCommit, obj: &ObjId) -> Fields {
        Fields(
            doc.map_range(obj, ..)
                .map(|item| {
                    let v = match item.value.into_value() {
                        Value::Scalar(s) => Some(s.into_owned()),
                        Value::Object(_) => None,
                    };
                    (item.key.to_string(), v)
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Result<Option<ScalarValue>> {
        match self.0.get(key) {
            Some(Some(v)) => Ok(Some(v.clone())),
            Some(None) => Err(Error::document(format!("'{key}' is an object"))),
            None => Ok(None),
        }
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<String>> {
        as_str(key, self.get(key)?)
    }

    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>> {
        as_u64(key, self.get(key)?)
    }

    pub(crate) fn i64(&self, key: &str) -> Result<Option<i64>> {
        as_i64(key, self.get(key)?)
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key)? {
            Some(ScalarValue::Boolean(b)) => Ok(Some(b)),
            Some(ScalarValue::Null) | None => Ok(None),
            Some(_) => Err(Error::document(format!("'{key}' is not true or false"))),
        }
    }
}

fn as_str(key: &str, v: Option<ScalarValue>) -> Result<Option<String>> {
    match v {
        Some(ScalarValue::Str(s)) => Ok(Some(s.to_string())),
        Some(ScalarValue::Null) | None => Ok(None),
        Some(_) => Err(Error::document(format!("'{key}' is not a string"))),
    }
}

fn as_u64(key: &str, v: Option<ScalarValue>) -> Result<Option<u64>> {
    match v {
        Some(ScalarValue::Uint(v)) => Ok(Some(v)),
        Some(ScalarValue::Int(v)) if v >= 0 => Ok(Some(v as u64)),
        Some(ScalarValue::Null) | None => Ok(None),
        Some(_) => Err(Error::document(format!(
            "'{key}' is not an unsigned number"
        ))),
    }
}

fn as_i64(key: &str, v: Option<ScalarValue>) -> Result<Option<i64>> {
    match v {
        Some(ScalarValue::Int(v)) => Ok(Some(v)),
        Some(ScalarValue::Uint(v)) => Ok(i64::try_from(v).ok()),
        Some(ScalarValue::Null) | None => Ok(None),
        Some(_) => Err(Error::document(format!("'{key}' is not a number"))),
    }
}

/// The map object under `key`, which must exist.
pub(crate) fn map(doc: &AutoCommit, parent: &ObjId, key: &str) -> Result<ObjId> {
    match doc.get(parent, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        Some(_) => Err(Error::document(format!("'{key}' is not a map"))),
        None => Err(Error::document(format!("missing '{key}'"))),
    }
}

/// Every entry of a map whose values are JSON strings, parsed and checked;
/// the ones that fail go to `skipped` as (`map/key`, why).
pub(crate) fn json_entries<T: serde::de::DeserializeOwned + super::Checked>(
    doc: &AutoCommit,
    obj: &ObjId,
    map_name: &str,
    skipped: &super::Skipped,
) -> Vec<(String, T)> {
    let mut out = Vec::new();
    for item in doc.map_range(obj, ..) {
        let key = item.key.to_string();
        let parsed = match item.value {
            ValueRef::Scalar(ScalarValueRef::Str(text)) => parse_checked::<T>(&key, &text),
            _ => Err(Error::document("not a string")),
        };
        match parsed {
            Ok(v) => out.push((key, v)),
            Err(e) => skipped.record(format!("{map_name}/{key}"), e.to_string()),
        }
    }
    out
}

/// One JSON value, parsed and checked against the key it sits under.
pub(crate) fn parse_checked<T: serde::de::DeserializeOwned + super::Checked>(
    key: &str,
    text: &str,
) -> Result<T> {
    let v: T =
        serde_json::from_str(text).map_err(|e| Error::document(format!("does not parse: {e}")))?;
    v.check(key)?;
    Ok(v)
}

pub(crate) fn put_json<T: serde::Serialize>(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &T,
) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::document(e.to_string()))?;
    // Equal values are not rewritten: keeps history small and merges quiet.
    if get_str(doc, obj, key)?.as_deref() != Some(text.as_str()) {
        doc.put(obj, key, text)?;
    }
    Ok(())
}
