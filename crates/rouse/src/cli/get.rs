//! `rouse get KIND [NAME] [-o table|yaml|json]` and `rouse delete KIND NAME`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use rouse_api::Kind;
use serde_json::Value;

use super::client::ApiClient;
use super::table::{self, arr_at};
use super::{OutputFormat, kind_ref, parse_kind};
use crate::api::paths;

/// `rouse get` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// The kind: a Knative name or short name (`ksvc`, `config`, `rev`, `rt`, `kpa`, `sks`).
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// One object's name; all of the namespace's when absent.
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// List across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
}

/// `rouse delete` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The kind: a Knative name or short name.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// The object's name.
    pub name: String,
}

/// Runs `rouse get`.
pub async fn run_get(client: &ApiClient, namespace: &str, args: &GetArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind).map_err(anyhow::Error::msg)?;
    let ns = (!args.all_namespaces).then_some(namespace);
    let (items, whole) = match &args.name {
        Some(name) => {
            let obj = client.get(&paths::item(kind, namespace, name)).await?;
            (vec![obj.clone()], obj)
        }
        None => {
            let list = client.get(&paths::collection(kind, ns)).await?;
            (arr_at(&list, "/items").to_vec(), list)
        }
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&whole)?),
        OutputFormat::Yaml => print!("{}", rouse_api::decode::to_yaml(&whole)),
        OutputFormat::Table => {
            if items.is_empty() {
                match ns {
                    Some(ns) => eprintln!("No {} found in {ns} namespace.", kind.plural()),
                    None => eprintln!("No {} found.", kind.plural()),
                }
                return Ok(());
            }
            let traffic = if kind == Kind::Revision {
                // TRAFFIC and TAGS come from the routes' resolved traffic.
                let ns = if args.name.is_some() {
                    Some(namespace)
                } else {
                    ns
                };
                match client.get(&paths::collection(Kind::Route, ns)).await {
                    Ok(routes) => table::traffic_by_revision(arr_at(&routes, "/items")),
                    Err(_) => BTreeMap::new(),
                }
            } else {
                BTreeMap::new()
            };
            let t = table::table(kind, &items, now_secs(), &traffic, ns.is_none());
            print!("{}", t.render());
        }
    }
    Ok(())
}

/// Runs `rouse delete`.
pub async fn run_delete(
    client: &ApiClient,
    namespace: &str,
    args: &DeleteArgs,
) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind).map_err(anyhow::Error::msg)?;
    client
        .json(
            Method::DELETE,
            &paths::item(kind, namespace, &args.name),
            None::<&Value>,
        )
        .await?;
    println!("{} \"{}\" deleted", kind_ref(kind), args.name);
    Ok(())
}

/// Seconds since the epoch, for ages.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
