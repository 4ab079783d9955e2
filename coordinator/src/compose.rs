//! The Compose file of a deploy request, parsed here with the same parser
//! and checks as `skiff deploy` ran on the deploying machine: the
//! coordinator never takes a client's word for what a file says.
//!
//! What the file refers to (variables, env files, configs) comes from the
//! request only; the parser reads it from memory, never from this
//! server's disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skiff_api_types::ComposeInputs;
use skiff_compose::stack::{self, Stack};

/// Parses `compose` with what the request says it uses, and reads its
/// `file:` and `environment:` configs into the stack, as `skiff deploy`
/// does.
///
/// # Errors
/// Every problem with the file, one message each, positioned as the CLI
/// shows them.
pub fn parse(compose: &str, inputs: &ComposeInputs) -> Result<Stack, Vec<String>> {
    let mut env = inputs.variables.clone();
    // Only whether these are set matters to the parse: a secret's value
    // is uploaded as a secret, never with the file.
    for name in &inputs.variables_set {
        env.entry(name.clone()).or_default();
    }
    let mut files: BTreeMap<PathBuf, String> = inputs
        .files
        .iter()
        .map(|(p, text)| (PathBuf::from(p), text.clone()))
        .collect();
    for path in &inputs.files_present {
        files.entry(PathBuf::from(path)).or_default();
    }
    let file_name = if inputs.file_name.is_empty() {
        "compose.yml"
    } else {
        &inputs.file_name
    };
    let dir = if inputs.dir.is_empty() {
        "."
    } else {
        &inputs.dir
    };
    let input = stack::Input::new(compose, file_name, Path::new(dir), &env).with_files(&files);
    let mut parsed = stack::parse(&input).map_err(|e| {
        e.errors
            .iter()
            .map(stack::Diagnostic::render)
            .collect::<Vec<_>>()
    })?;
    stack::inline_configs(&mut parsed, &input).map_err(|e| vec![e])?;
    Ok(parsed.stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ComposeInputs {
        ComposeInputs {
            file_name: "shop/compose.yml".into(),
            dir: "/home/dev/shop".into(),
            variables: BTreeMap::from([("TAG".into(), "2".into())]),
            variables_set: vec!["DB_PASSWORD".into()],
            files: BTreeMap::from([
                ("/home/dev/shop/app.env".into(), "MODE=${TAG}-prod\n".into()),
                ("/home/dev/shop/site.conf".into(), "listen 80;\n".into()),
            ]),
            files_present: vec!["/home/dev/shop/key.pem".into()],
        }
    }

    #[test]
    fn a_file_parses_from_what_the_request_carries() {
        let text = "services:\n  web:\n    image: web:${TAG}\n    env_file: app.env\n    secrets: [db, key]\n    configs: [site]\nsecrets:\n  db: {environment: DB_PASSWORD}\n  key: {file: ./key.pem}\nconfigs:\n  site: {file: ./site.conf}\n";
        let stack = parse(text, &inputs()).unwrap();
        let web = &stack.services["web"];
        assert_eq!(web.image, "web:2");
        assert_eq!(web.environment["MODE"], "2-prod");
        assert_eq!(
            stack.configs["site"].source,
            stack::ConfigSource::Content("listen 80;\n".into())
        );
    }

    #[test]
    fn nothing_is_read_from_this_servers_disk() {
        let text = "services:\n  web:\n    image: web\n    env_file: /etc/hostname\n    configs: [c]\nconfigs:\n  c: {file: /etc/hostname}\n";
        let errors = parse(text, &inputs()).unwrap_err();
        assert!(
            errors[0].starts_with("shop/compose.yml:4:15: services.web.env_file: cannot read env file \"/etc/hostname\""),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("config file \"/etc/hostname\" not found"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_parsers_checks_apply() {
        let errors = parse(
            "services:\n  web:\n    image: web\n    volumes: [\".:/app\"]\n",
            &ComposeInputs::default(),
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "compose.yml:4:15: services.web.volumes[0]: bind mount of \".\" is a relative path, which means nothing on a server; fix: write an absolute path on the servers (such as /srv/app/data), or ship small files as a `configs:` entry"
            ]
        );
        // A variable the request does not carry is unset here.
        let errors = parse(
            "services:\n  web:\n    image: ${IMAGE:?set IMAGE}\n",
            &ComposeInputs::default(),
        )
        .unwrap_err();
        assert!(
            errors[0].contains("required variable IMAGE is missing"),
            "{errors:?}"
        );
    }
}
