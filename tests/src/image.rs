//! The test image: busybox-static in an otherwise empty root, imported into
//! the Docker Engine with `create_image(from_src = "-")`. No pull needed.

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

/// The test image's reference.
pub const TEST_IMAGE: &str = "skiff-test/busybox:1";

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "nslookup", "sleep", "echo", "cat", "ls", "env", "id", "hostname", "nc",
];

static BUILT: OnceCell<()> = OnceCell::const_new();

/// Connects to the local Docker Engine, negotiating the API version.
pub async fn docker() -> anyhow::Result<Docker> {
    Ok(Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?)
}

/// Builds and imports the test image once per test process (and not at
/// all when the engine already has it). Returns its reference.
pub async fn ensure_test_image(docker: &Docker) -> anyhow::Result<&'static str> {
    BUILT
        .get_or_try_init(|| async {
            if docker.inspect_image(TEST_IMAGE).await.is_ok() {
                return Ok(());
            }
            let tar = root_tar()?;
            let opts = CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some("skiff-test/busybox".into()),
                tag: Some("1".into()),
                changes: vec!["CMD [\"/bin/sh\"]".into()],
                ..Default::default()
            };
            let mut progress =
                docker.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
            while let Some(step) = progress.next().await {
                step?;
            }
            anyhow::Ok(())
        })
        .await?;
    Ok(TEST_IMAGE)
}

/// A tar of `/bin/busybox` and its applet links.
fn root_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        anyhow::anyhow!("{BUSYBOX}: {e}; install Debian's busybox-static (scripts/test.sh does)")
    })?;
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    for d in ["bin/", "tmp/", "www/"] {
        b.append_data(&mut dir.clone(), d, std::io::empty())?;
    }
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    b.append_data(&mut file, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        b.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}
