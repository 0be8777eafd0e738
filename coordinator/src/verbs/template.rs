//! `pvefleet template add | list | show | rm`.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::cli::Cli;
use crate::spec::SpecFile;
use crate::{Failure, Outcome};

pub async fn add(cli: &Cli, file: &std::path::Path) -> Outcome {
    let template = SpecFile::read(file, None)?;
    template.validate_as_template()?;
    if let Some(i) = template.deploy.files.iter().position(|f| f.secret) {
        return Err(Failure::Usage(format!(
            "invalid deploy.files[{i}].secret: a template is stored, and a secret file never is; give it in the \
             spec file of each submit"
        )));
    }
    if template.node.is_some() || template.template.is_some() {
        return Err(Failure::Usage(
            "a template holds container defaults, deploy and options, not `node` or `template`".into(),
        ));
    }
    let name = template.name.clone().expect("validated");
    let store = crate::open_store(cli).await?;
    store.put_template(&name, &serde_json::to_value(&template).map_err(anyhow::Error::from)?).await?;
    println!("template {name} saved");
    Ok(())
}

pub async fn list(cli: &Cli, json: bool) -> Outcome {
    let store = crate::open_store(cli).await?;
    let rows = store.templates().await?;
    let templates: Vec<SpecFile> = rows.iter().filter_map(|r| serde_json::from_str(&r.spec).ok()).collect();
    if json {
        println!("{}", serde_json::to_string(&templates).map_err(anyhow::Error::from)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(["NAME", "DESCRIPTION", "PACKAGES", "FILES", "SCRIPTS"]);
    for t in &templates {
        table.add_row([
            t.name.clone().unwrap_or_default(),
            t.description.clone().unwrap_or_default(),
            t.deploy.packages.join(" "),
            t.deploy.files.len().to_string(),
            t.deploy.scripts.iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(", "),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub async fn show(cli: &Cli, name: &str) -> Outcome {
    let store = crate::open_store(cli).await?;
    let row = store.template(name).await?.ok_or_else(|| Failure::Usage(format!("no template named `{name}`")))?;
    let template: SpecFile = serde_json::from_str(&row.spec).map_err(anyhow::Error::from)?;
    print!("{}", toml::to_string_pretty(&template).map_err(anyhow::Error::from)?);
    Ok(())
}

pub async fn rm(cli: &Cli, name: &str) -> Outcome {
    let store = crate::open_store(cli).await?;
    if !store.remove_template(name).await? {
        return Err(Failure::Usage(format!("no template named `{name}`")));
    }
    println!("template {name} removed");
    Ok(())
}
