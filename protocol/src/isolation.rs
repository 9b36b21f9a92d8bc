//! Isolation levels: how well a node walls user code in. The grid has a
//! minimum level (admins set it; `sandbox` by default) and a node below it
//! takes no runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a node runs user code, weakest first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum IsolationLevel {
    /// Plain processes of the node's user: a run can read the node's data.
    None,
    /// The process executor's sandbox (own uid, Landlock, namespaces, limits).
    #[default]
    Sandbox,
    /// Containers.
    Containers,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationLevel::None => "none",
            IsolationLevel::Sandbox => "sandbox",
            IsolationLevel::Containers => "containers",
        }
    }

    /// Whether a node at this level may take runs in a grid whose minimum is `min`.
    pub fn meets(self, min: IsolationLevel) -> bool {
        self >= min
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IsolationLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(IsolationLevel::None),
            "sandbox" => Ok(IsolationLevel::Sandbox),
            "containers" => Ok(IsolationLevel::Containers),
            other => Err(Error::Invalid(format!(
                "isolation level '{other}' is none of none, sandbox, containers"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IsolationLevel as L;

    #[test]
    fn levels_order_and_parse() {
        assert!(L::Containers.meets(L::Sandbox));
        assert!(L::Sandbox.meets(L::Sandbox));
        assert!(!L::None.meets(L::Sandbox));
        assert!(L::None.meets(L::None));
        for l in [L::None, L::Sandbox, L::Containers] {
            assert_eq!(l.to_string().parse::<L>().unwrap(), l);
        }
        assert!("root".parse::<L>().is_err());
    }
}
