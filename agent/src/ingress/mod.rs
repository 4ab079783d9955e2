//! Ingress (stand-in until the controller lands: the proxy's collaborators).

pub mod balance;
pub mod http;
pub mod proxy_protocol;
