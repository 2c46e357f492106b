//! `rouse install`: prints every manifest Rouse needs on a Kubernetes cluster, for
//! `rouse install | kubectl apply --server-side -f -`.

use std::io::Write;

use rouse_kube::install::{DEFAULT_IMAGE, InstallOptions, manifests, render_yaml};

/// `rouse install` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The image holding `rouse` (every role and the queue-proxy sidecar).
    #[arg(long, default_value = DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,
}

/// Prints the manifests as one multi-document YAML stream on stdout.
pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    if args.image.trim().is_empty() || args.image.chars().any(char::is_whitespace) {
        anyhow::bail!("--image: {:?} is not an image reference", args.image);
    }
    let docs = manifests(&InstallOptions {
        image: args.image.clone(),
    })?;
    let yaml = render_yaml(&docs)?;
    let mut out = std::io::stdout().lock();
    out.write_all(yaml.as_bytes())?;
    out.flush()?;
    Ok(())
}
