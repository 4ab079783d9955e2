//! The ingress controller (`ingress` section): what an edge host serves
//! to the outside.
//!
//! - [`balance`]: endpoint pools, shared by the layer-4 forwarders and
//!   the HTTP proxy.
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer sends.
//! - [`http`]: the HTTP(S) reverse proxy for routes.

pub mod balance;
pub mod http;
pub mod proxy_protocol;
