//! Auth methods. The token store ([`TokenStore`], mounted at `auth/token/`)
//! holds every token; the login methods ([`UserpassBackend`],
//! [`ApproleBackend`]) check credentials and answer with an
//! [`Auth`](crate::logical::Auth) that the core turns into a token through
//! [`TokenStore::create_from_login`].

pub mod approle;
pub mod cidr;
pub mod fields;
pub mod token;
pub mod token_params;
pub mod userpass;

pub use approle::ApproleBackend;
pub use token::{TokenEntry, TokenStore};
pub use token_params::TokenParams;
pub use userpass::UserpassBackend;
