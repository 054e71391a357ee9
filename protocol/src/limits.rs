//! Limits on values both ends exchange, checked the same way on both sides.

use std::collections::BTreeMap;

pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 63;

/// Label keys: 1-63 of `[A-Za-z0-9._/-]`; values: 0-63 of `[A-Za-z0-9._-]` (Kubernetes-like).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_LEN
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !key_ok {
            return Err(format!("invalid label key {k:?}: 1-{MAX_LABEL_LEN} characters of [A-Za-z0-9._/-]"));
        }
        let value_ok = v.len() <= MAX_LABEL_LEN && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !value_ok {
            return Err(format!("invalid value for label {k:?}: at most {MAX_LABEL_LEN} characters of [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

/// Agent names: 1-63 printable ASCII characters without spaces.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("invalid name {name:?}: 1-{MAX_NAME_LEN} printable characters without spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        let ok = BTreeMap::from([("zone".into(), "eu-1".into()), ("team/app".into(), String::new())]);
        assert!(validate_labels(&ok).is_ok());
        for (k, v) in [("", "x"), ("a b", "x"), ("k", "a/b"), ("k", &"v".repeat(64))] {
            assert!(validate_labels(&BTreeMap::from([(k.to_string(), v.to_string())])).is_err(), "{k:?}={v:?}");
        }
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels(&many).is_err());
        assert!(validate_name("host-1").is_ok());
        assert!(validate_name("").is_err() && validate_name("a b").is_err());
    }
}
