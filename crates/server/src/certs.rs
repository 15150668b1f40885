//! `intentd certs init`: a cluster CA and node certificates for a deployment.

use std::path::PathBuf;

use intentd_tls::{CertsPlan, NodeNames};

#[derive(clap::Args)]
pub struct CertsCmd {
    #[command(subcommand)]
    command: CertsSub,
}

#[derive(clap::Subcommand)]
enum CertsSub {
    /// Write a CA (ca.pem, ca.key) and a certificate and key per node (nodeID.pem,
    /// nodeID.key) into DIR. Without --node: nodes 1-3 named nodeN, localhost, 127.0.0.1.
    Init {
        /// Where the files go.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A node and the DNS names and IP addresses its certificate is valid for (its Raft
        /// address's host, and the names clients use): `ID=NAME[,NAME...]`. Repeatable.
        #[arg(long = "node", value_parser = parse_node)]
        nodes: Vec<NodeNames>,
        /// Validity of the node certificates, in days (the CA's is ten years).
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace files that exist (otherwise nothing is written).
        #[arg(long)]
        force: bool,
        /// Sign with the CA already in DIR instead of making one: renews node certificates
        /// or adds a node while the deployed ca.pem stays valid.
        #[arg(long)]
        reuse_ca: bool,
    },
}

fn parse_node(spec: &str) -> Result<NodeNames, String> {
    spec.parse()
}

impl CertsCmd {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            CertsSub::Init {
                dir,
                nodes,
                days,
                force,
                reuse_ca,
            } => {
                let nodes = if nodes.is_empty() {
                    (1..=3)
                        .map(|id| NodeNames {
                            id,
                            names: vec![
                                format!("node{id}"),
                                "localhost".into(),
                                "127.0.0.1".into(),
                            ],
                        })
                        .collect()
                } else {
                    nodes
                };
                if days == 0 {
                    anyhow::bail!("--days must be at least 1");
                }
                let written = intentd_tls::init_certs(&CertsPlan {
                    dir,
                    nodes,
                    days,
                    force,
                    reuse_ca,
                })?;
                for path in written {
                    println!("{}", path.display());
                }
                Ok(())
            }
        }
    }
}
