//! `knock suspend`, `resume`, `suspensions`, `hold`, `release`, `retry`, `cancel` and
//! `bounce`: the operator's actions on the queue, through the HTTP API.

use super::{ApiArgs, stdout_error};

use crate::surface::api::steer::{SteerView, SuspensionsView};
use clap::Args;

/// A provider, a domain or a stream to suspend or resume.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["provider", "domain", "stream"])))]
pub struct TargetArgs {
    /// The provider, as `knock queue` names it (google, microsoft, ...).
    #[arg(long)]
    provider: Option<String>,
    /// The recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// The stream (bulk, transactional, or one of `[stream.NAME]`): its mail everywhere.
    #[arg(long)]
    stream: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SuspendArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Why, for whoever looks at the queue later.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["ids", "domain", "provider", "all"])))]
pub struct HoldArgs {
    /// The messages: ids (or their starts), or a filter.
    #[command(flatten)]
    filter: FilterArgs,
    /// Why, for whoever looks at the queue later (hold only).
    #[arg(long)]
    reason: Option<String>,
}

/// Which queued mail a bulk action applies to: all the criteria given must hold.
#[derive(Args)]
pub struct FilterArgs {
    /// Message ids (or their starts).
    ids: Vec<String>,
    /// Only recipients at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only recipients whose domain belongs to this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Everything in the queue (instead of a filter).
    #[arg(long, conflicts_with_all = ["ids", "domain", "provider"])]
    all: bool,
    /// Only say how many recipients it would touch.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BounceArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Send the senders no DSN.
    #[arg(long)]
    no_dsn: bool,
}

impl FilterArgs {
    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"dry_run": self.dry_run});
        if !self.ids.is_empty() {
            body["messages"] = serde_json::json!(self.ids);
        }
        if let Some(d) = &self.domain {
            body["domain"] = d.clone().into();
        }
        if let Some(p) = &self.provider {
            body["provider"] = p.clone().into();
        }
        if self.all {
            body["all"] = true.into();
        }
        body
    }
}

impl TargetArgs {
    fn body(&self) -> serde_json::Value {
        match (&self.provider, &self.domain, &self.stream) {
            (Some(p), _, _) => serde_json::json!({"provider": p}),
            (_, Some(d), _) => serde_json::json!({"domain": d}),
            (_, _, Some(s)) => serde_json::json!({"stream": s}),
            _ => serde_json::json!({}),
        }
    }

    fn name(&self) -> String {
        match (&self.provider, &self.domain, &self.stream) {
            (Some(p), _, _) => format!("provider {p}"),
            (_, Some(d), _) => format!("domain {d}"),
            (_, _, Some(s)) => format!("stream {s}"),
            _ => String::new(),
        }
    }
}

pub async fn suspend(args: SuspendArgs) -> anyhow::Result<()> {
    let mut body = args.target.body();
    if let Some(r) = &args.reason {
        body["reason"] = r.clone().into();
    }
    let client = args.target.api.client()?;
    let v: SteerView = client.post("/api/v1/suspend", &body).await?;
    let what = format!(
        "suspended {}: {} recipients wait ({} of them in an attempt now)",
        args.target.name(),
        v.steered.recipients,
        v.steered.in_flight
    );
    print(&v, args.target.json, &what)
}

pub async fn resume(args: TargetArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v: SteerView = client.post("/api/v1/resume", &args.body()).await?;
    let what = format!(
        "resumed {}: {} recipients go at the destination's pace",
        args.name(),
        v.steered.recipients
    );
    print(&v, args.json, &what)
}

pub async fn suspensions(api: ApiArgs, json: bool) -> anyhow::Result<()> {
    let client = api.client()?;
    let v: SuspensionsView = client.get("/api/v1/suspensions").await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if v.suspensions.is_empty() {
        outln!("nothing is suspended or held")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .suspensions
        .iter()
        .map(|s| {
            vec![
                s.target.to_string(),
                s.suspension.since.to_string(),
                s.suspension.actor.clone(),
                s.suspension.reason.clone(),
            ]
        })
        .collect();
    out!(
        "{}",
        super::format::table(&["SUSPENDED", "SINCE", "BY", "REASON"], &rows, &[])
    )
}

pub async fn hold(args: HoldArgs, release: bool) -> anyhow::Result<()> {
    let f = &args.filter;
    let client = f.api.client()?;
    let (path, verb) = match release {
        false => ("hold", "held"),
        true => ("release", "released"),
    };
    if release && args.reason.is_some() {
        anyhow::bail!("--reason: a release takes no reason");
    }
    // One message by its id: its own endpoint, which says when it is held already.
    if let [id] = f.ids.as_slice()
        && f.domain.is_none()
        && f.provider.is_none()
        && !f.all
        && !f.dry_run
    {
        let body = match &args.reason {
            Some(r) => serde_json::json!({"reason": r}),
            None => serde_json::json!({}),
        };
        let v: SteerView = client.post_message(id, path, &body).await?;
        let what = format!("{verb} message {id}: {} recipients", v.steered.recipients);
        return print(&v, f.json, &what);
    }
    let mut body = f.body();
    if let Some(r) = &args.reason {
        body["reason"] = r.clone().into();
    }
    let v: SteerView = client.post(&format!("/api/v1/{path}"), &body).await?;
    let s = &v.steered;
    let what = match v.dry_run {
        true => format!(
            "would {path} {} messages ({} recipients)",
            s.messages.len(),
            s.recipients
        ),
        false => format!(
            "{verb} {} messages ({} recipients)",
            s.messages.len(),
            s.recipients
        ),
    };
    print(&v, f.json, &what)
}

pub async fn retry(args: FilterArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v: SteerView = client.post("/api/v1/retry", &args.body()).await?;
    let s = &v.steered;
    let mut what = match v.dry_run {
        true => format!(
            "would retry {} recipients in {} messages' groups",
            s.recipients, s.groups
        ),
        false => format!(
            "{} recipients in {} groups are due now, released at each destination's pace",
            s.recipients, s.groups
        ),
    };
    if let Some(t) = s.not_before.filter(|_| s.greylisted > 0) {
        what.push_str(&format!(
            "; {} greylisted groups keep their time (until {t}) so the greylist is not reset",
            s.greylisted
        ));
    }
    print(&v, args.json, &what)
}

pub async fn cancel(args: FilterArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let v: SteerView = client.post("/api/v1/cancel", &args.body()).await?;
    print(&v, args.json, &ended(&v, "cancel", "cancelled"))
}

pub async fn bounce(args: BounceArgs) -> anyhow::Result<()> {
    let client = args.filter.api.client()?;
    let mut body = args.filter.body();
    body["dsn"] = (!args.no_dsn).into();
    let v: SteerView = client.post("/api/v1/bounce", &body).await?;
    let mut what = ended(&v, "bounce", "bounced");
    if !args.no_dsn && !v.dry_run {
        what.push_str("; their senders get a DSN");
    }
    print(&v, args.filter.json, &what)
}

fn ended(v: &SteerView, verb: &str, done: &str) -> String {
    let s = &v.steered;
    let mut text = match v.dry_run {
        true => format!(
            "would {verb} {} recipients in {} groups",
            s.recipients, s.groups
        ),
        false => format!("{done} {} recipients in {} groups", s.recipients, s.groups),
    };
    if s.in_flight > 0 {
        text.push_str(&format!(
            " ({} groups are in an attempt now: what it leaves pending is {done} when it reports)",
            s.in_flight
        ));
    }
    text
}

fn print(v: &SteerView, json: bool, text: &str) -> anyhow::Result<()> {
    match json {
        true => outln!("{}", serde_json::to_string_pretty(v)?),
        false => outln!("{text}"),
    }
}
