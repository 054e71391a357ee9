//! `$(NAME)` references in a replica's `command` and `args`, expanded like Kubernetes does.

use std::ffi::OsString;

/// Expands the references in `input` against `env` (a replica's complete environment):
///
/// * `$(NAME)` becomes NAME's value; it stays as written when NAME is not in `env`, or when no
///   `)` closes it (so a shell's `$(command)` survives unless a variable has that name);
/// * `$$` becomes `$`, which makes `$$(NAME)` the literal `$(NAME)`;
/// * any other `$` is kept.
///
/// The result is a single argument: values are not split or interpreted, and no shell is
/// involved.
pub(crate) fn expand(input: &str, env: &[(OsString, OsString)]) -> OsString {
    let lookup = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_os_str());
    let mut out = OsString::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push("$");
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|body| body.split_once(')')) {
            match lookup(name) {
                Some(value) => out.push(value),
                None => {
                    out.push("$(");
                    out.push(name);
                    out.push(")");
                }
            }
            rest = tail;
        } else {
            out.push("$");
            rest = after;
        }
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn env() -> Vec<(OsString, OsString)> {
        [("PORT", "8080"), ("FERRY_REPLICA", "2"), ("EMPTY", ""), ("A", "$(PORT)"), ("SPACED", "a b")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    #[test]
    fn kubernetes_expansion_table() {
        let cases = [
            // Plain strings and lone dollars are untouched.
            ("", ""),
            ("http.server", "http.server"),
            ("$", "$"),
            ("a$", "a$"),
            ("$PORT", "$PORT"),
            ("${PORT}", "${PORT}"),
            ("$1", "$1"),
            // References.
            ("$(PORT)", "8080"),
            ("--port=$(PORT)", "--port=8080"),
            ("$(PORT)$(FERRY_REPLICA)", "80802"),
            ("x$(EMPTY)y", "xy"),
            ("$(SPACED)", "a b"),
            // Values are not expanded again.
            ("$(A)", "$(PORT)"),
            // Undefined names, empty names and unclosed references stay as written.
            ("$(NOPE)", "$(NOPE)"),
            ("$(pwd)/bin", "$(pwd)/bin"),
            ("$()", "$()"),
            ("$(PORT", "$(PORT"),
            ("$(PORT $(FERRY_REPLICA)", "$(PORT $(FERRY_REPLICA)"),
            ("$((PORT)", "$((PORT)"),
            ("$(PORT))", "8080)"),
            // `$$` is an escaped `$`.
            ("$$(PORT)", "$(PORT)"),
            ("$$$(PORT)", "$8080"),
            ("$$$$(PORT)", "$$(PORT)"),
            ("$$", "$"),
            ("$$$", "$$"),
            ("echo $$", "echo $"),
            // Multi-byte text around references.
            ("é$(PORT)ü", "é8080ü"),
        ];
        let env = env();
        for (input, want) in cases {
            assert_eq!(expand(input, &env), OsString::from(want), "{input:?}");
        }
    }

    #[test]
    fn values_need_not_be_utf8() {
        let value = OsString::from_vec(vec![b'a', 0xff, b'b']);
        let env = vec![(OsString::from("RAW"), value.clone())];
        let mut want = OsString::from("<");
        want.push(&value);
        want.push(">");
        assert_eq!(expand("<$(RAW)>", &env), want);
    }
}
