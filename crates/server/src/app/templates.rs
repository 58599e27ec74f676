//! Instance templates: a tenant's own (saved by name) and a few built in, which work in
//! `gpucloud dev` with no registry (`shell`, `http`) or need the container runtime (`jupyter`).

use super::{App, AppError, Principal};
use gpucloud_api::{CreateTemplateRequest, Template};
use gpucloud_model::workload::{check_env_name, check_env_value, check_image, parse_ports};
use gpucloud_store::TemplateRow;

/// A built-in template: (name, what for, image, command, ports).
type Builtin = (&'static str, &'static str, Option<&'static str>, &'static str, &'static [&'static str]);

const BUILTIN: &[Builtin] = &[
    ("shell", "a shell that waits: open it with the node's image and run what you like", None, "sleep infinity", &[]),
    (
        "http",
        "a static web server on port 8000 through the proxy (python3 on the node or in the image)",
        None,
        "d=$(mktemp -d) && mkdir -p \"$d${GPUCLOUD_PROXY_PATH}8000\" && cd \"$d\" && exec python3 -m http.server 8000",
        &["8000/http"],
    ),
    (
        "jupyter",
        "JupyterLab on port 8888 through the proxy (needs the container runtime and its registry)",
        Some("quay.io/jupyter/base-notebook:latest"),
        "exec jupyter lab --ip 0.0.0.0 --port 8888 --no-browser --ServerApp.base_url=${GPUCLOUD_PROXY_PATH}8888/ \
         --IdentityProvider.token=''",
        &["8888/http"],
    ),
];

pub(crate) fn builtin(name: &str) -> Option<Template> {
    BUILTIN.iter().find(|b| b.0 == name).map(|(name, what, image, command, ports)| Template {
        name: name.to_string(),
        builtin: true,
        image: image.map(str::to_string),
        command: Some(command.to_string()),
        env: Default::default(),
        secrets: Vec::new(),
        ports: ports.iter().map(|p| p.to_string()).collect(),
        volume: None,
        description: Some(what.to_string()),
    })
}

fn from_row(row: TemplateRow) -> Result<Template, AppError> {
    let spec: CreateTemplateRequest = serde_json::from_str(&row.spec)
        .map_err(|e| AppError::Conflict(format!("template {} is unreadable: {e}", row.name)))?;
    Ok(Template {
        name: row.name,
        builtin: false,
        image: spec.image,
        command: spec.command,
        env: spec.env,
        secrets: spec.secrets,
        ports: spec.ports,
        volume: spec.volume,
        description: None,
    })
}

impl App {
    pub async fn create_template(&self, by: &Principal, req: CreateTemplateRequest) -> Result<Template, AppError> {
        super::check_slug("template", &req.name)?;
        if builtin(&req.name).is_some() {
            return Err(AppError::Conflict(format!("template {} is built in: choose another name", req.name)));
        }
        if let Some(image) = &req.image {
            check_image(image).map_err(|e| AppError::invalid("image", e))?;
        }
        if let Some(c) = &req.command
            && (c.trim().is_empty() || c.len() > 16 * 1024 || c.contains('\0'))
        {
            return Err(AppError::invalid("command", "a command is 1 to 16384 bytes with no NUL"));
        }
        for (k, v) in &req.env {
            check_env_name(k).map_err(|e| AppError::invalid("env", e))?;
            check_env_value(k, v).map_err(|e| AppError::invalid("env", e))?;
        }
        for s in &req.secrets {
            check_env_name(s).map_err(|e| AppError::invalid("secrets", e))?;
        }
        parse_ports(&req.ports).map_err(|e| AppError::invalid("ports", e))?;
        if let Some(v) = &req.volume {
            v.parse::<gpucloud_model::VolumeMount>().map_err(|e| AppError::invalid("volume", e))?;
        }
        let row = TemplateRow {
            tenant_id: by.tenant.id.clone(),
            name: req.name.clone(),
            spec: serde_json::to_string(&req).map_err(|e| AppError::invalid("template", e.to_string()))?,
            created_at: self.now(),
        };
        self.store.insert_template(&row).await.map_err(AppError::store_conflict)?;
        from_row(row)
    }

    /// The built-in templates, then the caller's own.
    pub async fn list_templates(&self, by: &Principal) -> Result<Vec<Template>, AppError> {
        let mut out: Vec<Template> = BUILTIN.iter().filter_map(|b| builtin(b.0)).collect();
        for row in self.store.list_templates(&by.tenant.id).await? {
            out.push(from_row(row)?);
        }
        Ok(out)
    }

    pub async fn get_template(&self, by: &Principal, name: &str) -> Result<Template, AppError> {
        if let Some(t) = builtin(name) {
            return Ok(t);
        }
        match self.store.get_template(&by.tenant.id, name).await? {
            Some(row) => from_row(row),
            None => Err(AppError::NotFound { kind: "template", id: name.to_string() }),
        }
    }

    pub async fn delete_template(&self, by: &Principal, name: &str) -> Result<(), AppError> {
        if builtin(name).is_some() {
            return Err(AppError::Conflict(format!("template {name} is built in and cannot be deleted")));
        }
        if self.store.delete_template(&by.tenant.id, name).await? {
            Ok(())
        } else {
            Err(AppError::NotFound { kind: "template", id: name.to_string() })
        }
    }

    /// A create request with its template's settings where it gives none (env and secrets
    /// merged, the request's winning).
    pub(crate) async fn with_template(
        &self,
        by: &Principal,
        mut req: super::CreateInstance,
    ) -> Result<super::CreateInstance, AppError> {
        let Some(name) = req.template.take() else { return Ok(req) };
        let t = self.get_template(by, &name).await.map_err(|e| match e {
            AppError::NotFound { .. } => {
                AppError::invalid("template", format!("no template named '{name}' (gpucloud template list shows them)"))
            }
            other => other,
        })?;
        if req.image.is_none() {
            req.image = t.image;
        }
        if req.command.trim().is_empty() {
            req.command = t.command.unwrap_or_default();
        }
        for (k, v) in t.env {
            req.env.entry(k).or_insert(v);
        }
        for s in t.secrets {
            if !req.secrets.contains(&s) && !req.env.contains_key(&s) {
                req.secrets.push(s);
            }
        }
        if req.ports.is_empty() {
            req.ports = t.ports;
        }
        if req.volume.is_none() {
            req.volume = t.volume;
        }
        Ok(req)
    }
}
