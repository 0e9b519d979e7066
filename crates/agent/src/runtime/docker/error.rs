//! Why the docker runtime could not start or prepare a job's container, each with what to do.

use std::path::PathBuf;
use std::time::Duration;

use super::describe;

/// Why the docker runtime could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The daemon did not answer.
    #[error("cannot reach the Docker daemon at {socket}: {}; start Docker (or set DOCKER_HOST=unix://PATH)", describe(source))]
    Unreachable {
        /// The socket tried.
        socket: String,
        /// What the client reported.
        #[source]
        source: bollard::errors::Error,
    },
    /// The daemon accepted the connection but did not answer in time.
    #[error("cannot reach the Docker daemon at {socket}: no answer within {waited:?}; check that Docker is healthy (`docker info`)")]
    NoAnswer {
        /// The socket tried.
        socket: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The state directory could not be made.
    #[error("cannot create the docker state directory {0}: {1}; check that the agent's data dir is writable")]
    StateDir(PathBuf, #[source] std::io::Error),
}

/// Why a job's container (or its image) could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The job asks for a network pool, and this agent has no container network (or no dwait to
    /// wait for it).
    #[error(
        "the job's network pool {0:?} needs this agent's container network; start `tug agent run` with \
         --vtep ADDRESS (VXLAN pools) or --ovs-bridge NAME (VLAN pools), and with the dwait executor"
    )]
    NoNetwork(String),
    /// The task names no image.
    #[error("a docker job needs docker.image; set `image` in the job's [docker] table")]
    NoImage,
    /// The image is not on this host and the job may not pull it.
    #[error(
        "image {image} is not on this host and the job has pull = \"never\"; load it here ({}), \
         or set pull = \"if-not-present\"",
        load_hint(image)
    )]
    ImageMissing {
        /// The image.
        image: String,
    },
    /// The image is not on this host and pulling it failed.
    #[error(
        "image {image} is not on this host and pulling it failed: {source}; check the image name and that this host \
         can reach its registry, or load it here ({})",
        load_hint(image)
    )]
    PullFailed {
        /// The image.
        image: String,
        /// Why the pull failed.
        #[source]
        source: PullError,
    },
    /// Docker could not say whether the image is present.
    #[error("cannot inspect image {image}: {}; check that Docker is healthy (`docker info`)", describe(source))]
    Inspect {
        /// The image.
        image: String,
        /// What Docker said.
        #[source]
        source: bollard::errors::Error,
    },
    /// The directory the container's executor socket lives in could not be made.
    #[error("cannot create the container's directory {dir}: {source}; check that the agent's data dir is writable")]
    RunDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Docker refused to create the container.
    #[error("cannot create the container: {}", describe(source))]
    Create {
        /// What Docker said.
        #[source]
        source: bollard::errors::Error,
    },
    /// Docker could not start the container.
    #[error("cannot start the container: {}; check the job's docker settings (`docker logs` shows the container's side)", describe(source))]
    Start {
        /// What Docker said.
        #[source]
        source: bollard::errors::Error,
    },
    /// The executor inside the container never listened.
    #[error(
        "the container's executor (dwait) did not listen within {0:?}; check that the image can run a static \
         binary and that the container does not exit at once (`docker logs`)"
    )]
    ExecutorTimeout(Duration),
    /// The container exited before its executor listened; its last output says why (a networked
    /// container whose network was refused, say).
    #[error("the container exited before its executor (dwait) listened: {0}")]
    ExitedEarly(String),
}

/// Why pulling an image failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The request to Docker failed.
    #[error("{}", describe(.0))]
    Docker(#[from] bollard::errors::Error),
    /// Docker reported an error while pulling (no such image, no registry reachable, ...).
    #[error("{0}")]
    Refused(String),
}

/// How to put an image on a host without a registry.
fn load_hint(image: &str) -> String {
    format!("`docker load -i IMAGE.tar`, or from a root file system: `tar -C ROOTFS -c . | docker import - {image}`")
}

/// Why a file cannot serve as the executor (`dwait`) bind-mounted into warm containers.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorCheckError {
    /// The file could not be read.
    #[error("cannot read the executor {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a 64-bit ELF binary.
    #[error("the executor {0} is not a 64-bit ELF binary")]
    NotElf(PathBuf),
    /// The program header table runs past the end of the file.
    #[error("the executor {0} has a truncated program header table")]
    Truncated(PathBuf),
    /// The binary needs a dynamic loader, which an arbitrary image may not have.
    #[error(
        "the executor {0} is dynamically linked; build it static: RUSTFLAGS=\"-C target-feature=+crt-static\" \
         cargo build -p dwait --release --target x86_64-unknown-linux-gnu"
    )]
    Dynamic(PathBuf),
}
