//! The harness's own parts that other tests rely on.

use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use skiff_tests::image::{docker, ensure_test_image};

#[tokio::test(flavor = "multi_thread")]
async fn test_image_is_built_without_a_registry_and_runs() {
    let docker = docker().await.unwrap();
    let image = ensure_test_image(&docker).await.unwrap();
    let name = format!("skiff-harness-{}", std::process::id());
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo hello from $(hostname)".into(),
        ]),
        labels: Some([("skiff.test".to_owned(), name.clone())].into()),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .unwrap();
    docker
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
    while let Some(r) = wait.next().await {
        assert_eq!(r.unwrap().status_code, 0);
    }
    let mut logs = docker.logs(
        &name,
        Some(LogsOptions {
            stdout: true,
            ..Default::default()
        }),
    );
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&chunk.unwrap().to_string());
    }
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert!(text.contains("hello from"), "{text}");
}
