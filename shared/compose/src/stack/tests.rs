//! The Compose corpus under `testdata/compose/` and property tests.
//!
//! Each `NAME.yml` is parsed with the directory `/project`, an in-memory
//! file system holding `testdata/compose/files/*` as `/project/files/*`,
//! and a fixed environment (plus `# test-env: KEY=value` lines from the
//! file itself). The result, a JSON rendering of the model and the
//! warnings, or the errors and warnings, must equal `NAME.expected`.
//! `SKIFF_BLESS=1 cargo test -p skiff-compose stack::` rewrites the
//! expectations. Files named `valid-*` must give a plan, `invalid-*` errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{Diagnostic, Input, StackError, parse};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/compose")
}

fn base_env() -> BTreeMap<String, String> {
    [
        ("TAG", "1.4.2"),
        ("REGISTRY", "registry.example.com"),
        ("HOME", "/home/deploy"),
        ("DB_PASSWORD", "s3cret"),
        ("EMPTY", ""),
        ("WEB_REPLICAS", "3"),
        ("API_TOKEN", "token-from-env"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn memory_files() -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let dir = corpus_dir().join("files");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if let (Some(name), Ok(text)) = (path.file_name(), std::fs::read_to_string(&path)) {
                files.insert(Path::new("/project/files").join(name), text);
            }
        }
    }
    files
}

fn env_for(text: &str) -> BTreeMap<String, String> {
    let mut env = base_env();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# test-env:") {
            let (k, v) = rest.trim().split_once('=').unwrap_or((rest.trim(), ""));
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

fn render_list(out: &mut String, title: &str, list: &[Diagnostic]) {
    out.push_str(title);
    out.push_str(":\n");
    for d in list {
        out.push_str("  ");
        out.push_str(&d.render());
        out.push('\n');
    }
}

fn prune(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| {
                prune(v);
                !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty()))
            });
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

/// The stable, readable form stored in `NAME.expected`.
fn render(result: &Result<super::Parsed, StackError>) -> String {
    let mut out = String::new();
    match result {
        Ok(parsed) => {
            render_list(&mut out, "warnings", &parsed.warnings);
            out.push_str("plan:\n");
            // Nulls and empty mappings are left out to keep the files short;
            // empty lists stay (`entrypoint: []` clears the image's).
            let mut json = serde_json::to_value(&parsed.stack).unwrap_or_default();
            prune(&mut json);
            out.push_str(
                &serde_json::to_string_pretty(&json)
                    .unwrap_or_else(|e| format!("unserializable: {e}")),
            );
            out.push('\n');
        }
        Err(e) => {
            render_list(&mut out, "errors", &e.errors);
            render_list(&mut out, "warnings", &e.warnings);
        }
    }
    out
}

fn parse_named(
    name: &str,
    text: &str,
    files: &BTreeMap<PathBuf, String>,
) -> Result<super::Parsed, StackError> {
    let env = env_for(text);
    let input = Input::new(text, name, Path::new("/project"), &env).with_files(files);
    parse(&input)
}

#[test]
fn corpus() {
    let dir = corpus_dir();
    let bless = std::env::var_os("SKIFF_BLESS").is_some_and(|v| v == "1");
    let files = memory_files();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    assert!(
        cases.len() >= 40,
        "the corpus holds only {} files",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(case).unwrap_or_default();
        let result = parse_named(&name, &text, &files);
        match (
            &result,
            name.starts_with("valid-"),
            name.starts_with("invalid-"),
        ) {
            (Ok(_), _, true) => failures.push(format!("{name}: expected errors, got a plan")),
            (Err(e), true, _) => {
                failures.push(format!("{name}: expected a plan, got errors:\n{e}"))
            }
            (Ok(_), false, false) | (Err(_), false, false) => {
                failures.push(format!("{name}: name it valid-* or invalid-*"))
            }
            _ => {}
        }
        if let Err(e) = &result {
            for d in e.errors.iter() {
                if d.line == 0 || d.column == 0 {
                    failures.push(format!("{name}: diagnostic without a position: {d}"));
                }
            }
        }
        if let Ok(parsed) = &result {
            // Releases store the model as JSON: it must read back the same.
            let back = serde_json::to_string(&parsed.stack)
                .ok()
                .and_then(|j| serde_json::from_str::<super::Stack>(&j).ok());
            if back.as_ref() != Some(&parsed.stack) {
                failures.push(format!(
                    "{name}: the model does not survive a JSON round trip"
                ));
            }
        }
        let got = render(&result);
        let expected_path = case.with_extension("expected");
        if bless {
            if let Err(e) = std::fs::write(&expected_path, &got) {
                failures.push(format!("{name}: cannot write expectation: {e}"));
            }
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            failures.push(format!(
                "{name}: result differs from {}\n--- got ---\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed (SKIFF_BLESS=1 rewrites expectations):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_unsupported_key_is_in_the_module_doc_table() {
    let doc = include_str!("mod.rs");
    let keys = super::convert::SERVICE_ERRORS
        .iter()
        .map(|(k, _, _)| *k)
        .chain(super::convert::SERVICE_WARNINGS.iter().map(|(k, _)| *k));
    for key in keys {
        assert!(
            doc.contains(&format!("`{key}`")),
            "`{key}` is missing from the table in stack/mod.rs"
        );
    }
}

/// The environment and files a parse's [`super::Uses`] hold, as the
/// coordinator rebuilds them from a deploy request: values of what was
/// read, placeholders for what only had to exist.
fn replay(uses: &super::Uses) -> (BTreeMap<String, String>, BTreeMap<PathBuf, String>) {
    let mut env = uses.variables.clone();
    for name in &uses.variables_set {
        env.entry(name.clone()).or_default();
    }
    let mut files = uses.files.clone();
    for path in &uses.files_present {
        files.entry(path.clone()).or_default();
    }
    (env, files)
}

#[test]
fn every_valid_file_parses_the_same_from_what_it_used() {
    let files = memory_files();
    let mut checked = 0;
    for text in valid_texts() {
        let env = env_for(&text);
        let input = Input::new(&text, "f.yml", Path::new("/project"), &env).with_files(&files);
        let Ok(mut first) = parse(&input) else {
            continue;
        };
        if super::inline_configs(&mut first, &input).is_err() {
            continue;
        }
        let (env2, files2) = replay(&first.uses);
        let input2 = Input::new(&text, "f.yml", Path::new("/project"), &env2).with_files(&files2);
        let again = parse(&input2).and_then(|mut p| {
            super::inline_configs(&mut p, &input2)
                .map(|()| p)
                .map_err(|e| StackError {
                    errors: vec![],
                    warnings: vec![Diagnostic {
                        severity: super::Severity::Error,
                        file: e,
                        line: 0,
                        column: 0,
                        path: String::new(),
                        message: String::new(),
                        fix: None,
                    }],
                })
        });
        let again = again.unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(again.stack, first.stack, "{text}");
        assert_eq!(again.warnings, first.warnings, "{text}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} files checked");
}

#[test]
fn uses_hold_what_was_read_and_secret_values_stay_out() {
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("/p/app.env"),
        "FROM_FILE=${TAG}\nBARE\n".to_owned(),
    );
    files.insert(PathBuf::from("/p/key.pem"), "secret key".to_owned());
    files.insert(PathBuf::from("/p/site.conf"), "listen 80;\n".to_owned());
    files.insert(PathBuf::from("/p/unused.txt"), "not read".to_owned());
    let env: BTreeMap<String, String> = [
        ("TAG", "1.2"),
        ("BARE", "bare"),
        ("LISTED", "listed"),
        ("DB_PASSWORD", "hunter2"),
        ("SITE_NAME", "shop"),
        ("UNRELATED", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let text = "services:\n  app:\n    image: app:${TAG}\n    command: [\"${MISSING:-x}\"]\n    env_file: app.env\n    environment: [LISTED]\n    secrets: [db, key]\n    configs: [site, name]\nsecrets:\n  db: {environment: DB_PASSWORD}\n  key: {file: ./key.pem}\nconfigs:\n  site: {file: ./site.conf}\n  name: {environment: SITE_NAME}\n";
    let input = Input::new(text, "compose.yml", Path::new("/p"), &env).with_files(&files);
    let mut parsed = parse(&input).unwrap_or_else(|e| panic!("{e}"));
    super::inline_configs(&mut parsed, &input).unwrap_or_else(|e| panic!("{e}"));
    let uses = &parsed.uses;
    let vars: Vec<(&str, &str)> = uses
        .variables
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        vars,
        vec![
            ("BARE", "bare"),
            ("LISTED", "listed"),
            ("SITE_NAME", "shop"),
            ("TAG", "1.2")
        ]
    );
    assert_eq!(
        uses.variables_set.iter().collect::<Vec<_>>(),
        vec!["DB_PASSWORD"],
        "a secret's variable is named, its value is not sent"
    );
    assert_eq!(
        uses.files.keys().collect::<Vec<_>>(),
        vec![Path::new("/p/app.env"), Path::new("/p/site.conf")]
    );
    assert_eq!(
        uses.files_present.iter().collect::<Vec<_>>(),
        vec![Path::new("/p/key.pem"), Path::new("/p/site.conf")]
    );
    let shown = format!("{uses:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("1.2"),
        "{shown}"
    );
    assert!(matches!(
        &parsed.stack.configs["site"].source,
        super::ConfigSource::Content(c) if c == "listen 80;\n"
    ));
}

#[test]
fn configs_that_cannot_be_read_are_named() {
    let files: BTreeMap<PathBuf, String> = BTreeMap::new();
    let env = BTreeMap::new();
    let text =
        "services:\n  app:\n    image: app\n    configs: [name]\nconfigs:\n  name: {content: x}\n";
    let input = Input::new(text, "compose.yml", Path::new("/p"), &env).with_files(&files);
    let mut parsed = parse(&input).unwrap_or_else(|e| panic!("{e}"));
    parsed.stack.configs.insert(
        "gone".into(),
        super::ConfigDef {
            source: super::ConfigSource::File("/p/gone.conf".into()),
            labels: BTreeMap::new(),
        },
    );
    let err = super::inline_configs(&mut parsed, &input).err();
    assert_eq!(
        err.as_deref(),
        Some("config gone: cannot read /p/gone.conf: no such file")
    );
}

#[test]
fn default_file_source_reads_the_disk() {
    let dir = std::env::temp_dir().join(format!("skiff-stack-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let written = std::fs::write(dir.join("app.env"), "FROM_DISK=yes\n");
    assert!(written.is_ok());
    let env = BTreeMap::new();
    let text = "services:\n  app:\n    image: app\n    env_file: app.env\n";
    let result = parse(&Input::new(text, "compose.yml", &dir, &env));
    let _ = std::fs::remove_dir_all(&dir);
    let env = result.map(|p| p.stack.services["app"].environment.clone());
    assert_eq!(
        env.ok()
            .and_then(|e| e.get("FROM_DISK").cloned())
            .as_deref(),
        Some("yes")
    );
}

#[test]
fn errors_render_as_file_line_column_path_message() {
    let env = BTreeMap::new();
    let text = "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: three\n";
    let files = BTreeMap::new();
    let err = parse(&Input::new(text, "compose.yml", Path::new("/p"), &env).with_files(&files))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "compose.yml:5:17: services.web.deploy.replicas: expected a non-negative integer, got \"three\""
        )
    );
}

#[test]
fn dotenv_files_are_read_like_env_files() {
    let env = BTreeMap::new();
    let ok = super::parse_env_file("A=1\nB=${A}2\n", ".env", &env);
    assert_eq!(
        ok.ok(),
        Some(vec![("A".into(), "1".into()), ("B".into(), "12".into())])
    );
    let err = super::parse_env_file("A=1\n2B=x\n", ".env", &env).err();
    assert_eq!(
        err.map(|e| e.to_string()).as_deref(),
        Some(
            ".env:2:1: invalid variable name \"2B\"; fix: names are letters, digits, `_`, `.` and `-`, not starting with a digit"
        )
    );
}

#[test]
fn large_inputs_give_few_messages() {
    // Many keys and whole-range port clashes stay linear and give one
    // message per port entry, not one per port.
    let mut text = String::from(
        "services:\n  a:\n    image: a\n    ports: [\"1-65535:1-65535\"]\n    environment:\n",
    );
    for i in 0..5_000 {
        text.push_str(&format!("      VAR_{i}: v\n"));
    }
    text.push_str("  b:\n    image: b\n    ports: [\"1-65535:1-65535/tcp\"]\n");
    let files = BTreeMap::new();
    let result = parse_named("big.yml", &text, &files);
    let errors = result.err().map(|e| e.errors).unwrap_or_default();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message
            .contains("already published by service `a`")
    );
}

fn valid_texts() -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(corpus_dir()) {
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("valid-") && n.ends_with(".yml"))
            })
            .collect();
        paths.sort();
        texts = paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
    }
    texts
}

/// Every diagnostic of the stack file points inside it.
fn check_positions(
    text: &str,
    result: &Result<super::Parsed, StackError>,
) -> Result<(), TestCaseError> {
    let lines = text.lines().count() + 1;
    let all: Vec<&Diagnostic> = match result {
        Ok(p) => p.warnings.iter().collect(),
        Err(e) => e.errors.iter().chain(e.warnings.iter()).collect(),
    };
    for d in all.iter().filter(|d| d.file == "fuzz.yml") {
        prop_assert!(d.line >= 1 && d.line <= lines, "line out of range: {}", d);
        prop_assert!(d.column >= 1, "column out of range: {}", d);
    }
    if let Err(e) = result {
        prop_assert!(!e.errors.is_empty());
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop_oneof![
        Just(":".to_string()),
        Just("- ".to_string()),
        Just("[".to_string()),
        Just("}".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("<<: ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("#".to_string()),
        Just("${".to_string()),
        Just("$".to_string()),
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("\t".to_string()),
        Just("-1".to_string()),
        Just("99999999999".to_string()),
        Just("|".to_string()),
        Just("!!str ".to_string()),
        "\\PC{1,4}",
    ];
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), tokens).prop_map(|(a, t)| Mutation::Insert(a, t)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, b)| Mutation::Indent(a, b)),
    ]
}

fn char_boundary(s: &str, at: usize) -> usize {
    if s.is_empty() {
        return 0;
    }
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    match m {
        Mutation::Delete(a, n) => {
            let start = char_boundary(text, *a);
            let end = char_boundary(text, (start + n).min(text.len()));
            let end = end.max(start);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert(a, t) => {
            let at = char_boundary(text, *a);
            format!("{}{}{}", &text[..at], t, &text[at..])
        }
        Mutation::DuplicateLine(a) | Mutation::Indent(a, _) | Mutation::SwapLines(a, _) => {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = a % lines.len();
            match m {
                Mutation::DuplicateLine(_) => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                Mutation::Indent(_, more) => {
                    if *more {
                        lines[i].insert_str(0, "  ");
                    } else {
                        lines[i] = lines[i].trim_start().to_string();
                    }
                }
                Mutation::SwapLines(_, b) => {
                    let j = b % lines.len();
                    lines.swap(i, j);
                }
                _ => {}
            }
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let files = BTreeMap::new();
        let result = parse_named("fuzz.yml", &text, &files);
        check_positions(&text, &result)?;
    }

    #[test]
    fn never_panics_on_yaml_like_text(text in "([a-z_]{1,8}: ?|- |  |\\[|\\]|\\{|\\}|, |&a |\\*a|<<: |\"|'|\\$\\{?[A-Z]{0,3}[:?+-]{0,2}\\}?|[0-9]{1,6}|/[a-z]{1,4}|\n){0,60}") {
        let files = BTreeMap::new();
        let result = parse_named("fuzz.yml", &text, &files);
        check_positions(&text, &result)?;
    }

    #[test]
    fn mutated_valid_files_give_a_plan_or_messages(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let texts = valid_texts();
        prop_assume!(!texts.is_empty());
        let mut text = texts[pick % texts.len()].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        let files = memory_files();
        let result = parse_named("fuzz.yml", &text, &files);
        check_positions(&text, &result)?;
    }
}

/// Every example stack in `examples/` parses without an error.
#[test]
fn the_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let file = entry.path().join("compose.yml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let env = BTreeMap::new();
        let dir = entry.path();
        let input = Input::new(&text, "compose.yml", &dir, &env);
        if let Err(e) = parse(&input) {
            panic!("{}: {e}", file.display());
        }
        seen += 1;
    }
    assert!(seen >= 3, "{seen} examples");
}
