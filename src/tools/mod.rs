//! Tools built on knock's own code: models of how real receivers limit and defer
//! ([`receiver`]), a receiving MX that plays them over SMTP ([`sink`]), and the SMTP load
//! generator ([`bench`](mod@bench)).

pub mod bench;
pub mod receiver;
pub mod simulate;
pub mod sink;
