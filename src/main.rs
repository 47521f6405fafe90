use clap::{Parser, Subcommand};

/// regcred keeps container-registry pull Secrets fresh.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RegistryCredential CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", regcred::crdgen::crd_yaml()),
    }
    Ok(())
}
