//! `knock suppress list|show|add|remove`: the suppression list, through the HTTP API.

use super::{ApiArgs, stdout_error};
use crate::surface::api::{SuppressionView, SuppressionsView};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct SuppressArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's answers as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SuppressCommand,
}

#[derive(Subcommand)]
pub enum SuppressCommand {
    /// Every suppressed address, since when and why.
    List,
    /// Why one address is suppressed, and since when.
    Show {
        /// The address.
        address: String,
    },
    /// Suppress an address: mail to it is accepted but never sent.
    Add {
        /// The address.
        address: String,
        /// Why, for whoever looks later.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Take an address off the list.
    Remove {
        /// The address.
        address: String,
    },
}

pub async fn suppress(args: SuppressArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let json = args.json;
    match args.command {
        SuppressCommand::List => {
            let v: SuppressionsView = client.get("/api/v1/suppressions").await?;
            if json {
                return outln!("{}", serde_json::to_string_pretty(&v)?);
            }
            if v.suppressions.is_empty() {
                return outln!("the suppression list is empty");
            }
            let rows: Vec<Vec<String>> = v.suppressions.iter().map(row).collect();
            out!(
                "{}",
                super::format::table(&["ADDRESS", "SINCE", "REASON"], &rows, &[])
            )
        }
        SuppressCommand::Show { address } => {
            let v: SuppressionView = client.suppression(&address, None).await?;
            print(&v, json)
        }
        SuppressCommand::Add { address, reason } => {
            let body = match reason {
                Some(r) => serde_json::json!({"reason": r}),
                None => serde_json::json!({}),
            };
            let v: SuppressionView = client.suppression(&address, Some(&body)).await?;
            print(&v, json)
        }
        SuppressCommand::Remove { address } => {
            client.unsuppress(&address).await?;
            match json {
                true => outln!("{}", serde_json::json!({"removed": address})),
                false => outln!("{address} is off the suppression list"),
            }
        }
    }
}

fn row(s: &SuppressionView) -> Vec<String> {
    let mut reason = s.entry.reason.clone();
    if let Some(id) = &s.entry.message_id {
        reason.push_str(&format!(" (message {id})"));
    }
    vec![s.address.clone(), s.entry.added_at.to_string(), reason]
}

fn print(v: &SuppressionView, json: bool) -> anyhow::Result<()> {
    match json {
        true => outln!("{}", serde_json::to_string_pretty(v)?),
        false => out!(
            "{}",
            super::format::table(&["ADDRESS", "SINCE", "REASON"], &[row(v)], &[])
        ),
    }
}
