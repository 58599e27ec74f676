//! Tenant and operator commands: thin wrappers over the REST API.

use crate::output::{gpu_list, json, or_dash, table};
use crate::profile;
use clap::Subcommand;
use gpucloud_api as api;
use gpucloud_client::Client;
use gpucloud_model::{GpuModel, Money, Region};
use std::time::{Duration, Instant};

pub struct Ctx {
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub json: bool,
    /// A named profile instead of the default.
    pub profile: Option<String>,
    /// Trusted instead of the system's roots for https:// servers.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Which key a command needs when none was given explicitly.
#[derive(Clone, Copy, PartialEq)]
pub enum As {
    Tenant,
    Operator,
}

impl Ctx {
    pub fn client(&self, role: As) -> Result<Client, String> {
        // Inside a workload: its node's agent makes the call for it (its own instance, cluster
        // and job only); no key is needed.
        if let (None, None, None, Ok(meta)) =
            (&self.url, &self.api_key, &self.profile, std::env::var("GPUCLOUD_METADATA_URL"))
        {
            return Ok(Client::new(&format!("{}/api", meta.trim_end_matches('/')), None, self.tls()?));
        }
        let name = self.profile.as_deref();
        if let Some(n) = name {
            profile::check_profile_name(n)?;
        }
        let prof = profile::load_profile(name);
        if let (Some(n), None, None) = (name, &prof, &self.url) {
            return Err(format!(
                "no profile named '{n}' ({}): `gpucloud dev --profile {n}` writes it",
                profile::profile_file(name).display()
            ));
        }
        let url = self.url.clone().or_else(|| prof.as_ref().map(|p| p.url.clone())).ok_or_else(|| {
            format!(
                "no server configured: run `gpucloud dev`, or set GPUCLOUD_URL and GPUCLOUD_API_KEY (profile: {})",
                profile::profile_file(name).display()
            )
        })?;
        let key = self.api_key.clone().or_else(|| {
            let p = prof?;
            match role {
                As::Operator => p.operator_key.or(p.api_key),
                As::Tenant => p.api_key,
            }
        });
        Ok(Client::new(&url, key, self.tls()?))
    }

    fn tls(&self) -> Result<ureq::tls::TlsConfig, String> {
        gpucloud_client::tls::client_config(self.ca_file.as_deref())
    }
}

type Res = Result<(), String>;

pub fn show<T: serde::Serialize>(ctx: &Ctx, value: &T, text: impl FnOnce(&T) -> String) {
    if ctx.json {
        println!("{}", json(value));
    } else {
        println!("{}", text(value));
    }
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// GPU model, e.g. A100-40GB (see `gpucloud models`).
    #[arg(long)]
    gpu: String,
    /// Number of GPUs, all on one node.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    count: i64,
    /// Region; any when omitted (see `gpucloud capacity`).
    #[arg(long)]
    region: Option<String>,
    /// The command line to run (not needed with --dry-run, or with a --template that has one).
    #[arg(long, required_unless_present_any = ["dry_run", "template"])]
    command: Option<String>,
    /// Start from a template (see `gpucloud template list`): its image, command, environment,
    /// secrets and ports, each overridden by what you give here.
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Rent a slice: this share of one GPU's compute, e.g. 25% (memory follows unless given).
    #[arg(long, value_name = "PERCENT")]
    gpu_share: Option<String>,
    /// Rent a slice: this much of one GPU's memory, e.g. 10GiB or 512MiB (compute follows).
    #[arg(long, value_name = "SIZE")]
    gpu_memory: Option<String>,
    /// Rent a MIG slice, e.g. 1g.10gb (see `gpucloud models`).
    #[arg(long, value_name = "PROFILE")]
    mig: Option<String>,
    /// Makes a retried create safe: the same key never creates twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait up to this many seconds for the instance to run.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
    /// Print the price and an estimate instead of creating anything.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: the estimate's duration in hours.
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// Rent spot capacity: cheaper, preempted with notice (see `gpucloud spot prices`).
    #[arg(long)]
    spot: bool,
    /// With --spot: the most you pay per GPU-hour; preempted when the spot price passes it.
    #[arg(long, value_name = "PRICE", requires = "spot", allow_hyphen_values = true)]
    max_price: Option<String>,
    /// Run on your reservation (see `gpucloud reservation list`): always room, already paid for.
    #[arg(long, conflicts_with = "spot")]
    reserved: bool,
    /// The container image to run in, e.g. nvcr.io/nvidia/pytorch:24.05-py3 (the node's own
    /// when omitted; needs nodes with the container runtime).
    #[arg(long)]
    image: Option<String>,
    /// An environment variable, KEY=VALUE (repeatable); KEY=secret:NAME takes your secret NAME.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Your secret NAME as the variable NAME (repeatable; see `gpucloud secret set`).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// A port the workload serves on: 8888/http (through the server's proxy, with your key)
    /// or 22/tcp (a raw port on the node). Repeatable.
    #[arg(long = "port", value_name = "PORT/PROTO")]
    ports: Vec<String>,
    /// Mount your volume NAME at PATH, e.g. data:/workspace (see `gpucloud volume create`): the
    /// instance runs on the volume's node and holds it until terminated.
    #[arg(long, value_name = "NAME:PATH")]
    volume: Option<String>,
    /// The project to create in (`gpucloud project list`) [default: your key's, or default].
    #[arg(long)]
    project: Option<String>,
    /// When the project is at its GPU limit: fail (refused) or wait (queued until it has room).
    #[arg(long, value_parser = crate::commands::one_of!(api::OnQuota))]
    on_quota: Option<api::OnQuota>,
    /// Its priority class [default: default]: production is served first, batch last; waiting
    /// work rises a class per aging period, so batch work is never starved.
    #[arg(long, value_parser = crate::commands::one_of!(api::Priority))]
    priority: Option<api::Priority>,
}

#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Create an instance with whole GPUs or a slice.
    Create(Box<CreateArgs>),
    /// List your instances.
    List,
    /// Show one instance, and why it is pending if it is.
    Show { id: String },
    /// Stop an instance (its GPUs are released).
    Stop { id: String },
    /// Start a stopped instance again.
    Start { id: String },
    /// Terminate an instance for good.
    Terminate { id: String },
    /// What the workload pushed with log_metrics (loss, samples/s...), oldest first.
    Metrics {
        id: String,
        /// One metric only.
        #[arg(long)]
        name: Option<String>,
    },
    /// The workload's output (stdout and stderr).
    Logs {
        id: String,
        /// Keep printing new output until the instance ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Open a shell in a running instance with OpenSSH's ssh (or run COMMAND there): a key
    /// added with `gpucloud ssh-key add`, the node's host key checked.
    Ssh {
        id: String,
        /// The private key to use (ssh -i) [default: what ssh picks: ~/.ssh/id_*, the agent].
        #[arg(short = 'i', long)]
        identity: Option<std::path::PathBuf>,
        /// What to run instead of a shell (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn instance_rows(list: &[api::Instance]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.name.clone(),
                i.state.to_string(),
                gpus_of(i),
                or_dash(i.region.as_ref()),
                or_dash(i.node.as_ref()),
                gpu_list(&i.gpus),
            ]
        })
        .collect();
    table(&["ID", "NAME", "STATE", "GPUS", "REGION", "NODE", "GPU IDX"], &rows)
}

/// Where it runs, and what was asked when that differs ("eu-1 (asked: any)").
fn region_of(i: &api::Instance) -> String {
    match (&i.region, &i.requested_region) {
        (None, _) => "any".into(),
        (Some(r), Some(asked)) if r == asked => r.clone(),
        (Some(r), asked) => format!("{r} (asked: {})", asked.as_deref().unwrap_or("any")),
    }
}

fn instance_detail(i: &api::Instance) -> String {
    let mut lines = vec![
        format!("id:        {}", i.id),
        format!("name:      {}", i.name),
        format!("project:   {} (priority {})", i.project, i.priority),
        format!("state:     {}{}", i.state, i.stop_target.as_ref().map(|t| format!(" (then {t})")).unwrap_or_default()),
        format!("gpus:      {}", gpus_of(i)),
        format!("region:    {}", region_of(i)),
        format!("node:      {}", or_dash(i.node.as_ref())),
        format!("gpu index: {}", gpu_list(&i.gpus)),
        format!("command:   {}", i.command),
        format!("created:   {}", i.created_at),
        format!("updated:   {}", i.updated_at),
    ];
    if let Some(code) = i.exit_code {
        lines.push(format!("exit code: {code}"));
    }
    if let Some(r) = &i.pending_reason {
        lines.push(format!("pending:   {r}"));
    }
    if let Some(r) = &i.reason {
        lines.push(format!("reason:    {r}"));
    }
    if let Some(why) = &i.placed {
        lines.push(format!("placed:    {why}"));
    }
    lines.insert(
        4,
        format!(
            "tier:      {}{}",
            i.tier,
            i.max_price_per_gpu_hour.map(|p| format!(" (max {p}/GPU-hour)")).unwrap_or_default()
        ),
    );
    if let Some(n) = &i.preemption {
        lines.push(format!(
            "notice:    {} s, given {}{}: {}",
            n.notice_seconds,
            n.given_at,
            n.deadline.as_ref().map(|d| format!(", deadline {d}")).unwrap_or_default(),
            n.reason
        ));
    }
    if let Some(c) = &i.checkpoint {
        lines.push(format!("checkpoint: {c}"));
    }
    if let Some(e) = &i.endpoint {
        lines.push(format!("endpoint:  {e} (GPUCLOUD_PORT on its node)"));
    }
    if let Some(s) = &i.ssh {
        lines.push(format!("ssh:       {s} (or: gpucloud instance ssh {})", i.id));
    }
    if let (Some(j), Some(a)) = (&i.job, i.attempt) {
        lines.push(format!("job:       {j} (attempt {a})"));
    }
    if let Some(image) = &i.image {
        lines.push(format!("image:     {image}"));
    }
    if let Some(p) = &i.progress {
        lines.push(format!("progress:  {p} (not billed)"));
    }
    if let Some(v) = &i.volume {
        lines.push(format!("volume:    {v}"));
    }
    for (k, v) in &i.env {
        lines.push(format!("env:       {k}={v}"));
    }
    for p in &i.ports {
        let url = p.url.clone().unwrap_or_else(|| "(once running)".into());
        lines.push(format!("port:      {}/{} -> {url}", p.port, p.protocol));
    }
    lines.join("\n")
}

/// `KEY=VALUE` pairs; the server checks names and values.
/// What each member of a cluster or pool runs in besides its command, as on `instance create`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemberWorkloadArgs {
    /// The container image each one runs in (the node's own when omitted).
    #[arg(long)]
    pub image: Option<String>,
    /// An environment variable, KEY=VALUE (repeatable); KEY=secret:NAME takes your secret NAME.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Your secret NAME as the variable NAME (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// A port each one serves on: 8888/http (through the proxy) or 22/tcp. Repeatable.
    #[arg(long = "port", value_name = "PORT/PROTO")]
    pub ports: Vec<String>,
}

impl MemberWorkloadArgs {
    /// The image, environment, secrets and ports of a create request.
    pub fn parts(self) -> Result<MemberWorkload, String> {
        Ok(MemberWorkload { image: self.image, env: parse_env(&self.env)?, secrets: self.secrets, ports: self.ports })
    }
}

pub struct MemberWorkload {
    pub image: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub ports: Vec<String>,
}

pub fn parse_env(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("--env '{p}': expected KEY=VALUE"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("--env {k} is given twice"));
        }
    }
    Ok(out)
}

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Save what an instance runs with under a name, for `instance create --template NAME`.
    Create {
        name: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        command: Option<String>,
        /// KEY=VALUE (repeatable); KEY=secret:NAME takes your secret NAME.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// A secret as the variable of its name (repeatable).
        #[arg(long = "secret", value_name = "NAME")]
        secrets: Vec<String>,
        /// PORT/http or PORT/tcp (repeatable).
        #[arg(long = "port", value_name = "PORT/PROTO")]
        ports: Vec<String>,
        /// A volume to mount, NAME:PATH.
        #[arg(long = "volume-mount", visible_alias = "volume", value_name = "NAME:PATH")]
        volume: Option<String>,
    },
    /// The built-in templates and yours.
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

fn template_detail(t: &api::Template) -> String {
    let mut lines = vec![format!("name:    {}{}", t.name, if t.builtin { " (built in)" } else { "" })];
    if let Some(d) = &t.description {
        lines.push(format!("about:   {d}"));
    }
    lines.push(format!("image:   {}", t.image.as_deref().unwrap_or("(the node's)")));
    lines.push(format!("command: {}", t.command.as_deref().unwrap_or("(given at create)")));
    lines.extend(t.env.iter().map(|(k, v)| format!("env:     {k}={v}")));
    lines.extend(t.secrets.iter().map(|s| format!("secret:  {s}")));
    lines.extend(t.ports.iter().map(|p| format!("port:    {p}")));
    lines.extend(t.volume.iter().map(|v| format!("volume:  {v}")));
    lines.join("\n")
}

pub fn template(ctx: &Ctx, cmd: TemplateCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        TemplateCmd::Create { name, image, command, env, secrets, ports, volume } => {
            let body =
                api::CreateTemplateRequest { name, image, command, env: parse_env(&env)?, secrets, ports, volume };
            let t: api::Template = c.post("/v1/templates", Some(&body), None).map_err(err)?;
            show(ctx, &t, template_detail);
        }
        TemplateCmd::List => {
            let l: api::TemplateList = c.get("/v1/templates").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .templates
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            if t.builtin { "built in" } else { "yours" }.into(),
                            t.image.clone().unwrap_or_else(|| "(the node's)".into()),
                            if t.ports.is_empty() { "-".into() } else { t.ports.join(" ") },
                        ]
                    })
                    .collect();
                table(&["NAME", "FROM", "IMAGE", "PORTS"], &rows)
            });
        }
        TemplateCmd::Show { name } => {
            let t: api::Template =
                c.get(&format!("/v1/templates/{}", gpucloud_client::encode_query(&name))).map_err(err)?;
            show(ctx, &t, template_detail);
        }
        TemplateCmd::Delete { name } => {
            c.delete(&format!("/v1/templates/{}", gpucloud_client::encode_query(&name))).map_err(err)?;
            if !ctx.json {
                println!("template {name} deleted");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum RegistryAuthCmd {
    /// Credentials for a private registry (nvcr.io, ghcr.io, HOST:PORT; docker.io for Docker
    /// Hub); the password or token is read from standard input and stored encrypted.
    Add {
        registry: String,
        #[arg(long)]
        username: String,
    },
    /// Your registries and usernames (never the passwords).
    List,
    Delete {
        registry: String,
    },
}

/// A value from standard input: one line from a terminal, everything piped otherwise, without
/// the line break that ends it.
fn read_value(prompt: &str) -> Result<String, String> {
    use std::io::{IsTerminal, Read};
    let mut value = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}: ");
        std::io::stdin().read_line(&mut value).map_err(|e| e.to_string())?;
    } else {
        std::io::stdin().read_to_string(&mut value).map_err(|e| e.to_string())?;
    }
    let trimmed = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value);
    Ok(trimmed.to_string())
}

pub fn registry_auth(ctx: &Ctx, cmd: RegistryAuthCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        RegistryAuthCmd::Add { registry, username } => {
            let password = read_value(&format!("password for {username} at {registry}"))?;
            let body = api::PutRegistryAuthRequest { username, password };
            let a: api::RegistryAuth = c
                .put(&format!("/v1/registry-auths/{}", gpucloud_client::encode_query(&registry)), &body)
                .map_err(err)?;
            show(ctx, &a, |a| format!("credentials for {} ({}) stored", a.registry, a.username));
        }
        RegistryAuthCmd::List => {
            let l: api::RegistryAuthList = c.get("/v1/registry-auths").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .registry_auths
                    .iter()
                    .map(|a| vec![a.registry.clone(), a.username.clone(), a.created_at.clone()])
                    .collect();
                table(&["REGISTRY", "USERNAME", "SET"], &rows)
            });
        }
        RegistryAuthCmd::Delete { registry } => {
            c.delete(&format!("/v1/registry-auths/{}", gpucloud_client::encode_query(&registry))).map_err(err)?;
            if !ctx.json {
                println!("credentials for {registry} deleted");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Set a secret from standard input (one line from a terminal, everything piped otherwise);
    /// it is stored encrypted and never shown again.
    Set { name: String },
    /// Your secrets' names (never their values).
    List,
    /// Delete a secret.
    Delete { name: String },
}

pub fn secret(ctx: &Ctx, cmd: SecretCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        SecretCmd::Set { name } => {
            let value = read_value(&format!("value for {name}"))?;
            let body = api::PutSecretRequest { value };
            let s: api::Secret =
                c.put(&format!("/v1/secrets/{}", gpucloud_client::encode_query(&name)), &body).map_err(err)?;
            show(ctx, &s, |s| format!("secret {} set ({})", s.name, s.updated_at));
        }
        SecretCmd::List => {
            let l: api::SecretList = c.get("/v1/secrets").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), s.created_at.clone(), s.updated_at.clone()])
                    .collect();
                table(&["NAME", "CREATED", "UPDATED"], &rows)
            });
        }
        SecretCmd::Delete { name } => {
            c.delete(&format!("/v1/secrets/{}", gpucloud_client::encode_query(&name))).map_err(err)?;
            if !ctx.json {
                println!("secret {name} deleted");
            }
        }
    }
    Ok(())
}

/// "2x A100-40GB", or for a slice "25% of 1 A100-40GB (10240 MiB)" / "MIG 1g.10gb of 1 A100-80GB".
fn gpus_of(i: &api::Instance) -> String {
    match (&i.mig, i.gpu_memory_mib) {
        (Some(p), _) => format!("MIG {p} of 1 {}", i.gpu),
        (None, Some(mem)) => format!("{}% of 1 {} ({mem} MiB)", i.gpu_milli as f64 / 10.0, i.gpu),
        (None, None) => format!("{}x {}", i.count, i.gpu),
    }
}

/// A slice's share and memory, from `--gpu-share 25%` and `--gpu-memory 10GiB`.
fn slice(share: Option<String>, memory: Option<String>) -> Result<(Option<u32>, Option<u64>), String> {
    Ok((share.as_deref().map(parse_percent).transpose()?, memory.as_deref().map(parse_mib).transpose()?))
}

/// The tier and bid from `--spot [--max-price P]` or `--reserved`; on-demand otherwise.
fn sale(spot: bool, reserved: bool, max_price: Option<String>) -> Result<(Option<api::Tier>, Option<Money>), String> {
    let bid = max_price.map(|p| p.parse::<Money>().map_err(|e| format!("--max-price '{p}': {e}"))).transpose()?;
    Ok(match (spot, reserved) {
        (true, _) => (Some(api::Tier::Spot), bid),
        (false, true) => (Some(api::Tier::Reserved), bid),
        (false, false) => (None, bid),
    })
}

/// A flag taking one of a wire enum's texts: `--help` lists them and a typo is refused with
/// them, before anything is sent.
macro_rules! one_of {
    ($t:ty) => {
        clap::builder::TypedValueParser::map(
            clap::builder::PossibleValuesParser::new(<$t>::ALL.iter().map(|v| v.as_str())),
            // The enums' own test checks that every listed text parses back.
            |s| s.parse::<$t>().expect("a listed value parses"),
        )
    };
}
pub(crate) use one_of;

pub fn parse_gpu(gpu: &str) -> Result<GpuModel, String> {
    gpu.parse::<GpuModel>().map_err(|e| format!("--gpu: {e}"))
}

pub fn parse_region(flag: &str, region: &str) -> Result<Region, String> {
    Region::parse(region).map_err(|e| format!("{flag}: {e}"))
}

/// A count the request can carry; whether it is a count the server sells is the server's to say.
pub fn parse_count(count: i64) -> Result<u32, String> {
    u32::try_from(count).map_err(|_| format!("--count {count}: expected a whole number of GPUs from 1 to 16"))
}

/// "25%" or "25" -> whole percent.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let v = s.trim().trim_end_matches('%').trim();
    v.parse::<u32>().map_err(|_| format!("--gpu-share '{s}': expected a whole percentage such as 25%"))
}

/// "10GiB", "10G", "512MiB", "512M" or a bare number of MiB -> MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("--gpu-memory '{s}': expected a size such as 10GiB or 512MiB");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mi" | "mib" | "mb" => 1,
        "g" | "gi" | "gib" | "gb" => 1024,
        "t" | "ti" | "tib" | "tb" => 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod slice_arg_tests {
    #[test]
    fn sizes_and_shares_parse() {
        assert_eq!(super::parse_mib("10GiB"), Ok(10240));
        assert_eq!(super::parse_mib("512MiB"), Ok(512));
        assert_eq!(super::parse_mib("2048"), Ok(2048));
        assert_eq!(super::parse_mib("1g"), Ok(1024));
        assert!(super::parse_mib("ten").unwrap_err().contains("10GiB"));
        assert!(super::parse_mib("10XB").is_err());
        assert_eq!(super::parse_percent("25%"), Ok(25));
        assert_eq!(super::parse_percent("50"), Ok(50));
        assert!(super::parse_percent("a quarter").unwrap_err().contains("--gpu-share"));
    }
}

pub fn instance(ctx: &Ctx, cmd: InstanceCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        InstanceCmd::Create(a) if a.dry_run => {
            let CreateArgs { gpu, count, region, hours, gpu_share, gpu_memory, mig, spot, max_price, reserved, .. } =
                *a;
            if !(hours > 0.0 && hours <= 8784.0) {
                return Err("--hours must be more than 0 and at most a year".into());
            }
            let (tier, max_price) = sale(spot, reserved, max_price)?;
            let (gpu_share, gpu_memory_mib) = slice(gpu_share, gpu_memory)?;
            let body = api::QuoteRequest {
                gpu: parse_gpu(&gpu)?,
                count: parse_count(count)?,
                region: region.as_deref().map(|r| parse_region("--region", r)).transpose()?,
                duration_seconds: Some((hours * 3600.0).round() as i64),
                gpu_share,
                gpu_memory_mib,
                mig,
                tier,
                max_price_per_gpu_hour: max_price,
            };
            crate::bill::quote(ctx, &body)?;
        }
        InstanceCmd::Create(a) => {
            let CreateArgs {
                gpu,
                count,
                region,
                command,
                name,
                idempotency_key,
                wait,
                gpu_share,
                gpu_memory,
                mig,
                spot,
                max_price,
                reserved,
                image,
                env,
                secrets,
                ports,
                template,
                volume,
                project,
                on_quota,
                priority,
                ..
            } = *a;
            let (tier, max_price) = sale(spot, reserved, max_price)?;
            let (gpu_share, gpu_memory_mib) = slice(gpu_share, gpu_memory)?;
            let body = api::CreateInstanceRequest {
                gpu: parse_gpu(&gpu)?,
                count: parse_count(count)?,
                gpu_share,
                gpu_memory_mib,
                mig,
                region: region.as_deref().map(|r| parse_region("--region", r)).transpose()?,
                command: command.unwrap_or_default(),
                template,
                name,
                tier,
                max_price_per_gpu_hour: max_price,
                image,
                env: parse_env(&env)?,
                secrets,
                ports,
                volume,
                project,
                on_quota,
                priority,
            };
            let mut inst = c.create_instance(&body, idempotency_key.as_deref()).map_err(err)?;
            if let Some(secs) = wait {
                let deadline = Instant::now() + Duration::from_secs(secs);
                while inst.state != api::InstanceState::Running && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                    inst = c.instance(&inst.id).map_err(err)?;
                }
            }
            show(ctx, &inst, instance_detail);
        }
        InstanceCmd::List => {
            let list: api::InstanceList = c.get_all("/v1/instances", "instances").map_err(err)?;
            show(ctx, &list, |l| instance_rows(&l.instances));
        }
        InstanceCmd::Show { id } => {
            let inst: api::Instance = c.get(&format!("/v1/instances/{id}")).map_err(err)?;
            if ctx.json {
                show(ctx, &inst, instance_detail);
            } else {
                let history: api::InstanceHistory =
                    c.get_all(&format!("/v1/instances/{id}/events"), "events").map_err(err)?;
                let rows: Vec<Vec<String>> = history
                    .events
                    .iter()
                    .map(|e| vec![e.at.clone(), e.from.clone().unwrap_or_else(|| "-".into()), e.to.clone()])
                    .collect();
                println!("{}\n\nhistory:\n{}", instance_detail(&inst), table(&["TIME", "FROM", "TO"], &rows));
            }
        }
        InstanceCmd::Metrics { id, name } => {
            let path = match &name {
                Some(n) => format!("/v1/instances/{id}/metrics?name={n}"),
                None => format!("/v1/instances/{id}/metrics"),
            };
            let m: api::InstanceMetrics = c.get(&path).map_err(err)?;
            show(ctx, &m, |m| {
                let rows: Vec<Vec<String>> = m
                    .points
                    .iter()
                    .map(|p| {
                        vec![
                            p.at.clone(),
                            p.step.map_or("-".into(), |s| s.to_string()),
                            p.name.clone(),
                            p.value.to_string(),
                        ]
                    })
                    .collect();
                table(&["TIME", "STEP", "NAME", "VALUE"], &rows)
            });
        }
        InstanceCmd::Logs { id, follow } => {
            let mut after = 0;
            loop {
                let logs: api::InstanceLogs = c.get(&format!("/v1/instances/{id}/logs?after={after}")).map_err(err)?;
                for chunk in &logs.chunks {
                    print!("{}", chunk.data);
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                after = logs.next_after;
                if !follow {
                    break;
                }
                if logs.chunks.is_empty() {
                    let inst: api::Instance = c.get(&format!("/v1/instances/{id}")).map_err(err)?;
                    if matches!(
                        inst.state,
                        api::InstanceState::Stopped | api::InstanceState::Terminated | api::InstanceState::Failed
                    ) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        InstanceCmd::Ssh { id, identity, command } => crate::ssh::instance_ssh(ctx, &id, identity, command)?,
        InstanceCmd::Stop { id } => action(ctx, &c, &id, "stop")?,
        InstanceCmd::Start { id } => action(ctx, &c, &id, "start")?,
        InstanceCmd::Terminate { id } => action(ctx, &c, &id, "terminate")?,
    }
    Ok(())
}

fn action(ctx: &Ctx, c: &Client, id: &str, verb: &str) -> Res {
    let inst: api::Instance =
        c.post::<(), _>(&format!("/v1/instances/{id}/{verb}"), None, None).map_err(|e| e.to_string())?;
    show(ctx, &inst, instance_detail);
    Ok(())
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// List nodes with their GPU allocation.
    List {
        /// Only nodes with this label: KEY=VALUE, or KEY for any value.
        #[arg(long)]
        label: Option<String>,
    },
    /// Show a node and what holds each of its GPUs.
    Show { id: String },
    /// Register a node (its agent must heartbeat before it takes work; `dev` runs fake agents).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        /// MODEL:COUNT, repeatable, e.g. --gpu A100-40GB:8
        #[arg(long = "gpu", required = true)]
        gpus: Vec<String>,
    },
    /// Place nothing new on the node.
    Cordon { id: String },
    /// Accept new instances again.
    Uncordon { id: String },
    /// Place nothing new and move each instance elsewhere once another node has room for it.
    Drain {
        id: String,
        /// Stop every instance now; each waits pending for room elsewhere.
        #[arg(long, conflicts_with = "deadline")]
        force: bool,
        /// Stop what is still on the node after this long (e.g. 90s, 30m, 2h, 1d), room
        /// elsewhere or not.
        #[arg(long, value_parser = parse_duration_secs)]
        deadline: Option<u64>,
    },
    /// A node's GPUs: put a failed one back in service.
    #[command(subcommand)]
    Gpu(NodeGpuCmd),
}

#[derive(Subcommand)]
pub enum NodeGpuCmd {
    /// Put a GPU that failed back in service, once the node's agent reads it without the fault
    /// (reset it on the host first: `nvidia-smi -r -i INDEX`).
    Return { node: String, index: u32 },
}

fn node_rows(list: &[api::Node]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let models: Vec<String> = {
                let mut m: Vec<String> = n.gpus.iter().map(|g| g.model.clone()).collect();
                m.dedup();
                m
            };
            vec![
                n.id.clone(),
                n.name.clone(),
                n.region.clone(),
                models.join(","),
                format!("{}/{}", n.gpus_allocated, n.gpus_total),
                n.state.to_string(),
                n.health.to_string(),
                n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table(&["ID", "NAME", "REGION", "MODEL", "ALLOCATED", "STATE", "HEALTH", "LABELS"], &rows)
}

/// `90`, `90s`, `30m`, `2h` or `1d`, in seconds.
fn parse_duration_secs(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{v}' is a duration such as 90s, 30m, 2h or 1d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{v}': the unit is s, m, h or d")),
    };
    n.checked_mul(per).filter(|s| *s > 0).ok_or_else(|| format!("'{v}' is not a positive duration"))
}

fn node_detail(n: &api::Node) -> String {
    let mut out = format!(
        "id:        {}\nname:      {}\nregion:    {}\nstate:     {}\nhealth:    {}\nheartbeat: {}\nallocated: {}/{}\nlabels:    {}\n\n",
        n.id,
        n.name,
        n.region,
        match &n.drain_deadline {
            Some(d) => format!("{} (deadline {d})", n.state),
            None => n.state.to_string(),
        },
        n.health,
        or_dash(n.last_heartbeat.as_ref()),
        n.gpus_allocated,
        n.gpus_total,
        if n.labels.is_empty() {
            "-".to_string()
        } else {
            n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        }
    );
    let rows: Vec<Vec<String>> = n
        .gpus
        .iter()
        .map(|g| {
            let holder = if g.slices.is_empty() {
                or_dash(g.instance.as_ref())
            } else {
                // A sliced GPU: each slice's instance and share.
                let parts: Vec<String> = g
                    .slices
                    .iter()
                    .map(|s| format!("{} {}%{}", s.instance, s.milli as f64 / 10.0, if s.mig { " MIG" } else { "" }))
                    .collect();
                parts.join(", ")
            };
            let health = if g.healthy { "ok".to_string() } else { "FAILED".to_string() };
            vec![g.index.to_string(), g.model.clone(), g.uuid.clone(), health, holder]
        })
        .collect();
    out.push_str(&table(&["GPU", "MODEL", "UUID", "HEALTH", "INSTANCE"], &rows));
    out
}

fn parse_gpu_groups(specs: &[String]) -> Result<Vec<api::GpuGroup>, String> {
    specs
        .iter()
        .map(|s| {
            let (model, count) = s.rsplit_once(':').unwrap_or((s.as_str(), "1"));
            let count: u32 = count.parse().map_err(|_| format!("--gpu {s}: expected MODEL:COUNT, e.g. A100-40GB:8"))?;
            Ok(api::GpuGroup { model: parse_gpu(model)?, count })
        })
        .collect()
}

/// A money amount such as `100.00`.
pub fn parse_money(flag: &str, text: &str) -> Result<Money, String> {
    text.parse::<Money>().map_err(|e| format!("{flag} '{text}': {e}"))
}

pub fn node(ctx: &Ctx, cmd: NodeCmd) -> Res {
    let c = ctx.client(As::Operator)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    let path_action = |id: &str, verb: &str| -> Res {
        let n: api::Node = c.post::<(), _>(&format!("/v1/nodes/{id}/{verb}"), None, None).map_err(err)?;
        show(ctx, &n, node_detail);
        Ok(())
    };
    match cmd {
        NodeCmd::List { label } => {
            let path = match label {
                Some(l) => format!("/v1/nodes?label={}", gpucloud_client::encode_query(&l)),
                None => "/v1/nodes".to_string(),
            };
            let list: api::NodeList = c.get(&path).map_err(err)?;
            show(ctx, &list, |l| node_rows(&l.nodes));
        }
        NodeCmd::Show { id } => {
            let n: api::Node = c.get(&format!("/v1/nodes/{id}")).map_err(err)?;
            show(ctx, &n, node_detail);
        }
        NodeCmd::Add { name, region, gpus } => {
            let region = parse_region("--region", &region)?;
            let body = api::CreateNodeRequest { name, region, gpus: parse_gpu_groups(&gpus)? };
            let n: api::Node = c.post("/v1/nodes", Some(&body), None).map_err(err)?;
            show(ctx, &n, node_detail);
        }
        NodeCmd::Cordon { id } => path_action(&id, "cordon")?,
        NodeCmd::Uncordon { id } => path_action(&id, "uncordon")?,
        NodeCmd::Drain { id, force, deadline } => {
            let action = match (force, deadline) {
                (true, _) => "drain?force=true".to_string(),
                (false, Some(s)) => format!("drain?deadline_seconds={s}"),
                (false, None) => "drain".to_string(),
            };
            path_action(&id, &action)?;
            if !force && !ctx.json {
                let after = match deadline {
                    Some(_) => " What is still there at the deadline is stopped.",
                    None => " --force stops them all now.",
                };
                println!(
                    "\nEach instance moves once another node has room for it; one that waits says why in `instance show`.{after}"
                );
            }
        }
        NodeCmd::Gpu(NodeGpuCmd::Return { node, index }) => path_action(&node, &format!("gpus/{index}/return"))?,
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TenantCmd {
    List,
    /// Credit a tenant's prepaid balance.
    Credit {
        tenant_id: String,
        /// A decimal such as 100.00.
        #[arg(long, allow_negative_numbers = true)]
        amount: String,
        #[arg(long, default_value = "grant", value_parser = ["grant", "topup", "adjustment"])]
        kind: String,
        #[arg(long)]
        memo: Option<String>,
        /// Makes a retried credit safe: the same key never credits twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Create a tenant; prints its first API key, once, and how it pays.
    Create {
        name: String,
        /// Pays in advance: its instances stop before its balance goes negative, and a create
        /// its balance cannot cover is refused.
        #[arg(long, conflicts_with = "postpaid")]
        prepaid: bool,
        /// Invoiced monthly (the default).
        #[arg(long)]
        postpaid: bool,
        /// Postpaid: how much it may owe before creates are refused and its instances stop.
        #[arg(long, value_name = "AMOUNT", conflicts_with = "prepaid")]
        credit_limit: Option<String>,
    },
    /// A tenant and how it pays.
    Show {
        tenant_id: String,
    },
    /// Switch a tenant between prepaid and postpaid, or change its credit limit.
    Billing {
        tenant_id: String,
        #[arg(long, conflicts_with = "postpaid", required_unless_present = "postpaid")]
        prepaid: bool,
        #[arg(long)]
        postpaid: bool,
        /// Postpaid: how much it may owe; leave out for no limit.
        #[arg(long, value_name = "AMOUNT", conflicts_with = "prepaid")]
        credit_limit: Option<String>,
    },
    /// Create another API key for a tenant; printed once.
    Key {
        tenant_id: String,
    },
}

fn key_text(k: &api::ApiKeyCreated) -> String {
    let billing = k.tenant.billing.as_ref().map(|b| format!("\nbilling: {}", billing_text(b))).unwrap_or_default();
    format!("tenant:  {} ({}){billing}\napi key: {}\n(shown once: store it now)", k.tenant.name, k.tenant.id, k.api_key)
}

fn billing_text(b: &api::BillingMode) -> String {
    match (&*b.mode, b.credit_limit) {
        ("postpaid", Some(l)) => format!("postpaid, credit limit {l}"),
        ("postpaid", None) => "postpaid, no credit limit".to_string(),
        (mode, _) => mode.to_string(),
    }
}

pub fn tenant(ctx: &Ctx, cmd: TenantCmd) -> Res {
    let c = ctx.client(As::Operator)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        TenantCmd::List => {
            let l: api::TenantList = c.get("/v1/tenants").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .tenants
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.to_string(),
                            t.billing.as_ref().map(billing_text).unwrap_or_default(),
                            t.created_at.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "ROLE", "BILLING", "CREATED"], &rows)
            });
        }
        TenantCmd::Credit { tenant_id, amount, kind, memo, idempotency_key } => {
            let body = api::CreditRequest { amount: parse_money("--amount", &amount)?, kind: Some(kind), memo };
            let l: api::LedgerLine = c
                .post(&format!("/v1/tenants/{tenant_id}/credits"), Some(&body), idempotency_key.as_deref())
                .map_err(err)?;
            show(ctx, &l, |l| format!("{} {} to {} ({})", l.kind, l.amount, tenant_id, l.memo));
        }
        TenantCmd::Create { name, prepaid, postpaid: _, credit_limit } => {
            let mode = if prepaid { "prepaid" } else { "postpaid" };
            let body = api::CreateTenantRequest {
                name,
                billing_mode: Some(mode.to_string()),
                credit_limit: credit_limit.map(|l| parse_money("--credit-limit", &l)).transpose()?,
            };
            let k: api::ApiKeyCreated = c.post("/v1/tenants", Some(&body), None).map_err(err)?;
            show(ctx, &k, key_text);
        }
        TenantCmd::Show { tenant_id } => {
            let t: api::Tenant = c.get(&format!("/v1/tenants/{tenant_id}")).map_err(err)?;
            show(ctx, &t, |t| {
                let billing = t.billing.as_ref().map(billing_text).unwrap_or_default();
                format!(
                    "id:      {}\nname:    {}\nrole:    {}\ncreated: {}\nbilling: {billing}",
                    t.id, t.name, t.role, t.created_at
                )
            });
        }
        TenantCmd::Billing { tenant_id, prepaid, postpaid: _, credit_limit } => {
            let mode = if prepaid { "prepaid" } else { "postpaid" };
            let body = api::TenantBillingRequest {
                prepaid: None,
                billing_mode: Some(mode.to_string()),
                credit_limit: credit_limit.map(|l| parse_money("--credit-limit", &l)).transpose()?,
            };
            let b: api::Budget = c.post(&format!("/v1/tenants/{tenant_id}/billing"), Some(&body), None).map_err(err)?;
            show(ctx, &b, |b| {
                let mode = api::BillingMode { mode: b.billing_mode.clone(), credit_limit: b.credit_limit };
                format!("{tenant_id}: {}", billing_text(&mode))
            });
        }
        TenantCmd::Key { tenant_id } => {
            let k: api::ApiKeyCreated =
                c.post::<(), _>(&format!("/v1/tenants/{tenant_id}/keys"), None, None).map_err(err)?;
            show(ctx, &k, key_text);
        }
    }
    Ok(())
}

pub fn capacity(ctx: &Ctx) -> Res {
    let c = ctx.client(As::Tenant)?;
    let cap: api::Capacity = c.get("/v1/capacity").map_err(|e| e.to_string())?;
    show(ctx, &cap, |cap| {
        let rows: Vec<Vec<String>> = cap
            .regions
            .iter()
            .flat_map(|r| {
                r.models.iter().map(|m| {
                    vec![
                        r.region.clone(),
                        m.model.clone(),
                        m.free.to_string(),
                        m.total.to_string(),
                        m.nodes.to_string(),
                    ]
                })
            })
            .collect();
        table(&["REGION", "MODEL", "FREE", "TOTAL", "NODES"], &rows)
    });
    Ok(())
}

pub fn models(ctx: &Ctx) -> Res {
    let c = ctx.client(As::Tenant)?;
    let list: api::GpuModelList = c.get("/v1/gpu-models").map_err(|e| e.to_string())?;
    show(ctx, &list, |l| {
        let rows: Vec<Vec<String>> = l
            .models
            .iter()
            .map(|m| {
                let mig: Vec<&str> = m.mig_profiles.iter().map(|p| p.name.as_str()).collect();
                vec![
                    m.name.clone(),
                    format!("{} GiB", m.memory_mib / 1024),
                    if m.sliceable { "yes" } else { "no" }.into(),
                    if mig.is_empty() { "-".into() } else { mig.join(" ") },
                ]
            })
            .collect();
        table(&["MODEL", "MEMORY", "SLICES", "MIG PROFILES"], &rows)
    });
    Ok(())
}

pub fn whoami(ctx: &Ctx) -> Res {
    let c = ctx.client(As::Tenant)?;
    let w: api::WhoAmI = c.get("/v1/whoami").map_err(|e| e.to_string())?;
    show(ctx, &w, |w| {
        format!("tenant: {} ({}, {})\nkey:    {}...", w.tenant.name, w.tenant.id, w.tenant.role, w.key_prefix)
    });
    Ok(())
}
