//! What an audit record may show: secret-looking fields masked, and the before/after document of
//! a change reduced to the fields that changed. Pure functions, table-tested.

use serde_json::{Map, Value};

/// What a masked value is replaced with.
pub const MASK: &str = "********";

/// Words that make a field name secret-looking (`apiKey`, `DB_PASSWORD`, `clientSecret`, …).
const SECRET_WORDS: &[&str] = &[
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "token",
    "tokens",
    "key",
    "keys",
    "apikey",
    "credential",
    "credentials",
    "authorization",
];

/// A last word that names something *about* a secret rather than the secret itself
/// (`tokenId`, `keyName`, `passwordExpiresAt`).
const ABOUT_WORDS: &[&str] = &["id", "ids", "name", "names", "type", "count", "at", "version", "rotated"];

/// Fields whose name looks secret but whose value is not.
const NOT_SECRET: &[&str] = &["idempotencyKey"];

/// Maps whose values are never secrets, whatever their keys are called (a deployment's `env`:
/// plain configuration; secrets live in `secrets`, which is masked).
const PLAIN_MAPS: &[&str] = &["env"];

/// The lowercase words of a field name: split at `_`, `-`, `.`, spaces and camelCase humps.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Whether a field of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    if NOT_SECRET.contains(&name) {
        return false;
    }
    let words = words(name);
    let joined = words.concat();
    let secret = words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
        || ["apikey", "privatekey", "accesskey", "secretkey"].iter().any(|s| joined.contains(s));
    secret && !words.last().is_some_and(|w| ABOUT_WORDS.contains(&w.as_str()))
}

/// Masks, in place, every value under a secret-looking field name (keeping the names inside a
/// masked map, so `secrets: {"DB": "x"}` shows which secrets exist but not their values). The
/// values of plain maps (a deployment's `env`) are left as they are.
pub fn mask(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if PLAIN_MAPS.contains(&k.as_str()) && v.is_object() {
                    continue;
                }
                if is_secret_name(k) {
                    mask_all(v);
                } else {
                    mask(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

fn mask_all(value: &mut Value) {
    match value {
        Value::Null => {}
        Value::Object(map) => map.values_mut().for_each(mask_all),
        Value::Array(items) => items.iter_mut().for_each(mask_all),
        other => *other = Value::String(MASK.into()),
    }
}

/// The `changes` document of an audit record: `{"before": …, "after": …}` holding only what
/// differs. Objects are compared field by field (recursively); a field present on one side only
/// appears on that side; anything else that differs appears whole on both sides. `None` for a
/// side that does not exist (a creation has no before, a deletion no after).
pub fn changes(before: Option<&Value>, after: Option<&Value>) -> Value {
    let (b, a) = match (before, after) {
        (Some(b), Some(a)) => diff(b, a).unwrap_or_else(|| (Value::Object(Map::new()), Value::Object(Map::new()))),
        (b, a) => (b.cloned().unwrap_or(Value::Null), a.cloned().unwrap_or(Value::Null)),
    };
    serde_json::json!({ "before": b, "after": a })
}

/// `(before, after)` reduced to what differs; `None` if equal.
fn diff(before: &Value, after: &Value) -> Option<(Value, Value)> {
    if before == after {
        return None;
    }
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return Some((before.clone(), after.clone()));
    };
    let (mut bo, mut ao) = (Map::new(), Map::new());
    for (k, bv) in b {
        match a.get(k) {
            None => {
                bo.insert(k.clone(), bv.clone());
            }
            Some(av) => {
                if let Some((bd, ad)) = diff(bv, av) {
                    bo.insert(k.clone(), bd);
                    ao.insert(k.clone(), ad);
                }
            }
        }
    }
    for (k, av) in a {
        if !b.contains_key(k) {
            ao.insert(k.clone(), av.clone());
        }
    }
    Some((Value::Object(bo), Value::Object(ao)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secret_looking_names() {
        for name in [
            "password",
            "DB_PASSWORD",
            "apiKey",
            "api_key",
            "X-API-Key",
            "clientSecret",
            "secrets",
            "token",
            "accessToken",
            "privateKey",
            "awsSecretAccessKey",
            "credentials",
            "Authorization",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "name",
            "tokenId",
            "keyName",
            "idempotencyKey",
            "monkey",
            "keyboard",
            "replicas",
            "passwordExpiresAt",
            "env",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn masking_keeps_names_and_structure_and_leaves_env_alone() {
        let mut v = json!({
            "name": "web",
            "password": "hunter2",
            "apiKey": null,
            "configuration": {
                "env": { "API_TOKEN": "not-a-secret", "MODE": "prod" },
                "secrets": { "DB_PASSWORD": "s3cret", "TLS": { "cert": "c", "n": 3 } },
                "args": ["--token", "x"],
            },
            "tokens": ["a", "b"],
            "list": [{ "secret": "x", "ok": 1 }],
            "idempotencyKey": "retry-1",
        });
        mask(&mut v);
        assert_eq!(
            v,
            json!({
                "name": "web",
                "password": MASK,
                "apiKey": null,
                "configuration": {
                    "env": { "API_TOKEN": "not-a-secret", "MODE": "prod" },
                    "secrets": { "DB_PASSWORD": MASK, "TLS": { "cert": MASK, "n": MASK } },
                    "args": ["--token", "x"],
                },
                "tokens": [MASK, MASK],
                "list": [{ "secret": MASK, "ok": 1 }],
                "idempotencyKey": "retry-1",
            })
        );
        // An `env` that is not a map is not exempt.
        let mut v = json!({ "secrets": { "env": "x" } });
        mask(&mut v);
        assert_eq!(v, json!({ "secrets": { "env": MASK } }));
    }

    #[test]
    fn changes_hold_only_what_differs() {
        let before = json!({ "replicas": 1, "version": "v1", "configuration": { "env": { "A": "1", "B": "2" }, "command": "x" } });
        let after = json!({ "replicas": 3, "version": "v1", "configuration": { "env": { "A": "1", "C": "3" }, "command": "x" } });
        assert_eq!(
            changes(Some(&before), Some(&after)),
            json!({
                "before": { "replicas": 1, "configuration": { "env": { "B": "2" } } },
                "after": { "replicas": 3, "configuration": { "env": { "C": "3" } } },
            })
        );
        assert_eq!(changes(Some(&before), Some(&before)), json!({ "before": {}, "after": {} }));
        assert_eq!(changes(None, Some(&after)), json!({ "before": null, "after": after }));
        assert_eq!(changes(Some(&before), None), json!({ "before": before, "after": null }));
        // Different shapes appear whole.
        assert_eq!(
            changes(Some(&json!({ "t": { "a": 1 } })), Some(&json!({ "t": ["a"] }))),
            json!({ "before": { "t": { "a": 1 } }, "after": { "t": ["a"] } })
        );
    }
}
