//! Variable interpolation as Compose does it.
//!
//! `$$` is a literal `$`; `$VAR` and `${VAR}` take the variable's value (a
//! blank string, with a warning, when it is not set); `${VAR:-default}` and
//! `${VAR-default}` give a default when the variable is unset or empty
//! (`:-`) or only when unset (`-`); `${VAR:?message}` and `${VAR?message}`
//! make a missing (or empty, with `:`) variable an error; `${VAR:+other}`
//! and `${VAR+other}` give `other` when the variable is set (and not empty,
//! with `:`). Defaults and messages may themselves hold `${...}`. A `$`
//! followed by anything else is an error, as in Compose.

use std::collections::BTreeMap;

/// Where interpolation reads variables: a map, or a view of one that
/// records what was read (the parser's, so a parse can be repeated
/// elsewhere with only those).
pub trait Vars {
    /// The variable's value, if it is set.
    fn var(&self, name: &str) -> Option<&str>;
}

impl Vars for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// What interpolation found wrong in one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// A required variable (`${VAR:?msg}`) is missing.
    Required { name: String, message: String },
    /// The text is not a valid template.
    Invalid { reason: String },
}

/// The result of interpolating one string: the text, and the variables that
/// were used without being set (Compose warns about each).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    pub unset: Vec<String>,
}

/// Interpolates `input` against `env`.
pub fn interpolate(input: &str, env: &dyn Vars) -> Result<Interpolated, InterpolationError> {
    let mut out = Interpolated::default();
    expand(input, env, &mut out, 0)?;
    Ok(out)
}

const MAX_NESTING: usize = 16;

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn invalid(input: &str, why: &str) -> InterpolationError {
    InterpolationError::Invalid {
        reason: format!("invalid interpolation in {input:?}: {why}"),
    }
}

fn expand(
    input: &str,
    env: &dyn Vars,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpolationError> {
    if depth > MAX_NESTING {
        return Err(invalid(input, "defaults nested too deeply"));
    }
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.text.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_start = 1;
                let close = matching_brace(&after[body_start..])
                    .ok_or_else(|| invalid(input, "`${` without a closing `}`"))?;
                let body = &after[body_start..body_start + close];
                braced(input, body, env, out, depth)?;
                rest = &after[body_start + close + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .char_indices()
                    .find(|(_, c)| !is_name_char(*c))
                    .map_or(after.len(), |(i, _)| i);
                let name = &after[..len];
                lookup(name, env, out);
                rest = &after[len..];
            }
            _ => {
                return Err(invalid(
                    input,
                    "`$` must be followed by a variable name or `{`",
                ));
            }
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// Byte offset of the `}` closing a `${` whose body starts at `s`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn lookup(name: &str, env: &dyn Vars, out: &mut Interpolated) {
    match env.var(name) {
        Some(v) => out.text.push_str(v),
        None => {
            if !out.unset.iter().any(|n| n == name) {
                out.unset.push(name.to_string());
            }
        }
    }
}

fn braced(
    input: &str,
    body: &str,
    env: &dyn Vars,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpolationError> {
    let name_len = body
        .char_indices()
        .find(|(_, c)| !is_name_char(*c))
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(invalid(
            input,
            "a variable name must start with a letter or `_`",
        ));
    }
    let op = &body[name_len..];
    let value = env.var(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    let present = if colon { non_empty } else { set };
    if op.is_empty() && !colon {
        lookup(name, env, out);
        return Ok(());
    }
    let mut chars = op.chars();
    let kind = chars.next();
    let arg = chars.as_str();
    match kind {
        Some('-') => {
            if present {
                out.text.push_str(value.unwrap_or(""));
            } else {
                expand(arg, env, out, depth + 1)?;
            }
        }
        Some('+') => {
            if present {
                expand(arg, env, out, depth + 1)?;
            }
        }
        Some('?') => {
            if present {
                out.text.push_str(value.unwrap_or(""));
            } else {
                let mut msg = Interpolated::default();
                expand(arg, env, &mut msg, depth + 1)?;
                return Err(InterpolationError::Required {
                    name: name.to_string(),
                    message: msg.text,
                });
            }
        }
        _ => {
            return Err(invalid(
                input,
                "expected `}`, `:-`, `-`, `:?`, `?`, `:+` or `+` after the variable name",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "1"), ("EMPTY", ""), ("B", "two")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ok(s: &str) -> String {
        interpolate(s, &env())
            .map(|i| i.text)
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn forms() {
        assert_eq!(ok("x$A-${B}"), "x1-two");
        assert_eq!(ok("$$A"), "$A");
        assert_eq!(ok("${EMPTY:-d}|${EMPTY-d}|${NOPE-d}"), "d||d");
        assert_eq!(ok("${A:+yes}|${EMPTY:+yes}|${EMPTY+yes}"), "yes||yes");
        assert_eq!(ok("${NOPE:-${B:-x}}"), "two");
        assert_eq!(ok("${NOPE:-a}}"), "a}");
        assert!(ok("${NOPE:?must be set}").starts_with("ERR Required"));
        assert_eq!(ok("${EMPTY?fine}"), "");
        assert!(ok("${EMPTY:?no}").starts_with("ERR Required"));
        assert!(ok("cost $5").starts_with("ERR Invalid"));
        assert!(ok("${A").starts_with("ERR Invalid"));
        assert!(ok("${1A}").starts_with("ERR Invalid"));
        assert!(ok("${A!x}").starts_with("ERR Invalid"));
    }

    #[test]
    fn unset_is_reported() {
        let r = interpolate("${X}$X${Y:-y}", &env()).ok();
        assert_eq!(
            r,
            Some(Interpolated {
                text: "y".into(),
                unset: vec!["X".into()]
            })
        );
    }
}
