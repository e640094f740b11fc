//! The checker: holds a deployment manifest (or a `${VAR}` deployment template) to the
//! production checklist and reports each finding with its rule, JSON path and fix.
//!
//! Rules are listed, with their severities, in the crate README. Each rule looks at one
//! thing, so a manifest with one mistake gets exactly one finding.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::connection_string::{ConnectionString, ParentProtocol};
use crate::finding::{Finding, Report, Severity, TwinSize};
use crate::image;
use crate::route;

/// The checker's limits. Each default is documented in the crate README.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// IoT Hub's limit on a module twin's desired properties, in bytes (32 KiB).
    pub twin_size_limit: usize,
    /// Warn when the `$edgeAgent` desired properties reach this share of the limit (80%).
    pub twin_size_warn_percent: usize,
    /// IoT Hub's limit on one string value in a twin, in bytes (4 KiB): a longer
    /// `createOptions` must be split into `createOptions01`, `createOptions02`, ...
    pub string_value_limit: usize,
    /// At or below this edgeHub memory limit, `OptimizeForPerformance=false` is suggested (1 GiB).
    pub small_memory_bytes: u64,
    /// `timeToLiveSecs` below this loses messages in short outages (300 s).
    pub ttl_min_secs: u64,
    /// `timeToLiveSecs` above this risks filling the disk (30 days).
    pub ttl_max_secs: u64,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            twin_size_limit: 32 * 1024,
            twin_size_warn_percent: 80,
            string_value_limit: 4 * 1024,
            small_memory_bytes: 1024 * 1024 * 1024,
            ttl_min_secs: 300,
            ttl_max_secs: 30 * 24 * 3600,
        }
    }
}

/// JSON Pointer escaping of one key (RFC 6901).
fn esc(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn join(base: &str, key: &str) -> String {
    format!("{base}/{}", esc(key))
}

/// A value that is (or holds) an unfilled `${VAR}` placeholder: its content is unknown.
fn templated(s: &str) -> bool {
    s.contains("${")
}

/// A `<UPPER_CASE>` placeholder from the shipped manifests: content unknown until filled.
fn bracket_placeholder(s: &str) -> bool {
    s.starts_with('<') && s.ends_with('>')
}

struct Checker<'a> {
    settings: &'a CheckSettings,
    template: bool,
    findings: Vec<Finding>,
}

/// One module of the manifest (system or custom), with its parsed `createOptions`.
struct Module<'a> {
    name: String,
    system: bool,
    value: &'a Map<String, Value>,
    path: String,
    /// Parsed `createOptions` (after joining `createOptionsNN` chunks), if valid.
    create: Option<Value>,
    /// Pointer to `settings/createOptions`, the prefix for paths inside it.
    create_path: String,
    /// createOptions was present but unusable (already reported) or holds `${VAR}` (unknown
    /// until rendered): skip the rules that read it, so one mistake gives one finding.
    create_invalid: bool,
}

impl Module<'_> {
    fn env(&self, name: &str) -> Option<&Value> {
        self.value
            .get("env")?
            .as_object()?
            .get(name)?
            .as_object()?
            .get("value")
    }

    fn env_str(&self, name: &str) -> Option<String> {
        match self.env(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    fn env_path(&self, name: &str) -> String {
        join(&join(&join(&self.path, "env"), name), "value")
    }

    fn host_config(&self) -> Option<&Map<String, Value>> {
        self.create.as_ref()?.get("HostConfig")?.as_object()
    }

    fn hc_path(&self, key: &str) -> String {
        format!("{}#/HostConfig/{}", self.create_path, esc(key))
    }

    fn image(&self) -> Option<&str> {
        self.value.get("settings")?.get("image")?.as_str()
    }

    /// The container's command line (`Cmd`, an array or a string split at spaces).
    fn cmd(&self) -> Vec<String> {
        match self.create.as_ref().and_then(|c| c.get("Cmd")) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        }
    }

    fn cmd_first(&self) -> Option<String> {
        self.cmd().into_iter().next()
    }

    /// The value of `--flag VALUE` or `--flag=VALUE` in `Cmd`.
    fn cmd_flag(&self, flag: &str) -> Option<String> {
        let cmd = self.cmd();
        let mut args = cmd.iter();
        while let Some(a) = args.next() {
            if a == flag {
                return args.next().cloned();
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Some(v.to_string());
            }
        }
        None
    }

    fn cmd_path(&self) -> String {
        format!("{}#/Cmd", self.create_path)
    }
}

impl<'a> Checker<'a> {
    fn push(
        &mut self,
        severity: Severity,
        rule: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            severity,
            rule,
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
            line: None,
            column: None,
        });
    }

    fn error(
        &mut self,
        rule: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, rule, path, message, fix);
    }

    fn warn(
        &mut self,
        rule: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Warning, rule, path, message, fix);
    }

    /// Looks up a required object; reports `required-section` when absent.
    fn section<'v>(
        &mut self,
        parent: &'v Map<String, Value>,
        parent_path: &str,
        key: &str,
    ) -> Option<&'v Map<String, Value>> {
        let path = join(parent_path, key);
        match parent.get(key) {
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.error(
                    "required-section",
                    path,
                    format!("`{key}` must be a JSON object"),
                    format!("make `{key}` an object as in the shipped manifests"),
                );
                None
            }
            None => {
                self.error(
                    "required-section",
                    path,
                    format!("required section `{key}` is missing"),
                    format!(
                        "add `{key}` under `{}` (see deploy-manifests/manifests/top-layer.json)",
                        if parent_path.is_empty() {
                            "/"
                        } else {
                            parent_path
                        }
                    ),
                );
                None
            }
        }
    }
}

/// Checks one manifest text. Never panics on bad input: every problem is a finding.
pub fn check(text: &str, settings: &CheckSettings) -> Report {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let template = templated(text);
    let mut c = Checker {
        settings,
        template,
        findings: Vec::new(),
    };
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let what = if e.is_eof() {
                format!("the file ends early (truncated?): {e}")
            } else {
                format!("invalid JSON: {e}")
            };
            let hint = if e.is_eof() {
                "restore the end of the file (was it cut off while copying or saving?)"
            } else if template {
                "fix the JSON at that line and column; `${VAR}` placeholders outside quotes must be filled with `connected-registry manifest render` first"
            } else {
                "fix the JSON at that line and column (a missing comma, quote or closing brace is the usual cause)"
            };
            c.findings.push(Finding {
                severity: Severity::Error,
                rule: "json-syntax",
                path: String::new(),
                message: what,
                fix: hint.into(),
                line: Some(e.line()),
                column: Some(e.column()),
            });
            return Report {
                findings: c.findings,
                twin_size: None,
                template,
            };
        }
    };
    for d in crate::dupkeys::find(text) {
        c.findings.push(Finding {
            severity: Severity::Error,
            rule: "duplicate-key",
            path: d.path,
            message: format!("key `{}` appears twice in the same object at line {} column {}; IoT Hub keeps only the last, so the first is silently lost", d.key, d.line, d.column),
            fix: "remove or rename one of the two (two modules or env variables cannot share a name)".into(),
            line: Some(d.line),
            column: Some(d.column),
        });
    }
    let twin_size = check_doc(&mut c, &doc);
    Report {
        findings: c.findings,
        twin_size,
        template,
    }
}

fn check_doc(c: &mut Checker, doc: &Value) -> Option<TwinSize> {
    let Some(root) = doc.as_object() else {
        c.error(
            "required-section",
            "",
            "the manifest must be a JSON object",
            "start from deploy-manifests/manifests/top-layer.json",
        );
        return None;
    };
    let mc = c.section(root, "", "modulesContent")?;
    let agent_path = "/modulesContent/$edgeAgent/properties.desired".to_string();
    let hub_path = "/modulesContent/$edgeHub/properties.desired".to_string();
    let agent = c
        .section(mc, "/modulesContent", "$edgeAgent")
        .and_then(|a| c.section(a, "/modulesContent/$edgeAgent", "properties.desired"));
    let hub = c
        .section(mc, "/modulesContent", "$edgeHub")
        .and_then(|h| c.section(h, "/modulesContent/$edgeHub", "properties.desired"));

    let mut twin_size = None;
    let mut modules: Vec<Module> = Vec::new();
    if let Some(agent) = agent {
        check_schema_version(c, agent, &agent_path);
        let runtime = c.section(agent, &agent_path, "runtime");
        if let Some(system) = c.section(agent, &agent_path, "systemModules") {
            let sys_path = join(&agent_path, "systemModules");
            for name in ["edgeAgent", "edgeHub"] {
                if let Some(m) = c.section(system, &sys_path, name) {
                    modules.push(load_module(c, name, true, m, join(&sys_path, name)));
                }
            }
        }
        match agent.get("modules") {
            None => {}
            Some(Value::Object(ms)) => {
                let mods_path = join(&agent_path, "modules");
                for (name, m) in ms {
                    match m.as_object() {
                        Some(m) => {
                            modules.push(load_module(c, name, false, m, join(&mods_path, name)))
                        }
                        None => c.error(
                            "module-fields",
                            join(&mods_path, name),
                            format!("module `{name}` must be a JSON object"),
                            "give the module type, settings, status and restartPolicy",
                        ),
                    }
                }
            }
            Some(_) => c.error(
                "required-section",
                join(&agent_path, "modules"),
                "`modules` must be a JSON object keyed by module name",
                "make `modules` an object",
            ),
        }
        for m in &modules {
            check_module_fields(c, m);
        }
        check_images(c, &modules, runtime, &agent_path);
        check_runtime_env(c, &modules);
        for m in &modules {
            check_security(c, m);
        }
        check_ports(c, &modules);
        check_connected_registry(c, &modules);
        let size = TwinSize {
            bytes: twin_bytes(&Value::Object(agent.clone())),
            limit: c.settings.twin_size_limit,
        };
        if size.bytes > size.limit {
            c.error("twin-size", agent_path.clone(), format!("$edgeAgent desired properties are {} bytes, over the {}-byte module-twin limit ({}%)", size.bytes, size.limit, size.percent()), "IoT Hub will reject this deployment: shorten createOptions and env values, or move modules to a layered deployment");
        } else if size.percent() >= c.settings.twin_size_warn_percent {
            c.warn("twin-size", agent_path.clone(), format!("$edgeAgent desired properties are {} bytes, {}% of the {}-byte module-twin limit", size.bytes, size.percent(), size.limit), "leave room for growth: shorten createOptions and env values, or split into layered deployments");
        }
        twin_size = Some(size);
    }
    if let Some(hub) = hub {
        let bytes = twin_bytes(&Value::Object(hub.clone()));
        if bytes > c.settings.twin_size_limit {
            c.error(
                "twin-size",
                hub_path.clone(),
                format!("$edgeHub desired properties are {bytes} bytes, over the {}-byte module-twin limit", c.settings.twin_size_limit),
                "IoT Hub will reject this deployment: use fewer, broader routes",
            );
        }
        check_schema_version(c, hub, &hub_path);
        check_routes(c, hub, &hub_path, &modules);
        check_ttl(c, hub, &hub_path);
    }
    twin_size
}

fn check_schema_version(c: &mut Checker, section: &Map<String, Value>, path: &str) {
    let p = join(path, "schemaVersion");
    match section.get("schemaVersion") {
        None => c.error(
            "schema-version",
            p,
            "`schemaVersion` is missing",
            "add `\"schemaVersion\": \"1.1\"`",
        ),
        Some(Value::String(v)) if ["1.0", "1.1", "1.2"].contains(&v.as_str()) => {}
        Some(v) => c.error(
            "schema-version",
            p,
            format!("`schemaVersion` is {v}, not a known version"),
            "use `\"schemaVersion\": \"1.1\"`",
        ),
    }
}

/// Reads a module, joining and parsing its `createOptions` chunks.
fn load_module<'v>(
    c: &mut Checker,
    name: &str,
    system: bool,
    value: &'v Map<String, Value>,
    path: String,
) -> Module<'v> {
    let settings_path = join(&path, "settings");
    let create_path = join(&settings_path, "createOptions");
    let mut module = Module {
        name: name.to_string(),
        system,
        value,
        path,
        create: None,
        create_path: create_path.clone(),
        create_invalid: false,
    };
    let Some(settings) = value.get("settings").and_then(Value::as_object) else {
        return module;
    };
    let mut chunks: Vec<(u32, &str, &Value)> = Vec::new();
    for (k, v) in settings {
        if k == "createOptions" {
            chunks.push((0, k, v));
        } else if let Some(n) = k.strip_prefix("createOptions") {
            match n.parse::<u32>() {
                Ok(i) if n.len() == 2 && i >= 1 => chunks.push((i, k, v)),
                _ => c.error("create-options", join(&settings_path, k), format!("`{k}` is not a createOptions chunk name"), "chunks after `createOptions` are `createOptions01`, `createOptions02`, ... (two digits)"),
            }
        }
    }
    chunks.sort_by_key(|(i, _, _)| *i);
    if chunks.is_empty() {
        return module;
    }
    if let [(0, _, obj @ Value::Object(_))] = chunks.as_slice() {
        if c.template {
            module.create = Some((*obj).clone());
        } else {
            c.error("create-options", create_path, "`createOptions` is an object; a deployment manifest needs it as a string holding JSON", "stringify it (a deployment template may hold an object; `iotedgedev`/`az` stringify it when generating the manifest)");
            module.create_invalid = true;
        }
        return module;
    }
    let mut joined = String::new();
    for (expected, (i, k, v)) in chunks.iter().enumerate() {
        let p = join(&settings_path, k);
        if *i as usize != expected {
            c.error("create-options", p, format!("`{k}` is out of sequence: chunks must run createOptions, createOptions01, createOptions02, ... without gaps"), "renumber the chunks without gaps");
            module.create_invalid = true;
            return module;
        }
        let Some(s) = v.as_str() else {
            c.error(
                "create-options",
                p,
                format!("`{k}` must be a string holding JSON, found {}", kind(v)),
                "write createOptions as a JSON string, e.g. \"{\\\"HostConfig\\\":{}}\"",
            );
            module.create_invalid = true;
            return module;
        };
        if s.len() > c.settings.string_value_limit {
            c.error("create-options", p.clone(), format!("`{k}` is {} bytes, over IoT Hub's {}-byte limit for one twin string", s.len(), c.settings.string_value_limit), "split it into createOptions, createOptions01, createOptions02, ... each under the limit");
        }
        joined.push_str(s);
    }
    if joined.trim().is_empty() {
        return module;
    }
    if templated(&joined) {
        // Content unknown until rendered: judge it after `manifest render`.
        module.create_invalid = true;
        return module;
    }
    match serde_json::from_str::<Value>(&joined) {
        Ok(v @ Value::Object(_)) => module.create = Some(v),
        Ok(other) => {
            module.create_invalid = true;
            c.error(
                "create-options",
                create_path,
                format!(
                    "createOptions holds {} instead of a JSON object",
                    kind(&other)
                ),
                "createOptions must be a JSON object such as {\"HostConfig\":{...}}",
            );
        }
        Err(e) => {
            module.create_invalid = true;
            c.error("create-options", create_path, format!("createOptions is not valid JSON: {e} (line and column inside the joined createOptions string)"), "fix the JSON inside the string; check escaped quotes and braces");
        }
    }
    module
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const STATUSES: [&str; 2] = ["running", "stopped"];
const RESTART_POLICIES: [&str; 4] = ["never", "on-failure", "on-unhealthy", "always"];

fn check_module_fields(c: &mut Checker, m: &Module) {
    let who = format!("module `{}`", m.name);
    match m.value.get("type") {
        Some(Value::String(t)) if t == "docker" => {}
        Some(t) => c.error(
            "module-fields",
            join(&m.path, "type"),
            format!("{who} has type {t}; IoT Edge runs `docker` modules"),
            "set `\"type\": \"docker\"`",
        ),
        None => c.error(
            "module-fields",
            join(&m.path, "type"),
            format!("{who} has no `type`"),
            "add `\"type\": \"docker\"`",
        ),
    }
    match m.image() {
        Some(i) if !i.trim().is_empty() => {}
        _ => c.error(
            "module-fields",
            join(&join(&m.path, "settings"), "image"),
            format!("{who} has no `settings.image`"),
            "add `settings.image` with a registry/repository:X.Y.Z reference",
        ),
    }
    // edgeAgent is started by the IoT Edge daemon and takes neither field.
    if m.system && m.name == "edgeAgent" {
        return;
    }
    for (field, allowed) in [
        ("status", &STATUSES[..]),
        ("restartPolicy", &RESTART_POLICIES[..]),
    ] {
        let p = join(&m.path, field);
        match m.value.get(field) {
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Some(v) => c.error(
                "module-fields",
                p,
                format!("{who} has {field} {v}, not one of {}", allowed.join(", ")),
                format!("set `{field}` to one of {}", allowed.join(", ")),
            ),
            None => c.error(
                "module-fields",
                p,
                format!("{who} has no `{field}`"),
                format!(
                    "add `{field}` (production: {})",
                    if field == "status" {
                        "\"running\""
                    } else {
                        "\"always\""
                    }
                ),
            ),
        }
    }
    if let Some(env) = m.value.get("env") {
        match env.as_object() {
            None => c.error(
                "module-fields",
                join(&m.path, "env"),
                format!("{who}: `env` must be an object"),
                "write env as {\"NAME\": {\"value\": \"...\"}}",
            ),
            Some(env) => {
                for (k, v) in env {
                    if v.get("value").is_none() {
                        c.error(
                            "module-fields",
                            join(&join(&m.path, "env"), k),
                            format!("{who}: env `{k}` has no `value`"),
                            format!("write it as \"{k}\": {{\"value\": \"...\"}}"),
                        );
                    }
                }
            }
        }
    }
}

fn check_images(
    c: &mut Checker,
    modules: &[Module],
    runtime: Option<&Map<String, Value>>,
    agent_path: &str,
) {
    let creds_path = join(
        &join(&join(agent_path, "runtime"), "settings"),
        "registryCredentials",
    );
    // (normalized address, as written, path)
    let mut spellings: Vec<(String, String, String)> = Vec::new();
    let mut cred_addresses: Vec<String> = Vec::new();
    if let Some(creds) = runtime
        .and_then(|r| r.get("settings"))
        .and_then(|s| s.get("registryCredentials"))
        .and_then(Value::as_object)
    {
        for (name, cred) in creds {
            let p = join(&creds_path, name);
            let missing: Vec<&str> = ["address", "username", "password"]
                .into_iter()
                .filter(|f| {
                    cred.get(*f)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                })
                .collect();
            if !missing.is_empty() {
                c.error(
                    "registry-credentials",
                    p.clone(),
                    format!("registry credential `{name}` lacks {}", missing.join(", ")),
                    "give each credential an address, a username and a password",
                );
            }
            if let Some(addr) = cred.get("address").and_then(Value::as_str) {
                cred_addresses.push(image::normalize_registry(addr));
                spellings.push((
                    image::normalize_registry(addr),
                    addr.to_string(),
                    join(&p, "address"),
                ));
            }
        }
    }
    for m in modules {
        let Some(img) = m.image() else { continue };
        let p = join(&join(&m.path, "settings"), "image");
        if templated(img) {
            continue;
        }
        let r = image::parse(img);
        if let Some(reg) = &r.registry {
            spellings.push((image::normalize_registry(reg), reg.clone(), p.clone()));
        }
        match (&r.tag, &r.digest) {
            (_, Some(_)) => {}
            (Some(t), None) if bracket_placeholder(t) => {}
            (Some(t), None) if t.ends_with(".debug") => c.error("image-debug", p.clone(), format!("module `{}` uses the debug image `{img}`", m.name), "use the release tag (without `.debug`)"),
            (Some(t), None) if t == "latest" => c.error("image-latest", p.clone(), format!("module `{}` uses `{img}`: `latest` moves, so devices drift apart", m.name), "pin a specific X.Y.Z tag (or a digest)"),
            (None, None) => c.error("image-latest", p.clone(), format!("module `{}` image `{img}` has no tag, which means `latest`", m.name), "pin a specific X.Y.Z tag (or a digest)"),
            (Some(t), None) if !image::is_pinned_version(t) => c.warn("image-rolling-tag", p.clone(), format!("module `{}` uses the rolling tag `{t}`; the image can change under a running deployment", m.name), "pin the full X.Y.Z tag that you tested"),
            _ => {}
        }
        if !image::is_public_registry(r.registry.as_deref()) {
            let reg = r.registry.clone().unwrap_or_default();
            if !cred_addresses.contains(&image::normalize_registry(&reg)) {
                c.error("registry-credentials", p.clone(), format!("module `{}` pulls from `{reg}`, which has no entry in registryCredentials", m.name), format!("add a registryCredentials entry with \"address\": \"{reg}\", a username and a password"));
            }
        }
    }
    // The spelling used most often (first seen on a tie) is the one to keep; flag the others.
    let mut counts: HashMap<String, Vec<(String, usize)>> = HashMap::new();
    for (norm, raw, _) in &spellings {
        let e = counts.entry(norm.clone()).or_default();
        match e.iter_mut().find(|(r, _)| r == raw) {
            Some((_, n)) => *n += 1,
            None => e.push((raw.clone(), 1)),
        }
    }
    for (norm, raw, p) in spellings {
        let all = &counts[&norm];
        let mut canonical = &all[0];
        for cand in all {
            if cand.1 > canonical.1 {
                canonical = cand;
            }
        }
        if raw != canonical.0 {
            let seen = canonical.0.clone();
            c.warn("registry-spelling", p, format!("registry `{raw}` is the same registry as `{seen}` spelled differently"), format!("spell it `{seen}` everywhere, so credentials match and devices do not pull twice"));
        }
    }
}

const UPSTREAM_PROTOCOLS: [&str; 4] = ["Amqp", "AmqpWs", "Mqtt", "MqttWs"];
const UPDATE_MODES: [&str; 2] = ["NonBlocking", "WaitForAllPulls"];

fn check_runtime_env(c: &mut Checker, modules: &[Module]) {
    let agent = modules.iter().find(|m| m.system && m.name == "edgeAgent");
    let hub = modules.iter().find(|m| m.system && m.name == "edgeHub");
    if let (Some(a), Some(h)) = (agent, hub) {
        let (av, hv) = (a.env_str("UpstreamProtocol"), h.env_str("UpstreamProtocol"));
        for (m, v) in [(a, &av), (h, &hv)] {
            if let Some(v) = v {
                if !templated(v) && !UPSTREAM_PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(v)) {
                    c.error(
                        "upstream-protocol",
                        m.env_path("UpstreamProtocol"),
                        format!(
                            "{} UpstreamProtocol `{v}` is not one of {}",
                            m.name,
                            UPSTREAM_PROTOCOLS.join(", ")
                        ),
                        "use Amqp, AmqpWs, Mqtt or MqttWs (AmqpWs when only 443 is open)",
                    );
                }
            }
        }
        let same = match (&av, &hv) {
            (None, None) => true,
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y) || templated(x) || templated(y),
            _ => false,
        };
        if !same {
            let p = if hv.is_some() {
                h.env_path("UpstreamProtocol")
            } else {
                a.env_path("UpstreamProtocol")
            };
            c.error("upstream-protocol", p, format!("UpstreamProtocol differs: edgeAgent {}, edgeHub {}", av.as_deref().unwrap_or("(unset)"), hv.as_deref().unwrap_or("(unset)")), "set the same UpstreamProtocol on $edgeAgent and $edgeHub (both behind the same firewall)");
        }
        if let Some(mode) = a.env_str("ModuleUpdateMode") {
            if !templated(&mode) && !UPDATE_MODES.contains(&mode.as_str()) {
                c.error(
                    "module-update-mode",
                    a.env_path("ModuleUpdateMode"),
                    format!("ModuleUpdateMode `{mode}` is not valid"),
                    "use `NonBlocking` (default) or `WaitForAllPulls`",
                );
            }
        }
        if let Some(mem) = h
            .host_config()
            .and_then(|hc| hc.get("Memory"))
            .and_then(Value::as_u64)
        {
            let opt = h.env_str("OptimizeForPerformance");
            if mem > 0
                && mem <= c.settings.small_memory_bytes
                && !opt
                    .as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case("false"))
            {
                c.push(
                    Severity::Info,
                    "optimize-for-performance",
                    h.hc_path("Memory"),
                    format!(
                        "edgeHub is limited to {} MiB but OptimizeForPerformance is not false",
                        mem / (1024 * 1024)
                    ),
                    "set env OptimizeForPerformance=false on edgeHub so it fits small memory",
                );
            }
        }
    }
    for m in modules {
        let Some(env) = m.value.get("env").and_then(Value::as_object) else {
            continue;
        };
        for name in env.keys() {
            let lower = name.to_ascii_lowercase();
            let squashed: String = lower
                .chars()
                .filter(|ch| *ch != '_' && *ch != ':')
                .collect();
            for proto in ["amqp", "mqtt", "http"] {
                let want = format!("{proto}settings__enabled");
                if squashed == format!("{proto}settingsenabled") && lower != want {
                    c.error("env-double-underscore", join(&join(&m.path, "env"), name), format!("env `{name}` in module `{}` is ignored: the separator must be two underscores", m.name), format!("rename it to `{proto}Settings__enabled`"));
                }
            }
        }
    }
}

fn check_ttl(c: &mut Checker, hub: &Map<String, Value>, hub_path: &str) {
    let mut ttls: Vec<(String, &Value)> = Vec::new();
    if let Some(v) = hub
        .get("storeAndForwardConfiguration")
        .and_then(|s| s.get("timeToLiveSecs"))
    {
        ttls.push((
            join(
                &join(hub_path, "storeAndForwardConfiguration"),
                "timeToLiveSecs",
            ),
            v,
        ));
    }
    if let Some(routes) = hub.get("routes").and_then(Value::as_object) {
        for (name, r) in routes {
            if let Some(v) = r.get("timeToLiveSecs") {
                ttls.push((
                    join(&join(&join(hub_path, "routes"), name), "timeToLiveSecs"),
                    v,
                ));
            }
        }
    }
    for (p, v) in ttls {
        match v.as_u64() {
            None | Some(0) => c.error(
                "time-to-live",
                p,
                format!("timeToLiveSecs is {v}; it must be a whole number of seconds above 0"),
                "set timeToLiveSecs to how long messages must survive an outage, e.g. 86400",
            ),
            Some(s) if s < c.settings.ttl_min_secs => c.warn(
                "time-to-live",
                p,
                format!("timeToLiveSecs is {s}: messages are dropped after outages of {s} s"),
                format!(
                    "use at least {} s; an edge uplink is often down for hours",
                    c.settings.ttl_min_secs
                ),
            ),
            Some(s) if s > c.settings.ttl_max_secs => c.warn(
                "time-to-live",
                p,
                format!(
                    "timeToLiveSecs is {s} ({} days): stored messages may fill the disk",
                    s / 86400
                ),
                format!(
                    "use at most {} s, sized to the edgeHub storage",
                    c.settings.ttl_max_secs
                ),
            ),
            _ => {}
        }
    }
}

const ALLOWED_CAPS: [&str; 1] = ["NET_BIND_SERVICE"];

fn check_security(c: &mut Checker, m: &Module) {
    if m.create_invalid {
        return;
    }
    let who = format!("module `{}`", m.name);
    let hc = m.host_config();
    let get = |k: &str| hc.and_then(|h| h.get(k));
    if get("Privileged").and_then(Value::as_bool) == Some(true) {
        c.error(
            "privileged",
            m.hc_path("Privileged"),
            format!("{who} runs privileged, with full access to the host"),
            "remove `Privileged`; add only the capabilities the module needs",
        );
    }
    if let Some(caps) = get("CapAdd").and_then(Value::as_array) {
        let extra: Vec<String> = caps
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim_start_matches("CAP_").to_ascii_uppercase())
            .filter(|s| !ALLOWED_CAPS.contains(&s.as_str()))
            .collect();
        if !extra.is_empty() {
            c.error("cap-add", m.hc_path("CapAdd"), format!("{who} adds capabilities {} that it does not need", extra.join(", ")), "remove them from CapAdd (NET_BIND_SERVICE, for ports below 1024, is the only one these modules need)");
        }
    }
    if get("NetworkMode")
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case("host"))
    {
        c.warn("host-network", m.hc_path("NetworkMode"), format!("{who} uses the host network: it bypasses the module network and can bind any host port"), "remove NetworkMode \"host\" and publish ports with PortBindings, unless the module truly needs it (then record why beside the deployment)");
    }
    if get("Memory").and_then(Value::as_u64).unwrap_or(0) == 0 {
        c.warn(
            "memory-limit",
            m.hc_path("Memory"),
            format!("{who} has no memory limit: a leak can starve edgeHub and the OS"),
            "set HostConfig.Memory in bytes, e.g. 536870912 for 512 MiB",
        );
    }
    let cpu = get("NanoCpus")
        .and_then(Value::as_u64)
        .is_some_and(|v| v > 0)
        || get("CpuQuota")
            .and_then(Value::as_i64)
            .is_some_and(|v| v > 0);
    if !cpu {
        c.warn(
            "cpu-limit",
            m.hc_path("NanoCpus"),
            format!("{who} has no CPU limit"),
            "set HostConfig.NanoCpus, e.g. 1000000000 for one CPU",
        );
    }
    check_log_config(c, m, get("LogConfig"));
    check_host_storage(c, m);
}

fn check_log_config(c: &mut Checker, m: &Module, log: Option<&Value>) {
    let who = format!("module `{}`", m.name);
    let fix = "add \"LogConfig\":{\"Type\":\"json-file\",\"Config\":{\"max-size\":\"10m\",\"max-file\":\"3\"}} to HostConfig";
    let Some(log) = log else {
        c.warn(
            "log-limits",
            m.hc_path("LogConfig"),
            format!("{who} has no LogConfig: its logs grow until the disk is full"),
            fix,
        );
        return;
    };
    let driver = log
        .get("Type")
        .and_then(Value::as_str)
        .unwrap_or("json-file");
    if !["json-file", "local"].contains(&driver) {
        return; // journald, syslog, ... rotate elsewhere.
    }
    let config = log.get("Config");
    let missing: Vec<&str> = ["max-size", "max-file"]
        .into_iter()
        .filter(|k| config.and_then(|cfg| cfg.get(*k)).is_none())
        .collect();
    if !missing.is_empty() {
        c.warn(
            "log-limits",
            m.hc_path("LogConfig"),
            format!(
                "{who} LogConfig lacks {}: its logs grow until the disk is full",
                missing.join(" and ")
            ),
            fix,
        );
    }
}

/// Container paths bound from the host (Binds `host:container[:opts]` and bind Mounts).
fn host_binds(m: &Module) -> Vec<String> {
    let mut out = Vec::new();
    let Some(hc) = m.host_config() else {
        return out;
    };
    for b in hc
        .get("Binds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let mut parts = b.split(':');
        if let (Some(host), Some(container)) = (parts.next(), parts.next()) {
            if host.starts_with('/') || host.starts_with('<') || templated(host) {
                out.push(container.trim_end_matches('/').to_string());
            }
        }
    }
    for mnt in hc
        .get("Mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if mnt.get("Type").and_then(Value::as_str) == Some("bind") {
            if let Some(t) = mnt.get("Target").and_then(Value::as_str) {
                out.push(t.trim_end_matches('/').to_string());
            }
        }
    }
    out
}

fn check_host_storage(c: &mut Checker, m: &Module) {
    let var = if m.system {
        "storageFolder"
    } else if is_registry(m) {
        "ACR_REGISTRY_DATA_VOLUME"
    } else {
        return;
    };
    let who = format!("module `{}`", m.name);
    let Some(folder) = m.env_str(var) else {
        c.warn("host-storage", join(&join(&m.path, "env"), var), format!("{who} keeps its state inside the container: it is lost when the container is recreated"), format!("set env {var} to a folder (e.g. /var/lib/{}) and bind a host directory to it in HostConfig.Binds", m.name.to_ascii_lowercase()));
        return;
    };
    if templated(&folder) {
        return;
    }
    let binds = host_binds(m);
    let folder = folder.trim_end_matches('/');
    if !binds
        .iter()
        .any(|b| folder == b || folder.starts_with(&format!("{b}/")))
    {
        c.warn(
            "host-storage",
            m.hc_path("Binds"),
            format!("{who} stores data in {folder} but no host directory is bound there"),
            format!("add \"<HOST_DIR>:{folder}\" to HostConfig.Binds"),
        );
    }
}

fn check_ports(c: &mut Checker, modules: &[Module]) {
    // (host ip, "" for all addresses; host port; protocol; module name)
    let mut taken: Vec<(String, String, String, String)> = Vec::new();
    for m in modules {
        let Some(pb) = m
            .host_config()
            .and_then(|hc| hc.get("PortBindings"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (container, bindings) in pb {
            let proto = container
                .split_once('/')
                .map(|(_, p)| p.to_ascii_lowercase())
                .unwrap_or_else(|| "tcp".into());
            for b in bindings.as_array().into_iter().flatten() {
                let Some(port) = b
                    .get("HostPort")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                else {
                    continue;
                };
                let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
                let ip = if ip == "0.0.0.0" || ip == "::" {
                    ""
                } else {
                    ip
                };
                // A binding on all addresses clashes with any binding of the same port.
                let clash = taken
                    .iter()
                    .find(|(tip, tport, tproto, tmod)| {
                        tport == port
                            && *tproto == proto
                            && *tmod != m.name
                            && (tip == ip || tip.is_empty() || ip.is_empty())
                    })
                    .map(|t| t.3.clone());
                if let Some(other) = clash {
                    c.error(
                        "port-conflict",
                        format!("{}#/HostConfig/PortBindings/{}", m.create_path, esc(container)),
                        format!("modules `{other}` and `{}` both bind host port {port}/{proto}; the second one fails to start", m.name),
                        "give one of them another host port (on a layer with the API proxy, the proxy owns 443 and edgeHub binds only 5671 and 8883)",
                    );
                } else {
                    taken.push((
                        ip.to_string(),
                        port.to_string(),
                        proto.clone(),
                        m.name.clone(),
                    ));
                }
            }
        }
    }
}

fn is_registry(m: &Module) -> bool {
    if m.system {
        return false;
    }
    if m.env("ACR_REGISTRY_CONNECTION_STRING").is_some() {
        return true;
    }
    if m.create_invalid {
        // Without createOptions we cannot see `Cmd`, so cannot tell registry from proxy.
        return false;
    }
    let repo_is_ours = m
        .image()
        .map(image::parse)
        .is_some_and(|r| r.repository.rsplit('/').next() == Some("connected-registry"));
    repo_is_ours && m.cmd_first().is_none_or(|c| c == "serve")
}

/// True for hosts that are clearly not a cloud endpoint: localhost, single-label names and
/// private or loopback IPv4 addresses. A `<PLACEHOLDER>` counts as a cloud endpoint.
fn is_private_or_local(host: &str) -> bool {
    if bracket_placeholder(host) {
        return false;
    }
    let h = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host);
    if h == "localhost" || !h.contains('.') {
        return true;
    }
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        return ip.is_private() || ip.is_loopback() || ip.is_link_local();
    }
    false
}

const ROUTE_VARS: [&str; 3] = [
    "CONNECTED_ACR_ROUTE_ADDRESS",
    "BLOB_UPLOAD_ROUTE_ADDRESS",
    "DOCKER_REQUEST_ROUTE_ADDRESS",
];

fn check_connected_registry(c: &mut Checker, modules: &[Module]) {
    for m in modules.iter().filter(|m| is_registry(m)) {
        let p = m.env_path("ACR_REGISTRY_CONNECTION_STRING");
        let Some(cs) = m.env_str("ACR_REGISTRY_CONNECTION_STRING") else {
            c.error("connection-string", p, format!("connected-registry module `{}` has no ACR_REGISTRY_CONNECTION_STRING", m.name), "add env ACR_REGISTRY_CONNECTION_STRING with the connection string from `az acr connected-registry get-settings`");
            continue;
        };
        if templated(&cs) && !cs.contains(';') {
            continue;
        }
        match cs.parse::<ConnectionString>() {
            Err(e) => c.error("connection-string", p, format!("module `{}`: {e}", m.name), "write all five fields: ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;ParentGatewayEndpoint=...;ParentEndpointProtocol=https"),
            Ok(cs) => {
                let ep = &cs.parent_gateway_endpoint;
                let unknown = templated(ep);
                if cs.parent_endpoint_protocol == ParentProtocol::Http && !cs.parent_is_edge_device() && !unknown && !is_private_or_local(ep) {
                    c.error("parent-protocol", p, format!("module `{}` syncs from the cloud endpoint `{ep}` over plain http: the sync token would cross the internet in clear text", m.name), "set ParentEndpointProtocol=https");
                }
                if cs.parent_endpoint_protocol == ParentProtocol::Https && cs.parent_is_edge_device() {
                    check_parent_trust(c, m);
                }
            }
        }
    }
    let names: Vec<String> = modules
        .iter()
        .map(|m| m.name.to_ascii_lowercase())
        .collect();
    for m in modules {
        for var in ROUTE_VARS {
            let Some(v) = m.env_str(var) else { continue };
            if v.is_empty() || templated(&v) || bracket_placeholder(&v) {
                continue;
            }
            let p = m.env_path(var);
            let host = match v.rsplit_once(':') {
                Some((h, port)) if port.parse::<u16>().is_ok() && !h.is_empty() => h,
                _ => {
                    c.error(
                        "proxy-route",
                        p,
                        format!("{var} is `{v}`; it must be `<module>:<port>`"),
                        format!("set {var} to a module name and port, e.g. connectedRegistry:8080"),
                    );
                    continue;
                }
            };
            if !names.contains(&host.to_ascii_lowercase()) {
                c.error(
                    "proxy-route",
                    p,
                    format!(
                        "{var} routes to `{host}`, but no module of that name is in this manifest"
                    ),
                    format!(
                        "name an existing module (modules here: {})",
                        modules
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }
}

/// A registry whose parent is another edge device syncs over https through the parent's API
/// proxy, whose certificate comes from the edge CA chain and not from a public CA: without
/// `--trust` (a root CA file bound into the container) every sync fails with
/// `invalid peer certificate: UnknownIssuer`.
fn check_parent_trust(c: &mut Checker, m: &Module) {
    if m.create_invalid {
        return;
    }
    // A sync settings file may name the trust bundle; the checker cannot read it.
    if m.cmd_flag("--sync-config").is_some() || m.env("CONNECTED_REGISTRY_SYNC_CONFIG").is_some() {
        return;
    }
    let fix = "bind the root CA of the parent's certificate chain (the one the API proxy trusts) into the module, e.g. \"<PROXY_CERT_DIR>/root-ca.pem:/certs/parent-root-ca.pem:ro\" in HostConfig.Binds, and add \"--trust\", \"/certs/parent-root-ca.pem\" to Cmd (as manifests/lower-layer.json does)";
    let Some(trust) = m.cmd_flag("--trust") else {
        c.error(
            "parent-trust",
            m.cmd_path(),
            format!("connected-registry module `{}` syncs from its parent over https but has no trust bundle (--trust): it cannot verify the parent's API proxy, and every sync fails with `invalid peer certificate: UnknownIssuer`", m.name),
            fix,
        );
        return;
    };
    if templated(&trust) || bracket_placeholder(&trust) {
        return;
    }
    let bound = host_binds(m)
        .iter()
        .any(|b| trust == *b || trust.starts_with(&format!("{b}/")));
    if !bound {
        c.error(
            "parent-trust",
            m.hc_path("Binds"),
            format!("connected-registry module `{}` trusts {trust}, but no host file or directory is bound there: the file is not in the container", m.name),
            fix,
        );
    }
}

fn check_routes(c: &mut Checker, hub: &Map<String, Value>, hub_path: &str, modules: &[Module]) {
    let routes_path = join(hub_path, "routes");
    let routes = match hub.get("routes") {
        None => {
            c.error(
                "required-section",
                routes_path,
                "`$edgeHub` has no `routes`",
                "add \"routes\": {\"upstream\": \"FROM /messages/* INTO $upstream\"}",
            );
            return;
        }
        Some(Value::Object(r)) => r,
        Some(_) => {
            c.error(
                "required-section",
                routes_path,
                "`routes` must be an object of named routes",
                "write routes as {\"name\": \"FROM ... INTO ...\"}",
            );
            return;
        }
    };
    let custom: Vec<&str> = modules
        .iter()
        .filter(|m| !m.system)
        .map(|m| m.name.as_str())
        .collect();
    for (name, r) in routes {
        let (p, text) = match r {
            Value::String(s) => (join(&routes_path, name), s.as_str()),
            Value::Object(o) => match o.get("route").and_then(Value::as_str) {
                Some(s) => (join(&join(&routes_path, name), "route"), s),
                None => {
                    c.error("route-syntax", join(&routes_path, name), format!("route `{name}` has no `route` string"), "write {\"route\": \"FROM ... INTO ...\", \"priority\": 0, \"timeToLiveSecs\": 86400}");
                    continue;
                }
            },
            _ => {
                c.error(
                    "route-syntax",
                    join(&routes_path, name),
                    format!("route `{name}` must be a string or an object"),
                    "write \"name\": \"FROM ... INTO ...\"",
                );
                continue;
            }
        };
        if templated(text) {
            continue;
        }
        match route::parse(text) {
            Err(e) => c.error("route-syntax", p, format!("route `{name}`: {e}"), "write FROM /messages/... [WHERE ...] INTO $upstream or INTO BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")"),
            Ok(r) => {
                for m in [r.source_module, r.sink_module].into_iter().flatten() {
                    if !custom.contains(&m.as_str()) {
                        c.error("route-target", p.clone(), format!("route `{name}` names module `{m}`, which is not in this deployment"), format!("use one of the deployed modules ({}) or add `{m}`", custom.join(", ")));
                    }
                }
            }
        }
    }
}

/// Size of a twin section as IoT Hub counts it: every key and string value in UTF-8 bytes
/// (control characters excluded), numbers 8 bytes, booleans 4.
pub fn twin_bytes(v: &Value) -> usize {
    fn s(x: &str) -> usize {
        x.chars()
            .filter(|c| !c.is_control())
            .map(char::len_utf8)
            .sum()
    }
    match v {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(x) => s(x),
        Value::Array(a) => a.iter().map(twin_bytes).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| s(k) + twin_bytes(v)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(modules: Value, hub_ports: Value) -> String {
        let log = serde_json::json!({"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}});
        let opts = |extra: Value| {
            let mut hc = serde_json::json!({"LogConfig": log, "Memory": 268435456u64, "NanoCpus": 500000000u64, "Binds": ["/srv/s:/iotedge/storage"]});
            if let Value::Object(e) = extra {
                hc.as_object_mut().unwrap().extend(e);
            }
            serde_json::json!({"HostConfig": hc}).to_string()
        };
        let env = serde_json::json!({"storageFolder": {"value": "/iotedge/storage"}, "OptimizeForPerformance": {"value": "false"}});
        serde_json::json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5.0", "createOptions": opts(Value::Null)}, "env": env},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5.0", "createOptions": opts(serde_json::json!({"PortBindings": hub_ports}))}, "env": env}
                },
                "modules": modules
            }},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}}
        }})
        .to_string()
    }

    fn rules(text: &str) -> Vec<&'static str> {
        check(text, &CheckSettings::default())
            .findings
            .iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn minimal_manifest_is_clean() {
        assert_eq!(
            rules(&minimal(serde_json::json!({}), serde_json::json!({}))),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn same_port_on_different_host_addresses_or_protocols_is_no_conflict() {
        let hub = serde_json::json!({"443/tcp": [{"HostPort": "443", "HostIp": "10.0.0.1"}], "5000/udp": [{"HostPort": "5000"}]});
        let module = serde_json::json!({"m": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {
            "image": "mcr.microsoft.com/x:1.0.0",
            "createOptions": serde_json::json!({"HostConfig": {"PortBindings": {"443/tcp": [{"HostPort": "443", "HostIp": "10.0.0.2"}], "5000/tcp": [{"HostPort": "5000"}]},
                "LogConfig": {"Type": "journald"}, "Memory": 1u64 << 28, "NanoCpus": 1u64 << 28}}).to_string()}}});
        assert_eq!(rules(&minimal(module.clone(), hub)), Vec::<&str>::new());
        let clash = serde_json::json!({"443/tcp": [{"HostPort": "443", "HostIp": "10.0.0.9"}]});
        let module = serde_json::json!({"m": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {
            "image": "mcr.microsoft.com/x:1.0.0",
            "createOptions": serde_json::json!({"HostConfig": {"PortBindings": {"443/tcp": [{"HostPort": "443"}]},
                "LogConfig": {"Type": "journald"}, "Memory": 1u64 << 28, "NanoCpus": 1u64 << 28}}).to_string()}}});
        assert_eq!(rules(&minimal(module, clash)), vec!["port-conflict"]);
    }

    #[test]
    fn bom_and_crlf_line_endings_are_accepted() {
        let (_, text) = crate::SHIPPED[0];
        let windows = format!("\u{feff}{}", text.replace('\n', "\r\n"));
        assert_eq!(rules(&windows), Vec::<&str>::new());
        // Positions still count lines on CRLF files.
        let broken = windows.replacen(
            "\"schemaVersion\": \"1.1\",",
            "\"schemaVersion\": \"1.1\"",
            1,
        );
        let report = check(&broken, &CheckSettings::default());
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].rule, "json-syntax");
        assert_eq!(report.findings[0].line, Some(6));
    }

    #[test]
    fn twin_size_counts_like_iot_hub() {
        let v = serde_json::json!({"ab": "xyz", "n": 5, "b": true, "o": {"k": "é"}});
        // "ab"+"xyz" = 5, "n"+8 = 9, "b"+4 = 5, "o" + ("k" + 2) = 4
        assert_eq!(twin_bytes(&v), 23);
    }

    #[test]
    fn root_that_is_not_an_object_is_one_finding() {
        assert_eq!(rules("[1, 2]"), vec!["required-section"]);
        assert_eq!(rules("{}"), vec!["required-section"]);
    }

    #[test]
    fn createoptions_object_is_an_error_in_a_manifest_but_fine_in_a_template() {
        let module = |image: &str| {
            serde_json::json!({"m": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {
                "image": image, "createOptions": {"HostConfig": {"LogConfig": {"Type": "journald"}, "Memory": 1u64 << 28, "NanoCpus": 1u64 << 28}}}}})
        };
        assert_eq!(
            rules(&minimal(
                module("mcr.microsoft.com/x:1.0.0"),
                serde_json::json!({})
            )),
            vec!["create-options"]
        );
        assert_eq!(
            rules(&minimal(module("${MODULES.x}"), serde_json::json!({}))),
            Vec::<&str>::new()
        );
    }
}
