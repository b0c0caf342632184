//! Tools built on knock's own code: a scriptable receiving MX ([`sink`]) and the SMTP load
//! generator ([`bench`](mod@bench)).

pub mod bench;
pub mod sink;
