//! `rouse get KIND [NAME] [-o table|yaml|json] [-l SELECTOR] [-w]` and
//! `rouse delete (KIND NAME | KIND -l SELECTOR | -f FILE)`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use rouse_api::Kind;
use serde_json::Value;

use super::client::ApiClient;
use super::gateway::{display_url, gateway_port};
use super::manifest;
use super::selector::{Selector, parse_selector};
use super::table::{self, arr_at, str_at};
use super::{ApiTarget, OutputFormat, Reported, kind_ref, parse_kind};
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
    /// Only objects whose labels match (`k=v`, `k!=v`, `k`, `!k`, comma-separated).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", value_parser = parse_selector, conflicts_with = "name")]
    pub selector: Option<Selector>,
    /// After listing, keep watching and print each object again when it changes (Ctrl-C ends).
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub target: ApiTarget,
}

/// `rouse delete` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The kind: a Knative name or short name.
    #[arg(
        value_name = "KIND",
        required_unless_present = "files",
        conflicts_with = "files"
    )]
    pub kind: Option<String>,
    /// The object's name (or use `-l`).
    #[arg(required_unless_present_any = ["files", "selector"], conflicts_with = "selector")]
    pub name: Option<String>,
    /// Delete the objects named in these manifests (file, directory or `-`), repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Delete every object of KIND whose labels match.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", value_parser = parse_selector, requires = "kind")]
    pub selector: Option<Selector>,
    #[command(flatten)]
    pub target: ApiTarget,
}

/// How long `get -w` waits before looking again when the API's watch is not open (it could not
/// be opened, or it ended).
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Runs `rouse get`.
pub async fn run_get(client: &ApiClient, namespace: &str, args: &GetArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind).map_err(anyhow::Error::msg)?;
    let ns = (!args.all_namespaces).then_some(namespace);
    let (items, whole) = fetch(client, kind, namespace, ns, args).await?;
    let port = gateway_port(client).await;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&whole)?),
        OutputFormat::Yaml => print!("{}", to_yaml(&whole)?),
        OutputFormat::Table => {
            if items.is_empty() && !args.watch {
                match ns {
                    Some(ns) => eprintln!("No {} found in {ns} namespace.", kind.plural()),
                    None => eprintln!("No {} found.", kind.plural()),
                }
                return Ok(());
            }
            let t = render(client, kind, namespace, ns, args, &items, port).await;
            print!("{}", t.render());
        }
    }
    if args.watch {
        let rv = str_at(&whole, "/metadata/resourceVersion").to_string();
        watch(client, kind, namespace, ns, args, items, port, rv).await?;
    }
    Ok(())
}

/// The objects to show (filtered by the selector) and what the API returned as a whole.
async fn fetch(
    client: &ApiClient,
    kind: Kind,
    namespace: &str,
    ns: Option<&str>,
    args: &GetArgs,
) -> anyhow::Result<(Vec<Value>, Value)> {
    Ok(match &args.name {
        Some(name) => {
            let obj = client.get(&paths::item(kind, namespace, name)).await?;
            (vec![obj.clone()], obj)
        }
        None => {
            let mut list = client.get(&paths::collection(kind, ns)).await?;
            if let Some(sel) = &args.selector
                && let Some(items) = list.get_mut("items").and_then(Value::as_array_mut)
            {
                items.retain(|o| sel.matches(o));
            }
            (arr_at(&list, "/items").to_vec(), list)
        }
    })
}

/// The table of `items`, with what other kinds add: revisions' traffic from the routes,
/// services' failure cause from their newest revision.
async fn render(
    client: &ApiClient,
    kind: Kind,
    namespace: &str,
    ns: Option<&str>,
    args: &GetArgs,
    items: &[Value],
    port: Option<u16>,
) -> table::Table {
    let lookup_ns = if args.name.is_some() {
        Some(namespace)
    } else {
        ns
    };
    let extra = match kind {
        // TRAFFIC and TAGS come from the routes' resolved traffic.
        Kind::Revision => match client.get(&paths::collection(Kind::Route, lookup_ns)).await {
            Ok(routes) => {
                table::Extra::Traffic(table::traffic_by_revision(arr_at(&routes, "/items")))
            }
            Err(_) => table::Extra::None,
        },
        Kind::Service | Kind::Configuration => {
            match client
                .get(&paths::collection(Kind::Revision, lookup_ns))
                .await
            {
                Ok(revs) => {
                    table::Extra::Revisions(table::revisions_by_name(arr_at(&revs, "/items")))
                }
                Err(_) => table::Extra::None,
            }
        }
        _ => table::Extra::None,
    };
    let mut t = table::table(kind, items, now_secs(), &extra, ns.is_none());
    if let Some(col) = t.headers.iter().position(|h| *h == "URL") {
        for row in &mut t.rows {
            row[col] = display_url(&row[col], port);
        }
    }
    t
}

/// Waits for the API's watch to report a change (any event line), opening the watch from `rv`
/// when it is not open; when it cannot be opened or ends, waits [`WATCH_POLL`] instead.
async fn next_change(client: &ApiClient, stream: &mut Option<hyper::body::Incoming>, path: &str) {
    use http_body_util::BodyExt as _;
    if stream.is_none() {
        match client.stream(path).await {
            Ok(body) => *stream = Some(body),
            Err(e) => {
                tracing::debug!(error = %e, "get -w: the watch could not be opened; polling");
                tokio::time::sleep(WATCH_POLL).await;
                return;
            }
        }
    }
    if let Some(body) = stream.as_mut() {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if frame.data_ref().is_some_and(|d| d.contains(&b'\n')) {
                        return;
                    }
                }
                _ => {
                    *stream = None;
                    tokio::time::sleep(WATCH_POLL).await;
                    return;
                }
            }
        }
    }
}

/// `get -w`: lists again whenever the API's watch reports a change, and prints each object's
/// row again when it changed (by `resourceVersion`), and a line when one is deleted. Rows
/// only, like kubectl's watch.
#[allow(clippy::too_many_arguments)]
async fn watch(
    client: &ApiClient,
    kind: Kind,
    namespace: &str,
    ns: Option<&str>,
    args: &GetArgs,
    first: Vec<Value>,
    port: Option<u16>,
    mut rv: String,
) -> anyhow::Result<()> {
    let mut stream = None;
    use std::io::Write as _;
    let key = |o: &Value| {
        format!(
            "{}/{}",
            str_at(o, "/metadata/namespace"),
            str_at(o, "/metadata/name")
        )
    };
    let mut seen: BTreeMap<String, String> = first
        .iter()
        .map(|o| (key(o), str_at(o, "/metadata/resourceVersion").to_string()))
        .collect();
    loop {
        let mut path = format!("{}?watch=1", paths::collection(kind, ns));
        if !rv.is_empty() {
            path.push_str(&format!("&resourceVersion={rv}"));
        }
        if let Some(name) = &args.name {
            path.push_str(&format!("&fieldSelector=metadata.name%3D{name}"));
        }
        next_change(client, &mut stream, &path).await;
        let items = match fetch(client, kind, namespace, ns, args).await {
            Ok((items, whole)) => {
                rv = str_at(&whole, "/metadata/resourceVersion").to_string();
                items
            }
            Err(e) if args.name.is_some() && is_not_found(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut changed = Vec::new();
        let mut now = BTreeMap::new();
        for o in items {
            let rv = str_at(&o, "/metadata/resourceVersion").to_string();
            if seen.get(&key(&o)) != Some(&rv) {
                changed.push(o.clone());
            }
            now.insert(key(&o), rv);
        }
        for gone in seen.keys().filter(|k| !now.contains_key(*k)) {
            println!("{gone} deleted");
        }
        seen = now;
        if changed.is_empty() {
            continue;
        }
        match args.output {
            OutputFormat::Json => {
                for o in &changed {
                    println!("{}", serde_json::to_string_pretty(o)?);
                }
            }
            OutputFormat::Yaml => {
                for o in &changed {
                    print!("---\n{}", to_yaml(o)?);
                }
            }
            OutputFormat::Table => {
                let t = render(client, kind, namespace, ns, args, &changed, port).await;
                // The header was printed with the first listing; rows only from now on.
                let rendered = t.render();
                for line in rendered.lines().skip(1) {
                    println!("{line}");
                }
            }
        }
        std::io::stdout().flush()?;
    }
}

/// YAML for `-o yaml` (one place for the YAML library).
fn to_yaml(v: &Value) -> anyhow::Result<String> {
    Ok(rouse_api::decode::to_yaml(v))
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<super::client::ClientError>()
        .is_some_and(|c| c.is_not_found())
}

/// Runs `rouse delete`.
pub async fn run_delete(
    client: &ApiClient,
    namespace: &str,
    args: &DeleteArgs,
) -> anyhow::Result<()> {
    let mut targets: Vec<(Kind, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for m in manifest::load(&args.files).map_err(anyhow::Error::msg)? {
            let name = str_at(&m.value, "/metadata/name");
            if name.is_empty() {
                anyhow::bail!(
                    "{}: a {} without metadata.name cannot be deleted by file",
                    m.source,
                    m.kind.name()
                );
            }
            let ns = match str_at(&m.value, "/metadata/namespace") {
                "" => namespace,
                ns => ns,
            };
            targets.push((m.kind, ns.to_string(), name.to_string()));
        }
    } else {
        let kind_arg = args.kind.as_deref().unwrap_or_default();
        let kind = parse_kind(kind_arg).map_err(anyhow::Error::msg)?;
        match (&args.name, &args.selector) {
            (Some(name), _) => targets.push((kind, namespace.to_string(), name.clone())),
            (None, Some(sel)) => {
                let list = client
                    .get(&paths::collection(kind, Some(namespace)))
                    .await?;
                for o in arr_at(&list, "/items").iter().filter(|o| sel.matches(o)) {
                    let name = str_at(o, "/metadata/name").to_string();
                    targets.push((kind, namespace.to_string(), name));
                }
                if targets.is_empty() {
                    eprintln!("No resources found");
                }
            }
            (None, None) => anyhow::bail!("delete needs a NAME, -l SELECTOR or -f FILE"),
        }
    }
    let mut failed = false;
    for (kind, ns, name) in targets {
        let path = paths::item(kind, &ns, &name);
        match client.json(Method::DELETE, &path, None::<&Value>).await {
            Ok(_) => println!("{} \"{name}\" deleted", kind_ref(kind)),
            // By file, one that fails (already gone, say) must not stop the rest: kubectl
            // reports it and goes on.
            Err(e) if !args.files.is_empty() => {
                failed = true;
                eprintln!("{e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// Seconds since the epoch, for ages.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
