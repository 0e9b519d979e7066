//! Making sure a job's image is present, by its pull policy. A present image is never re-pulled
//! under `if-not-present`; pull errors are reported with what was tried.

use bollard::Docker;
use futures::StreamExt;
use tug_core::job::PullPolicy;

use super::{ContainerError, PullError};

/// Ensures `image` is present; the error is the reason the run fails with.
pub async fn ensure(docker: &Docker, image: &str, pull: PullPolicy) -> Result<(), ContainerError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
        Err(source) => return Err(ContainerError::Inspect { image: image.to_string(), source }),
    };
    match (present, pull) {
        (true, PullPolicy::IfNotPresent | PullPolicy::Never) => Ok(()),
        (false, PullPolicy::Never) => Err(ContainerError::ImageMissing { image: image.to_string() }),
        (_, _) => match pull_image(docker, image).await {
            Ok(()) => Ok(()),
            Err(e) if present => {
                tracing::warn!(image, error = %e, "pull failed (pull = \"always\"); using the local image");
                Ok(())
            }
            Err(source) => Err(ContainerError::PullFailed { image: image.to_string(), source }),
        },
    }
}

async fn pull_image(docker: &Docker, image: &str) -> Result<(), PullError> {
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (image, "latest"),
    };
    let opts = bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(repo).tag(tag).build();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        if let Some(e) = item?.error_detail.and_then(|d| d.message) {
            return Err(PullError::Refused(e));
        }
    }
    Ok(())
}
