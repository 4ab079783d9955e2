//! The `demo` section: a greeting the agent echoes back in its report.

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

/// The `demo` section.
#[derive(Debug, Clone, Copy)]
pub struct Demo;

impl SectionKind for Demo {
    const NAME: &'static str = "demo";
    const CAPABILITY: &'static str = "demo.v1";
    type Desired = DemoSection;
    type Report = DemoSection;
    type Delivery = Nothing;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoSection {
    pub greeting: String,
}
