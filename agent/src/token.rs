//! Bootstrap tokens: `ferry1.<id>.<secret>.<ca_fingerprint>`.
//!
//! The agent only needs the fingerprint (to pin the control plane's CA during enrollment); the
//! whole token is sent as-is in the enrollment request. The secret is never logged: the
//! [`ParsedToken`] `Debug` output and every [`TokenError`] message leave it out.

use std::fmt;

/// The token format version prefix.
pub const TOKEN_PREFIX: &str = "ferry1";

/// A syntactically valid bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub id: String,
    pub secret: String,
    /// SHA-256 of the CA certificate's DER, 64 lowercase hex characters.
    pub ca_fingerprint: String,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("expected {TOKEN_PREFIX}.<id>.<secret>.<ca-fingerprint>, found {0} dot-separated part(s)")]
    PartCount(usize),
    #[error("the token must start with \"{TOKEN_PREFIX}.\"")]
    Prefix,
    #[error("the token's {0} is empty")]
    Empty(&'static str),
    #[error("the token's {0} may only contain letters, digits, '-' and '_'")]
    Charset(&'static str),
    #[error("the token's CA fingerprint must be 64 lowercase hex characters")]
    Fingerprint,
}

/// Parses a bootstrap token. Surrounding whitespace is ignored.
pub fn parse_token(token: &str) -> Result<ParsedToken, TokenError> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [prefix, id, secret, fingerprint] = parts[..] else {
        return Err(TokenError::PartCount(parts.len()));
    };
    if prefix != TOKEN_PREFIX {
        return Err(TokenError::Prefix);
    }
    for (part, what) in [(id, "id"), (secret, "secret")] {
        if part.is_empty() {
            return Err(TokenError::Empty(what));
        }
        if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(TokenError::Charset(what));
        }
    }
    if fingerprint.is_empty() {
        return Err(TokenError::Empty("CA fingerprint"));
    }
    if !is_lower_hex(fingerprint, 64) {
        return Err(TokenError::Fingerprint);
    }
    Ok(ParsedToken { id: id.to_string(), secret: secret.to_string(), ca_fingerprint: fingerprint.to_string() })
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn valid_token_parses() {
        let t = parse_token(&format!("  ferry1.0a1b2c3d4e5f6071.s3cr3t_-X.{}\n", fp())).unwrap();
        assert_eq!(t.id, "0a1b2c3d4e5f6071");
        assert_eq!(t.secret, "s3cr3t_-X");
        assert_eq!(t.ca_fingerprint, fp());
    }

    #[test]
    fn rejections() {
        let fp = fp();
        let cases: Vec<(String, TokenError)> = vec![
            (String::new(), TokenError::PartCount(1)),
            ("garbage".into(), TokenError::PartCount(1)),
            (format!("ferry1.id.{fp}"), TokenError::PartCount(3)),
            (format!("ferry1.id.secret.{fp}.extra"), TokenError::PartCount(5)),
            (format!("ferry2.id.secret.{fp}"), TokenError::Prefix),
            (format!("FERRY1.id.secret.{fp}"), TokenError::Prefix),
            (format!("ferry1..secret.{fp}"), TokenError::Empty("id")),
            (format!("ferry1.id..{fp}"), TokenError::Empty("secret")),
            ("ferry1.id.secret.".into(), TokenError::Empty("CA fingerprint")),
            (format!("ferry1.i d.secret.{fp}"), TokenError::Charset("id")),
            (format!("ferry1.id.sec/ret.{fp}"), TokenError::Charset("secret")),
            (format!("ferry1.id.secret.{}", fp.to_uppercase()), TokenError::Fingerprint),
            (format!("ferry1.id.secret.{}", &fp[1..]), TokenError::Fingerprint),
            (format!("ferry1.id.secret.{}0", fp), TokenError::Fingerprint),
            (format!("ferry1.id.secret.{}", "g".repeat(64)), TokenError::Fingerprint),
        ];
        for (input, want) in cases {
            assert_eq!(parse_token(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn secret_never_appears_in_debug_or_errors() {
        let t = parse_token(&format!("ferry1.id.topsecretvalue.{}", fp())).unwrap();
        assert!(!format!("{t:?}").contains("topsecretvalue"));
        let err = parse_token("ferry1.id.topsecretvalue.nothex").unwrap_err();
        assert!(!err.to_string().contains("topsecretvalue"));
    }
}
