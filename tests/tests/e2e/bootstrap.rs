//! The install path on a fresh server: a tier-2 host (a Debian container
//! with its own Docker Engine) runs the coordinator's install script.
