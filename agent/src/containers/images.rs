//! Images: pulled once per reconcile round when the engine does not have
//! them, with the delivered credentials of their registry, and a failed
//! pull explained with the fix.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use skiff_shared::registry::ImageRef;
use tracing::warn;

use super::engine::{ApplyError, Engine};

impl Engine {
    /// The stored credentials for `registry`; none when there are none or
    /// they cannot be read (said in the log, without their content).
    fn registry_credential(
        &self,
        registry: &str,
    ) -> Option<skiff_shared::registry::RegistryCredential> {
        let path = self.registries_file.as_ref()?;
        match super::registries::for_host(path, registry) {
            Ok(c) => c,
            Err(error) => {
                warn!(error = %error, "Cannot read registry credentials; pulling without.");
                None
            }
        }
    }

    /// Pulls `image` unless the engine has it. A reference by digest
    /// (`repo@sha256:…`) that is present is found by the engine too, so
    /// it is never pulled again. The pull carries the stored credentials
    /// of the image's registry, if there are any.
    pub(super) async fn ensure_image(&self, image: &str) -> Result<(), ApplyError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let reference = ImageRef::parse(image);
        let credential = self.registry_credential(&reference.registry);
        let (name, tag) = reference.pull_target();
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(name.to_owned()),
                tag: Some(tag.to_owned()),
                ..Default::default()
            }),
            None,
            credential.as_ref().map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.host.clone()),
                ..Default::default()
            }),
        );
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                let message = match e {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                };
                let reason = pull_failure(
                    &message,
                    &reference.registry,
                    credential.as_ref().map(|c| c.username.as_str()),
                );
                warn!(image, registry = %reference.registry, error = %reason, "Image pull failed.");
                return Err(ApplyError::Image {
                    image: image.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// Why a pull from `registry` failed, from the engine's message: a refusal
/// of credentials says which command fixes it; anything else names the
/// registry and keeps the engine's words. `username` is the one the pull
/// used, if any.
fn pull_failure(message: &str, registry: &str, username: Option<&str>) -> String {
    let lower = message.to_ascii_lowercase();
    let unauthorized = [
        "no basic auth credentials",
        "unauthorized",
        "authentication required",
    ]
    .iter()
    .any(|m| lower.contains(m));
    let denied = lower.contains("denied");
    match (unauthorized, denied, username) {
        (true, _, None) => format!(
            "authentication required by registry {registry}: run `skiff registry login {registry}`"
        ),
        (true, _, Some(user)) => format!(
            "registry {registry} refused the credentials of user {user}: check them and run `skiff registry login {registry}` again"
        ),
        (false, true, None) => format!(
            "registry {registry} denied access: the image does not exist there, or it needs credentials (`skiff registry login {registry}`)"
        ),
        (false, true, Some(user)) => format!(
            "registry {registry} denied user {user} access: the image does not exist there, or the account may not pull it"
        ),
        (false, false, _) => format!("registry {registry}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_failures_say_what_to_do() {
        let r = "127.0.0.1:5000";
        let no_creds = pull_failure(
            "Head \"http://127.0.0.1:5000/v2/app/manifests/1\": no basic auth credentials",
            r,
            None,
        );
        assert_eq!(
            no_creds,
            "authentication required by registry 127.0.0.1:5000: run `skiff registry login 127.0.0.1:5000`"
        );
        let wrong = pull_failure("unauthorized: authentication required", r, Some("alice"));
        assert!(
            wrong.contains("refused the credentials of user alice")
                && wrong.contains("skiff registry login 127.0.0.1:5000"),
            "{wrong}"
        );
        let hub = pull_failure(
            "pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            "docker.io",
            None,
        );
        assert!(hub.contains("skiff registry login docker.io"), "{hub}");
        let down = pull_failure(
            "dial tcp 127.0.0.1:5000: connect: connection refused",
            r,
            None,
        );
        assert_eq!(
            down,
            "registry 127.0.0.1:5000: dial tcp 127.0.0.1:5000: connect: connection refused"
        );
    }
}
