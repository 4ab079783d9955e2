//! `env_file:` contents, read as Compose reads them.
//!
//! One `KEY=VALUE` a line; blank lines and lines starting with `#` are
//! skipped; an `export ` prefix is allowed. Unquoted values are trimmed and
//! lose a ` #` comment; `'single'` quotes keep the text as is; `"double"`
//! quotes understand `\n`, `\t`, `\"`, `\\` and may span lines. Unquoted and
//! double-quoted values are interpolated (earlier keys of the file are
//! visible); a line with a bare `KEY` takes the variable from the
//! interpolation environment and is skipped when it is unset.

use std::collections::BTreeMap;

use super::interpolate::{InterpolationError, Vars, interpolate};

/// One problem in an env file: 1-based line and column, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileIssue {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub fix: Option<String>,
}

/// What an env file held: the variables in order, warnings, errors.
#[derive(Debug, Default)]
pub struct EnvFile {
    pub vars: Vec<(String, String)>,
    pub warnings: Vec<EnvFileIssue>,
    pub errors: Vec<EnvFileIssue>,
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c == '.' || c == '-' || c.is_ascii_alphanumeric())
}

/// The variables an env file's values see: the file's earlier keys, then
/// the interpolation environment.
struct Scope<'e> {
    file: BTreeMap<String, String>,
    env: &'e dyn Vars,
}

impl Vars for Scope<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        match self.file.get(name) {
            Some(v) => Some(v),
            None => self.env.var(name),
        }
    }
}

/// Parses an env file's text.
pub fn parse(text: &str, env: &dyn Vars) -> EnvFile {
    let mut out = EnvFile::default();
    let mut scope = Scope {
        file: BTreeMap::new(),
        env,
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let raw = lines[i];
        i += 1;
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        let Some((key, value)) = body.split_once('=') else {
            let key = body.trim_end();
            if !valid_key(key) {
                out.errors.push(EnvFileIssue {
                    line: line_no,
                    column: indent + 1,
                    message: format!("expected `KEY=VALUE`, got {key:?}"),
                    fix: None,
                });
            } else if let Some(v) = env.var(key) {
                out.vars.push((key.to_string(), v.to_owned()));
                scope.file.insert(key.to_string(), v.to_owned());
            }
            continue;
        };
        let key = key.trim_end();
        if !valid_key(key) {
            out.errors.push(EnvFileIssue {
                line: line_no,
                column: indent + 1,
                message: format!("invalid variable name {key:?}"),
                fix: Some(
                    "names are letters, digits, `_`, `.` and `-`, not starting with a digit".into(),
                ),
            });
            continue;
        }
        let value_col = indent + (trimmed.len() - body.len()) + key.len() + 2;
        let value = value.trim_start();
        let interpolate_value =
            |text: &str, out: &mut EnvFile, scope: &Scope<'_>| match interpolate(text, scope) {
                Ok(r) => {
                    for name in r.unset {
                        out.warnings.push(EnvFileIssue {
                            line: line_no,
                            column: value_col,
                            message: format!("variable {name} is not set; using a blank string"),
                            fix: None,
                        });
                    }
                    Some(r.text)
                }
                Err(InterpolationError::Required { name, message }) => {
                    out.errors.push(EnvFileIssue {
                        line: line_no,
                        column: value_col,
                        message: format!("required variable {name} is missing: {message}"),
                        fix: Some(format!("set {name} in the environment you deploy from")),
                    });
                    None
                }
                Err(InterpolationError::Invalid { reason }) => {
                    out.errors.push(EnvFileIssue {
                        line: line_no,
                        column: value_col,
                        message: reason,
                        fix: None,
                    });
                    None
                }
            };
        let parsed = if let Some(rest) = value.strip_prefix('\'') {
            match rest.find('\'') {
                Some(end) => Some(rest[..end].to_string()),
                None => {
                    out.errors.push(EnvFileIssue {
                        line: line_no,
                        column: value_col,
                        message: "unterminated single quote".into(),
                        fix: None,
                    });
                    None
                }
            }
        } else if let Some(rest) = value.strip_prefix('"') {
            // Double quotes may span lines.
            let mut buf = String::new();
            let mut text = rest.to_string();
            let mut closed = None;
            loop {
                if let Some(end) = closing_quote(&text) {
                    buf.push_str(&text[..end]);
                    closed = Some(());
                    break;
                }
                buf.push_str(&text);
                match lines.get(i) {
                    Some(next) => {
                        buf.push('\n');
                        text = (*next).to_string();
                        i += 1;
                    }
                    None => break,
                }
            }
            if closed.is_none() {
                out.errors.push(EnvFileIssue {
                    line: line_no,
                    column: value_col,
                    message: "unterminated double quote".into(),
                    fix: None,
                });
                None
            } else {
                interpolate_value(&unescape(&buf), &mut out, &scope)
            }
        } else {
            let text = match value.find(" #") {
                Some(at) => &value[..at],
                None => value,
            };
            interpolate_value(text.trim_end(), &mut out, &scope)
        };
        if let Some(v) = parsed {
            scope.file.insert(key.to_string(), v.clone());
            out.vars.push((key.to_string(), v));
        }
    }
    out
}

/// Byte offset of the first `"` not escaped by a backslash.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let env: BTreeMap<String, String> = [("HOST".to_string(), "db".to_string())]
            .into_iter()
            .collect();
        let text = "# comment\n\nA=1\nexport B = two # note\nC='lit $X'\nD=\"x\\ny\"\nE=${HOST}:5432\nF=$A$A\nHOST\nMISSING\nG=\"multi\nline\"\n";
        let f = parse(text, &env);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        let vars: Vec<(&str, &str)> = f
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            vars,
            vec![
                ("A", "1"),
                ("B", "two"),
                ("C", "lit $X"),
                ("D", "x\ny"),
                ("E", "db:5432"),
                ("F", "11"),
                ("HOST", "db"),
                ("G", "multi\nline"),
            ]
        );
    }

    #[test]
    fn errors_have_lines() {
        let f = parse("A=1\n9X=2\nB=\"open\n", &BTreeMap::new());
        let lines: Vec<usize> = f.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3]);
    }
}
