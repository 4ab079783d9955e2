//! `skiff cert`: TLS certificates for HTTP routes. A chain and its key
//! are read from files and checked by the coordinator; the key is never
//! shown again.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use skiff_api_types::certs::MAX_CERTIFICATE_PEM_BYTES;
use skiff_api_types::{AddCertificate, CertificateRenewal, CertificateView, RenewCertificate};

use crate::Failure;
use crate::client::{Client, Method};
use crate::commands::path_segment;
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Add a certificate: its chain (leaf first, then intermediates) and
    /// its private key, PEM. Edge hosts serve it for its domains at once.
    Add {
        /// The certificate chain, PEM.
        #[arg(long = "cert", value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PKCS#8, RSA or EC), PEM, unencrypted.
        #[arg(long = "key", value_name = "FILE")]
        key: PathBuf,
    },
    /// List certificates: id, domains, expiry, source, issuer.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a certificate (its domains fall back to another valid one).
    Rm { id: String },
    /// Get a new certificate for a route's domain from the ACME directory
    /// now, even though the current one is valid; it replaces the current
    /// one once issued (see `skiff cert ls`, and `skiff events` on failure).
    Renew { domain: String },
}

/// Reads a PEM file of at most 64 KiB.
fn read_pem(what: &str, path: &Path) -> Result<String, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::usage(format!("cannot read the {what} {}: {e}", path.display())))?;
    if meta.len() > MAX_CERTIFICATE_PEM_BYTES as u64 {
        return Err(Failure::usage(format!(
            "the {what} {} is larger than 64 KiB: pass one PEM chain and one key",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the {what} {} as PEM text: {e}",
            path.display()
        ))
    })
}

fn domains(c: &CertificateView) -> String {
    c.domains.join(",")
}

pub(crate) async fn run(
    client: &Client,
    cmd: CertCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        CertCommand::Add { cert, key } => {
            let chain_pem = read_pem("certificate file", &cert)?;
            let key_pem = read_pem("key file", &key)?;
            let view: CertificateView = client
                .call(
                    Method::POST,
                    "/certificates",
                    Some(&AddCertificate { chain_pem, key_pem }),
                )
                .await?;
            let _ = writeln!(
                out,
                "Certificate {} added for {} (expires {}){}.",
                view.id,
                view.domains.join(", "),
                view.not_after,
                if view.served {
                    "; edge hosts serve it now"
                } else {
                    "; not served yet (not valid yet, or a newer one covers its domains)"
                }
            );
        }
        CertCommand::Ls { json } => {
            let list: Vec<CertificateView> = client
                .call(Method::GET, "/certificates", None::<&()>)
                .await?;
            if json {
                print_json(out, &list);
            } else {
                let rows = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            domains(c),
                            c.not_after.clone(),
                            c.source.as_str().to_owned(),
                            if c.served { "yes" } else { "no" }.to_owned(),
                            c.issuer.clone(),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["ID", "DOMAINS", "EXPIRES", "SOURCE", "SERVED", "ISSUER"],
                    rows,
                );
            }
        }
        CertCommand::Rm { id } => {
            let id = path_segment(&id)?;
            let view: CertificateView = client
                .call(Method::DELETE, &format!("/certificates/{id}"), None::<&()>)
                .await?;
            let _ = writeln!(
                out,
                "Certificate {} for {} removed.",
                view.id,
                view.domains.join(", ")
            );
        }
        CertCommand::Renew { domain } => {
            let renewal: CertificateRenewal = client
                .call(
                    Method::POST,
                    "/certificates/renew",
                    Some(&RenewCertificate { domain }),
                )
                .await?;
            let replaces = if renewal.replaces.is_empty() {
                String::new()
            } else {
                format!(" It replaces {}.", renewal.replaces.join(", "))
            };
            let _ = writeln!(
                out,
                "Renewal of the certificate for {} asked for: the coordinator orders it from its ACME directory now.{replaces} `skiff cert ls` shows it once issued; failures show in `skiff events`.",
                renewal.domain
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn cert_commands_parse() {
        let cli =
            Cli::try_parse_from(["skiff", "cert", "add", "--cert", "c.pem", "--key", "k.pem"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Cert(CertCommand::Add { ref cert, ref key })
                if cert == Path::new("c.pem") && key == Path::new("k.pem")
        ));
        let cli = Cli::try_parse_from(["skiff", "cert", "ls", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cert(CertCommand::Ls { json: true })
        ));
        assert!(Cli::try_parse_from(["skiff", "cert", "add", "--cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from(["skiff", "cert", "renew", "app.example.com"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cert(CertCommand::Renew { ref domain }) if domain == "app.example.com"
        ));
        assert!(Cli::try_parse_from(["skiff", "cert", "renew"]).is_err());
    }

    #[test]
    fn files_that_are_missing_or_too_large_are_bad_input() {
        let dir = std::env::temp_dir().join(format!("skiff-cert-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = read_pem("key file", &dir.join("none.pem")).unwrap_err();
        assert_eq!(f.code, 2);
        assert!(f.message.contains("none.pem"), "{}", f.message);
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_CERTIFICATE_PEM_BYTES + 1]).unwrap();
        let f = read_pem("certificate file", &big).unwrap_err();
        assert_eq!(f.code, 2);
        assert!(f.message.contains("64 KiB"), "{}", f.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
