//! Who a client is: the claims the gateway reads from its token (SPEC §2).

use serde::{Deserialize, Serialize};

/// An authenticated user, as `connected` and room events show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: String,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}
