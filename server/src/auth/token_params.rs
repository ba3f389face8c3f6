//! The `token_*` settings every login method stores on its users or roles
//! (Vault's tokenutil fields), and the login [`Auth`] they produce.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::auth::{cidr, fields};
use crate::error::{Error, Result};
use crate::logical::Auth;

/// Token settings stored with a userpass user or an AppRole role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenParams {
    pub token_policies: Vec<String>,
    /// Seconds; 0 = the mount's default.
    pub token_ttl: u64,
    /// Seconds; 0 = the mount's maximum.
    pub token_max_ttl: u64,
    pub token_explicit_max_ttl: u64,
    pub token_period: u64,
    pub token_num_uses: i64,
    pub token_no_default_policy: bool,
    /// `default` or `service` (batch tokens are not supported).
    pub token_type: String,
    pub token_bound_cidrs: Vec<String>,
}

impl TokenParams {
    /// Applies the fields present in `data` (an update leaves the others as
    /// they are). The legacy names `policies`, `ttl`, `max_ttl`, `period` and
    /// `bound_cidrs` are read when the `token_` name is absent.
    pub fn update_from(&mut self, data: &Map<String, Value>) -> Result<()> {
        let pick = |new: &str, old: &str| {
            if data.contains_key(new) {
                new.to_string()
            } else {
                old.to_string()
            }
        };
        if let Some(p) = fields::str_list(data, &pick("token_policies", "policies"))? {
            self.token_policies = fields::sanitize_policies(&p, false);
        }
        if let Some(v) = fields::duration_secs(data, &pick("token_ttl", "ttl"))? {
            self.token_ttl = v;
        }
        if let Some(v) = fields::duration_secs(data, &pick("token_max_ttl", "max_ttl"))? {
            self.token_max_ttl = v;
        }
        if let Some(v) = fields::duration_secs(data, "token_explicit_max_ttl")? {
            self.token_explicit_max_ttl = v;
        }
        if let Some(v) = fields::duration_secs(data, &pick("token_period", "period"))? {
            self.token_period = v;
        }
        if let Some(v) = fields::int_field(data, "token_num_uses")? {
            if v < 0 {
                return Err(Error::invalid("token_num_uses cannot be negative"));
            }
            self.token_num_uses = v;
        }
        if let Some(v) = fields::bool_field(data, "token_no_default_policy")? {
            self.token_no_default_policy = v;
        }
        if let Some(v) = fields::str_field(data, "token_type")? {
            self.token_type = match v.as_str() {
                "" | "default" | "default-service" => "default".into(),
                "service" => "service".into(),
                "batch" | "default-batch" => return Err(Error::invalid(
                    "token_type: batch tokens are not supported; use \"service\" or \"default\"",
                )),
                other => {
                    return Err(Error::invalid(format!(
                        "token_type: invalid value {other:?}; use \"service\" or \"default\""
                    )))
                }
            };
        }
        if let Some(v) = fields::str_list(data, &pick("token_bound_cidrs", "bound_cidrs"))? {
            cidr::validate_all(&v)?;
            self.token_bound_cidrs = v;
        }
        if self.token_type.is_empty() {
            self.token_type = "default".into();
        }
        if self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(Error::invalid(
                "token_ttl cannot be greater than token_max_ttl",
            ));
        }
        Ok(())
    }

    /// The `token_*` fields of a read response (plus the legacy `policies`).
    pub fn write_fields(&self, out: &mut Map<String, Value>) {
        let fields = json!({
            "token_policies": self.token_policies,
            "policies": self.token_policies,
            "token_ttl": self.token_ttl,
            "token_max_ttl": self.token_max_ttl,
            "token_explicit_max_ttl": self.token_explicit_max_ttl,
            "token_period": self.token_period,
            "token_num_uses": self.token_num_uses,
            "token_no_default_policy": self.token_no_default_policy,
            "token_type": if self.token_type.is_empty() { "default" } else { &self.token_type },
            "token_bound_cidrs": self.token_bound_cidrs,
        });
        if let Value::Object(map) = fields {
            out.extend(map);
        }
    }

    /// The login [`Auth`] for these settings; the caller adds metadata,
    /// display name and path, and the token store mints the token.
    pub fn login_auth(&self) -> Auth {
        Auth {
            policies: self.token_policies.clone(),
            token_policies: self.token_policies.clone(),
            lease_duration: self.token_ttl,
            max_ttl: self.token_max_ttl,
            explicit_max_ttl: self.token_explicit_max_ttl,
            period: self.token_period,
            num_uses: self.token_num_uses,
            renewable: true,
            token_type: "service".into(),
            no_default_policy: self.token_no_default_policy,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updated(data: Value) -> Result<TokenParams> {
        let mut p = TokenParams::default();
        p.update_from(data.as_object().unwrap())?;
        Ok(p)
    }

    #[test]
    fn fields_and_legacy_names() {
        let p = updated(
            json!({"policies": "b,A", "token_ttl": "1h", "token_max_ttl": 7200,
                               "token_bound_cidrs": ["10.0.0.0/8"]}),
        )
        .unwrap();
        assert_eq!(p.token_policies, ["a", "b"]);
        assert_eq!((p.token_ttl, p.token_max_ttl), (3600, 7200));
        assert_eq!(p.token_type, "default");
        let p = updated(json!({"policies": "x", "token_policies": "y"})).unwrap();
        assert_eq!(p.token_policies, ["y"]);
        for bad in [
            json!({"token_num_uses": -1}),
            json!({"token_type": "batch"}),
            json!({"token_ttl": 10, "token_max_ttl": 5}),
            json!({"token_bound_cidrs": "nope"}),
        ] {
            assert!(updated(bad.clone()).is_err(), "{bad}");
        }
    }
}
