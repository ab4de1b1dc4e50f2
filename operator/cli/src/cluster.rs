//! The kube client of the cluster commands, from the kubeconfig (`KUBECONFIG`, `~/.kube/config`)
//! or the in-cluster service account, like kubectl.

use anyhow::{Context, Result};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Which cluster and namespace to talk to.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// A client and the namespace to act in.
    pub async fn client(&self) -> Result<(Client, String)> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            // KUBECONFIG may list several files separated by ':'.
            Some(path) => {
                let mut merged: Option<Kubeconfig> = None;
                for file in std::env::split_paths(path) {
                    let one = Kubeconfig::read_from(&file)
                        .with_context(|| format!("reading kubeconfig {}", file.display()))?;
                    merged = Some(match merged {
                        None => one,
                        Some(m) => m.merge(one).context("merging kubeconfig files")?,
                    });
                }
                let kubeconfig = merged.context("KUBECONFIG names no file")?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .context("loading the kubeconfig")?
            }
            None => Config::infer()
                .await
                .context("no kubeconfig found and not running in a cluster")?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok((client, namespace))
    }
}
