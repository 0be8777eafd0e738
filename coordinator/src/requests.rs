//! A create request as the operator gives it: a template, a spec file and flags, overlaid in
//! that order into the parts of a job; the job (or the N jobs of `--count`, each with its
//! `{n}` expanded) built and validated from them; and the root password given, never on the
//! command line.

use std::io::IsTerminal as _;

use pvefleet_schemas::{DeploySpec, Job, JobId, NodeName, RollbackPolicy, Secret, Timestamp, V1};

use crate::Failure;
use crate::cli::SubmitArgs;
use crate::spec::{BadInput, SpecFile, container_from, extend_deploy, overlay};

/// At most this many jobs from one command.
const MAX_COUNT: u32 = 1000;

/// What a submit's template, spec file and flags say, before the container is read.
#[derive(Debug)]
pub struct Parts {
    /// The container table, overlaid in order; `--count` expands `{n}` in it per job.
    pub container: toml::Table,
    pub deploy: DeploySpec,
    pub options: pvefleet_schemas::JobOptions,
    pub template: Option<String>,
    /// `--node` (or the spec file's node): a name or `auto`.
    pub node: String,
}

impl Parts {
    /// The job for `container`, on `node` (`auto` stands until placement chooses).
    pub fn job(&self, container: pvefleet_schemas::ContainerSpec, node: &str) -> Result<Job, Failure> {
        let job = Job {
            v: V1,
            kind: pvefleet_schemas::JobMessageKind::Create,
            job_id: JobId::new(),
            node: NodeName::new(node)?,
            submitted_at: Timestamp::now(),
            container,
            deploy: self.deploy.clone(),
            template: self.template.clone(),
            options: self.options,
            auth: None,
        };
        job.validate()?;
        Ok(job)
    }
}

/// Reads the template, the spec file and the flags into the parts of a job.
pub async fn gather(args: &SubmitArgs, store: &crate::store::Store) -> Result<Parts, Failure> {
    let mut container = toml::Table::new();
    let mut deploy = DeploySpec::default();
    let mut options = None;
    let mut node = None;
    let mut template_name = args.template.clone();
    let spec_file = args.spec.as_deref().map(|s| SpecFile::read(s, args.files_dir.as_deref())).transpose()?;
    if template_name.is_none() {
        template_name = spec_file.as_ref().and_then(|s| s.template.clone());
    }
    if let Some(name) = &template_name {
        let row = store.template(name).await?.ok_or_else(|| {
            BadInput::field("--template", format!("no template named `{name}` (see `pvefleet template list`)"))
        })?;
        let template: SpecFile =
            serde_json::from_str(&row.spec).map_err(|e| anyhow::anyhow!("stored template {name}: {e}"))?;
        overlay(&mut container, template.container);
        extend_deploy(&mut deploy, template.deploy);
        options = template.options;
    }
    if let Some(spec) = spec_file {
        overlay(&mut container, spec.container);
        extend_deploy(&mut deploy, spec.deploy);
        options = spec.options.or(options);
        node = spec.node;
    }
    overlay(&mut container, flags(args));
    if args.rootfs.is_some() && (args.disk.is_some() || args.storage.is_some()) {
        let other = if args.disk.is_some() { "--disk" } else { "--storage" };
        return Err(BadInput::field("--rootfs", format!("give --rootfs or {other}, not both")).into());
    }
    overlay(
        &mut container,
        crate::spec::pve_flags(&args.nets, &args.mps, args.startup.as_deref(), args.rootfs.as_deref())?,
    );
    overlay(&mut container, crate::spec::source_flags(args)?);
    if args.rootfs.is_none() {
        crate::spec::disk_flags_onto_rootfs(&mut container, args.disk, args.storage.as_deref());
    }
    deploy.packages.extend(args.packages.iter().cloned());
    let mut options = options.unwrap_or_default();
    if let Some(r) = &args.rollback {
        options.rollback = match r.as_str() {
            "destroy" => RollbackPolicy::Destroy,
            "keep" => RollbackPolicy::Keep,
            other => {
                return Err(BadInput::field("--rollback", format!("`{other}` is neither `destroy` nor `keep`")).into());
            }
        };
    }
    let node =
        args.node.clone().or(node).ok_or_else(|| BadInput::field("--node", "give --node NAME or --node auto"))?;
    Ok(Parts { container, deploy, options, template: template_name, node })
}

/// The container fields given as flags, as a table to overlay.
fn flags(a: &SubmitArgs) -> toml::Table {
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            t.insert(k.into(), v);
        }
    };
    put("hostname", a.hostname.clone().map(Into::into));
    put("vmid", a.vmid.map(|v| i64::from(v).into()));
    put("memory", a.memory.map(|v| i64::from(v).into()));
    put("swap", a.swap.map(|v| i64::from(v).into()));
    put("cores", a.cores.map(|v| i64::from(v).into()));
    put("disk", a.disk.map(|v| i64::from(v).into()));
    put("storage", a.storage.clone().map(Into::into));
    put("bridge", a.bridge.clone().map(Into::into));
    put("ip", a.ip.clone().map(Into::into));
    put("gw", a.gw.clone().map(Into::into));
    put("nameserver", a.nameserver.clone().map(Into::into));
    put("ostemplate", a.ostemplate.clone().map(Into::into));
    put("unprivileged", a.privileged.then_some(false.into()));
    put("nesting", a.nesting.then_some(true.into()));
    put("tags", (!a.tags.is_empty()).then(|| a.tags.iter().cloned().map(toml::Value::from).collect::<Vec<_>>().into()));
    put("description", a.description.clone().map(Into::into));
    put("pool", a.pool.clone().map(Into::into));
    put("protection", a.protection.then_some(true.into()));
    put("onboot", a.onboot.then_some(true.into()));
    put("timezone", a.timezone.clone().map(Into::into));
    put("cpulimit", a.cpulimit.map(Into::into));
    put("cpuunits", a.cpuunits.map(|v| i64::from(v).into()));
    put("searchdomain", a.searchdomain.clone().map(Into::into));
    put("entrypoint", a.entrypoint.clone().map(Into::into));
    put("ssh_nic", a.ssh_nic.clone().map(Into::into));
    put("arch", a.arch.clone().map(Into::into));
    put("ostype", a.ostype.clone().map(Into::into));
    put("cmode", a.cmode.clone().map(Into::into));
    put("tty", a.tty.map(|v| i64::from(v).into()));
    put("console", a.console.map(Into::into));
    put(
        "ssh_public_keys",
        (!a.ssh_keys.is_empty()).then(|| a.ssh_keys.iter().cloned().map(toml::Value::from).collect::<Vec<_>>().into()),
    );
    t
}

/// The root password the operator gave, checked against PVE's minimum length.
pub fn password(a: &crate::cli::PasswordArgs) -> Result<Option<Secret>, BadInput> {
    let given = given_password(a)?;
    if let Some((flag, pw)) = &given
        && pw.expose().chars().count() < 5
    {
        // PVE's own minimum for `password` on create.
        return Err(BadInput::field(flag, "the root password must be at least 5 characters"));
    }
    Ok(given.map(|(_, pw)| pw))
}

fn given_password(a: &crate::cli::PasswordArgs) -> Result<Option<(&'static str, Secret)>, BadInput> {
    let given = [a.password_file.is_some(), a.password_env.is_some(), a.ask_password].iter().filter(|g| **g).count();
    if given > 1 {
        return Err(BadInput::field(
            "--password-file",
            "give one of --password-file, --password-env and --ask-password",
        ));
    }
    if let Some(path) = &a.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput::field("--password-file", format!("cannot read {}: {e}", path.display())))?;
        let first = text.lines().next().unwrap_or_default().to_owned();
        return Ok(Some(("--password-file", Secret::new(first))));
    }
    if let Some(var) = &a.password_env {
        let value = std::env::var(var)
            .map_err(|_| BadInput::field("--password-env", format!("the variable {var} is not set")))?;
        return Ok(Some(("--password-env", Secret::new(value))));
    }
    if a.ask_password {
        if !std::io::stdin().is_terminal() {
            return Err(BadInput::field(
                "--ask-password",
                "standard input is not a terminal; use --password-file or --password-env",
            ));
        }
        let pw = rpassword::prompt_password("root password for the container: ")
            .map_err(|e| BadInput::field("--ask-password", e))?;
        return Ok(Some(("--ask-password", Secret::new(pw))));
    }
    Ok(None)
}

/// The N jobs of `parts`, each with its `{n}` expanded, all validated: a bad one fails them
/// all, naming `job K of N`.
pub fn build_jobs(parts: &Parts, count: u32) -> Result<Vec<pvefleet_schemas::Job>, Failure> {
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(BadInput::field("--count", format!("{count} is outside 1..={MAX_COUNT}")).into());
    }
    let hostname = parts.container.get("hostname").and_then(toml::Value::as_str).unwrap_or_default();
    if count > 1 && !hostname.contains("{n") {
        return Err(BadInput::field(
            "--hostname",
            format!("`{hostname}` would name all {count} containers alike; put {{n}} in it (`web-{{n:02}}`)"),
        )
        .into());
    }
    if count > 1 && parts.container.contains_key("vmid") {
        return Err(BadInput::field("--vmid", "a fixed vmid fits one container, not --count of them").into());
    }
    let mut jobs = Vec::new();
    for n in 1..=count {
        let mut table = parts.container.clone();
        expand_table(&mut table, n)
            .map_err(|(field, e)| BadInput::field(&format!("job {n} of {count}: {field}"), e))?;
        let spec = container_from(table).map_err(|e| BadInput(format!("job {n} of {count}: {}", e.0)))?;
        let job = parts.job(spec, &parts.node).map_err(|e| match e {
            Failure::Usage(m) => Failure::Usage(format!("job {n} of {count}: {m}")),
            other => other,
        })?;
        jobs.push(job);
    }
    let statics: Vec<String> = jobs
        .iter()
        .filter_map(|j| {
            j.container.effective_nics().first().and_then(|n| match n.ip {
                Some(pvefleet_schemas::lxc::Ipv4Setting::Static { addr, .. }) => Some(addr.to_string()),
                _ => None,
            })
        })
        .collect();
    if let Some(dup) = statics.iter().enumerate().find(|(i, a)| statics[..*i].contains(a)).map(|(_, a)| a) {
        return Err(
            BadInput::field("--ip", format!("{dup} is given to two of the {count} jobs; put {{n+K}} in it")).into()
        );
    }
    Ok(jobs)
}

/// `{n}`, `{n:03}`, `{n+20}` in the container table's hostname and IP addresses (the
/// first-version `ip` and each NIC's `ip` and `ip6`), as job `n` has them.
fn expand_table(table: &mut toml::Table, n: u32) -> Result<(), (String, String)> {
    for key in ["hostname", "ip"] {
        if let Some(toml::Value::String(text)) = table.get_mut(key) {
            *text = expand(text, n).map_err(|e| (key.to_owned(), e))?;
        }
    }
    if let Some(toml::Value::Array(nics)) = table.get_mut("nics") {
        for (i, nic) in nics.iter_mut().enumerate() {
            for key in ["ip", "ip6"] {
                if let Some(toml::Value::String(text)) = nic.get_mut(key) {
                    *text = expand(text, n).map_err(|e| (format!("nics[{i}].{key}"), e))?;
                }
            }
        }
    }
    Ok(())
}

/// Replaces each `{n}`, `{n+K}`, `{n-K}`, optionally with a zero-padded width (`{n:02}`,
/// `{n+20:03}`), by job `n`'s number.
fn expand(text: &str, n: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{n") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`{text}`: a `{{n` without its `}}`"))?;
        let inner = &after[..end];
        let (offset, width) = inner.split_once(':').unwrap_or((inner, ""));
        let value = match offset.chars().next() {
            None => i64::from(n),
            Some('+') | Some('-') => {
                let k: i64 =
                    offset.parse().map_err(|_| format!("`{{n{inner}}}` in `{text}`: `{offset}` is not +K or -K"))?;
                i64::from(n) + k
            }
            Some(_) => return Err(format!("`{{n{inner}}}` in `{text}`: write {{n}}, {{n+K}} or {{n:0W}}")),
        };
        let width: usize = if width.is_empty() {
            0
        } else {
            width
                .strip_prefix('0')
                .unwrap_or(width)
                .parse()
                .map_err(|_| format!("`{{n{inner}}}` in `{text}`: `{width}` is not a width like 02"))?
        };
        out.push_str(&format!("{value:0width$}"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_widths_and_offsets_expand() {
        assert_eq!(expand("web-{n}", 3).unwrap(), "web-3");
        assert_eq!(expand("web-{n:02}", 3).unwrap(), "web-03");
        assert_eq!(expand("10.0.0.{n+20}/24", 5).unwrap(), "10.0.0.25/24");
        assert_eq!(expand("h{n-1:03}-{n}", 2).unwrap(), "h001-2");
        assert_eq!(expand("plain", 9).unwrap(), "plain");
        assert!(expand("web-{n", 1).is_err());
        assert!(expand("web-{nx}", 1).is_err());
        assert!(expand("web-{n:zz}", 1).is_err());
    }
}
