//! Placement constraints: the `deploy.placement.constraints` strings of a
//! Compose file, as Docker Swarm users write them.
//!
//! A constraint is `ATTRIBUTE == VALUE` or `ATTRIBUTE != VALUE`, where the
//! attribute is one of
//!
//! - `node.labels.<key>`: a label the team put on the host;
//! - `node.hostname`: the host's name;
//! - `node.id`: the node id Skiff gave the host at join;
//! - `node.platform.os`: the operating system as Docker names it (`linux`);
//! - `node.platform.arch`: the CPU architecture (`x86_64`, `aarch64`, ...).
//!
//! Matching follows Swarm: attribute names are case-insensitive, label keys
//! are case-sensitive, values compare case-insensitively, and a label the
//! host does not have counts as the empty value (so `node.labels.zone != eu`
//! matches a host without a `zone` label). Skiff adds one kindness: the
//! architecture names Docker and Go use for the same CPU (`x86_64` and
//! `amd64`, `aarch64` and `arm64`) match each other.
//!
//! `node.role` is refused: Skiff hosts have no manager or worker role.
//!
//! The API is [`Constraint::from_str`](std::str::FromStr) (with errors that
//! name the constraint and the fix), [`Constraint::matches`] and `Display`,
//! which prints the canonical form that parses back to the same constraint.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a constraint is matched against: the facts about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAttrs {
    /// The node id given at join.
    pub id: String,
    pub hostname: String,
    /// The operating system as Docker reports it (`linux`), not the
    /// distribution's long name.
    pub os: String,
    /// The CPU architecture (`x86_64`, `aarch64`, ...).
    pub arch: String,
    pub labels: BTreeMap<String, String>,
}

/// The host attribute a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// `node.labels.<key>`; the key is case-sensitive.
    Label(String),
    /// `node.hostname`
    Hostname,
    /// `node.id`
    Id,
    /// `node.platform.os`
    Os,
    /// `node.platform.arch`
    Arch,
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    Eq,
    Ne,
}

/// One placement constraint, such as `node.labels.zone == eu`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constraint {
    pub attribute: Attribute,
    pub operator: Operator,
    /// Never empty; ASCII letters, digits, inner spaces and the characters
    /// Swarm accepts (`- _ . : / * ( ) ? + [ ] \ ^ $ |`).
    pub value: String,
}

/// Why a constraint string was refused. Every message starts with
/// `invalid constraint "<the string>":` and ends with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error(
        "invalid constraint {input:?}: no operator; write ATTRIBUTE == VALUE or ATTRIBUTE != VALUE, e.g. node.labels.zone == eu"
    )]
    MissingOperator { input: String },
    #[error(
        "invalid constraint {input:?}: `{operator}` is not an operator; use == or != (e.g. node.labels.zone == eu)"
    )]
    UnsupportedOperator { input: String, operator: String },
    #[error(
        "invalid constraint {input:?}: missing attribute before {operator}; use node.labels.<key>, node.hostname or node.id"
    )]
    MissingAttribute { input: String, operator: Operator },
    #[error("invalid constraint {input:?}: unknown attribute {attribute}; {hint}")]
    UnknownAttribute {
        input: String,
        attribute: String,
        hint: String,
    },
    #[error(
        "invalid constraint {input:?}: node.role is not supported: Skiff hosts have no manager or worker role; label the hosts and use node.labels.<key>"
    )]
    RoleUnsupported { input: String },
    #[error(
        "invalid constraint {input:?}: label key {key:?} is invalid; a key is letters, digits, '.', '-' and '_', e.g. node.labels.zone"
    )]
    InvalidLabelKey { input: String, key: String },
    #[error(
        "invalid constraint {input:?}: missing value after {operator}; write {attribute} {operator} <value>"
    )]
    MissingValue {
        input: String,
        attribute: String,
        operator: Operator,
    },
    #[error(
        "invalid constraint {input:?}: value {value:?} contains {found:?}; a value is letters, digits, inner spaces and - _ . : / * ( ) ? + [ ] \\ ^ $ |"
    )]
    InvalidValue {
        input: String,
        value: String,
        found: char,
    },
}

const KNOWN: &str =
    "use node.labels.<key>, node.hostname, node.id, node.platform.os or node.platform.arch";
const LABEL_PREFIX: &str = "node.labels.";

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::Eq => "==",
            Operator::Ne => "!=",
        })
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Label(key) => write!(f, "{LABEL_PREFIX}{key}"),
            Attribute::Hostname => f.write_str("node.hostname"),
            Attribute::Id => f.write_str("node.id"),
            Attribute::Os => f.write_str("node.platform.os"),
            Attribute::Arch => f.write_str("node.platform.arch"),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.attribute, self.operator, self.value)
    }
}

impl Constraint {
    /// Whether the host satisfies this constraint.
    pub fn matches(&self, node: &NodeAttrs) -> bool {
        let equal = match &self.attribute {
            Attribute::Label(key) => node
                .labels
                .get(key)
                .is_some_and(|v| v.eq_ignore_ascii_case(&self.value)),
            Attribute::Hostname => node.hostname.eq_ignore_ascii_case(&self.value),
            Attribute::Id => node.id.eq_ignore_ascii_case(&self.value),
            Attribute::Os => node.os.eq_ignore_ascii_case(&self.value),
            Attribute::Arch => canonical_arch(&node.arch) == canonical_arch(&self.value),
        };
        match self.operator {
            Operator::Eq => equal,
            Operator::Ne => !equal,
        }
    }
}

/// Lower-cased architecture name with the Go spellings mapped to the
/// kernel's.
fn canonical_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "amd64" | "x86-64" => "x86_64".to_owned(),
        "arm64" => "aarch64".to_owned(),
        _ => lower,
    }
}

fn valid_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn valid_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            ' ' | '-'
                | '_'
                | '.'
                | ':'
                | '/'
                | '*'
                | '('
                | ')'
                | '?'
                | '+'
                | '['
                | ']'
                | '\\'
                | '^'
                | '$'
                | '|'
        )
}

fn parse_attribute(input: &str, attr: &str) -> Result<Attribute, ConstraintError> {
    let lower = attr.to_ascii_lowercase();
    if lower.starts_with(LABEL_PREFIX) {
        // The prefix is ASCII, so its byte length is the same in `attr`.
        let key = attr.get(LABEL_PREFIX.len()..).unwrap_or_default();
        if key.is_empty() || !key.chars().all(valid_key_char) {
            return Err(ConstraintError::InvalidLabelKey {
                input: input.to_owned(),
                key: key.to_owned(),
            });
        }
        return Ok(Attribute::Label(key.to_owned()));
    }
    match lower.as_str() {
        "node.hostname" => return Ok(Attribute::Hostname),
        "node.id" => return Ok(Attribute::Id),
        "node.platform.os" => return Ok(Attribute::Os),
        "node.platform.arch" => return Ok(Attribute::Arch),
        "node.role" => {
            return Err(ConstraintError::RoleUnsupported {
                input: input.to_owned(),
            });
        }
        _ => {}
    }
    let unknown = |hint: String| ConstraintError::UnknownAttribute {
        input: input.to_owned(),
        attribute: attr.to_owned(),
        hint,
    };
    // Near misses get a pointed suggestion.
    for (wrong, what) in [
        ("node.label.", "node labels"),
        ("node.labels:", "node labels"),
        (
            "engine.labels.",
            "Docker Engine labels are not used for placement;",
        ),
        ("labels.", "node labels"),
    ] {
        if let Some(rest) = lower.strip_prefix(wrong) {
            let key = attr.get(wrong.len()..).unwrap_or(rest);
            let hint = if what.ends_with(';') {
                format!("{what} put the label on the host and use node.labels.{key}")
            } else {
                format!("did you mean node.labels.{key}? {KNOWN}")
            };
            return Err(unknown(hint));
        }
    }
    let hint = match lower.as_str() {
        "node.name" | "hostname" | "node.host" => format!("did you mean node.hostname? {KNOWN}"),
        "node.platform.architecture" | "arch" => {
            format!("did you mean node.platform.arch? {KNOWN}")
        }
        _ => KNOWN.to_owned(),
    };
    Err(unknown(hint))
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Swarm looks for `==` first, then `!=`.
        let found = [("==", Operator::Eq), ("!=", Operator::Ne)]
            .into_iter()
            .find_map(|(token, op)| input.split_once(token).map(|(l, r)| (l, r, op)));
        let Some((left, right, operator)) = found else {
            for bad in ["<=", ">=", "=~", "!~", "=", "<", ">"] {
                if input.contains(bad) {
                    return Err(ConstraintError::UnsupportedOperator {
                        input: input.to_owned(),
                        operator: bad.to_owned(),
                    });
                }
            }
            return Err(ConstraintError::MissingOperator {
                input: input.to_owned(),
            });
        };
        let attr = left.trim();
        if attr.is_empty() {
            return Err(ConstraintError::MissingAttribute {
                input: input.to_owned(),
                operator,
            });
        }
        let attribute = parse_attribute(input, attr)?;
        let value = right.trim();
        if value.is_empty() {
            return Err(ConstraintError::MissingValue {
                input: input.to_owned(),
                attribute: attribute.to_string(),
                operator,
            });
        }
        if let Some(found) = value.chars().find(|c| !valid_value_char(*c)) {
            return Err(ConstraintError::InvalidValue {
                input: input.to_owned(),
                value: value.to_owned(),
                found,
            });
        }
        Ok(Constraint {
            attribute,
            operator,
            value: value.to_owned(),
        })
    }
}

/// Constraints travel as the strings users write.
impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> NodeAttrs {
        NodeAttrs {
            id: "n-7f3a".into(),
            hostname: "web-1".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: [
                ("zone".to_owned(), "eu".to_owned()),
                ("disk".to_owned(), "ssd".to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn parse(s: &str) -> Constraint {
        match s.parse() {
            Ok(c) => c,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn error(s: &str) -> String {
        match s.parse::<Constraint>() {
            Ok(c) => panic!("{s:?} should not parse, got {c}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_attribute() {
        assert_eq!(
            parse("node.labels.zone==eu"),
            Constraint {
                attribute: Attribute::Label("zone".into()),
                operator: Operator::Eq,
                value: "eu".into()
            }
        );
        assert_eq!(
            parse(" node.hostname != web-1 ").attribute,
            Attribute::Hostname
        );
        assert_eq!(parse("node.id==n-7f3a").attribute, Attribute::Id);
        assert_eq!(parse("node.platform.os == linux").attribute, Attribute::Os);
        assert_eq!(
            parse("node.platform.arch == x86_64").attribute,
            Attribute::Arch
        );
        // Attribute names are case-insensitive, label keys are not.
        assert_eq!(
            parse("Node.Labels.Zone == eu").attribute,
            Attribute::Label("Zone".into())
        );
        assert_eq!(parse("NODE.HOSTNAME==a").attribute, Attribute::Hostname);
        assert_eq!(
            parse("node.labels.com.example.tier-1_x == a b").value,
            "a b",
            "dotted keys and inner spaces"
        );
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(
            parse("NODE.labels.zone==eu").to_string(),
            "node.labels.zone == eu"
        );
        assert_eq!(parse("node.ID!=x").to_string(), "node.id != x");
    }

    #[test]
    fn matches_like_swarm() {
        let n = node();
        assert!(parse("node.labels.zone == eu").matches(&n));
        assert!(
            parse("node.labels.zone == EU").matches(&n),
            "values ignore case"
        );
        assert!(
            !parse("node.labels.Zone == eu").matches(&n),
            "keys keep case"
        );
        assert!(!parse("node.labels.zone != eu").matches(&n));
        assert!(parse("node.labels.zone != us").matches(&n));
        assert!(
            parse("node.labels.rack != r1").matches(&n),
            "a missing label is the empty value"
        );
        assert!(!parse("node.labels.rack == r1").matches(&n));
        assert!(parse("node.hostname == WEB-1").matches(&n));
        assert!(parse("node.hostname != web-2").matches(&n));
        assert!(parse("node.id == n-7f3a").matches(&n));
        assert!(!parse("node.id != n-7f3a").matches(&n));
        assert!(parse("node.platform.os == linux").matches(&n));
        assert!(parse("node.platform.arch == x86_64").matches(&n));
        assert!(parse("node.platform.arch == amd64").matches(&n), "Go alias");
        assert!(parse("node.platform.arch != arm64").matches(&n));
        let arm = NodeAttrs {
            arch: "aarch64".into(),
            ..node()
        };
        assert!(parse("node.platform.arch == arm64").matches(&arm));
    }

    #[test]
    fn errors_name_the_constraint_and_the_fix() {
        assert_eq!(
            error("node.label.zone==eu"),
            "invalid constraint \"node.label.zone==eu\": unknown attribute node.label.zone; \
             did you mean node.labels.zone? use node.labels.<key>, node.hostname, node.id, \
             node.platform.os or node.platform.arch"
        );
        assert_eq!(
            error("zone==eu"),
            "invalid constraint \"zone==eu\": unknown attribute zone; use node.labels.<key>, \
             node.hostname, node.id, node.platform.os or node.platform.arch"
        );
        assert!(error("node.labels.zone=eu").contains("`=` is not an operator; use == or !="));
        assert!(error("node.labels.zone").contains("no operator"));
        assert!(error("").contains("no operator"));
        assert!(error("== eu").contains("missing attribute before =="));
        assert!(
            error("node.labels.zone ==")
                .contains("missing value after ==; write node.labels.zone == <value>")
        );
        assert!(error("node.labels. == eu").contains("label key \"\" is invalid"));
        assert!(error("node.labels.a=b == eu").contains("label key \"a=b\" is invalid"));
        assert!(error("node.role == manager").contains("node.role is not supported"));
        assert!(error("engine.labels.zone == eu").contains("use node.labels.zone"));
        assert!(error("node.name == a").contains("did you mean node.hostname?"));
        assert!(error("node.labels.zone == eu!=us").contains("contains '!'"));
        assert!(error("node.labels.zone == é").contains("contains 'é'"));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let c = parse("node.labels.zone == eu");
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(json, "\"node.labels.zone == eu\"");
        let back: Result<Constraint, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(c));
        let bad: Result<Constraint, _> = serde_json::from_str("\"node.label.x==y\"");
        assert!(bad.is_err());
    }

    fn arb_attribute() -> impl Strategy<Value = Attribute> {
        prop_oneof![
            "[A-Za-z0-9._-]{1,12}".prop_map(Attribute::Label),
            Just(Attribute::Hostname),
            Just(Attribute::Id),
            Just(Attribute::Os),
            Just(Attribute::Arch),
        ]
    }

    fn arb_constraint() -> impl Strategy<Value = Constraint> {
        (
            arb_attribute(),
            prop_oneof![Just(Operator::Eq), Just(Operator::Ne)],
            "[A-Za-z0-9_.:/*()?+\\[\\]\\\\^$|-]([A-Za-z0-9 _.:/-]{0,10}[A-Za-z0-9])?",
        )
            .prop_map(|(attribute, operator, value)| Constraint {
                attribute,
                operator,
                value,
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Constraint>();
        }

        #[test]
        fn parser_never_panics_on_near_misses(
            attr in "(node|NODE|engine)?\\.?(labels?|hostname|id|platform|role)?\\.?[a-zé.]{0,6}",
            op in "(==|!=|=|<|!|=~| )",
            value in "[ a-z!=é]{0,6}",
        ) {
            let _ = format!("{attr}{op}{value}").parse::<Constraint>();
        }

        #[test]
        fn display_parse_round_trip(c in arb_constraint()) {
            let text = c.to_string();
            prop_assert_eq!(text.parse::<Constraint>(), Ok(c));
        }

        #[test]
        fn eq_and_ne_are_complements(c in arb_constraint(), label in "[a-z]{0,3}") {
            let mut n = node();
            n.labels.insert("k".into(), label);
            let flipped = Constraint {
                operator: match c.operator { Operator::Eq => Operator::Ne, Operator::Ne => Operator::Eq },
                ..c.clone()
            };
            prop_assert_ne!(c.matches(&n), flipped.matches(&n));
        }
    }
}
