//! The Kubernetes manifests under `deploy/kubernetes` keep what issue 6 requires
//! of the pgsplit sidecar, so that a later edit cannot silently drop it: the
//! restricted security context, probes on the admin port `http`, credentials
//! only from the Secret, resources, a grace period covering the drain, the
//! backend's DATABASE_URL on the sidecar, and a config that pgsplit itself
//! accepts with the environment the pod gives it. `deploy/check/validate.sh`
//! checks the rest (schemas, kustomize resolution, lint, Dockerfile).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgsplit::config::{Config, Overrides, ServerUrl, SslMode};
use serde::Deserialize;
use serde_norway::Value;

const SECRET: &str = "portfolio-secrets";
const SECRET_KEY: &str = "POSTGRES_PASSWORD";
/// Time between the end of pgsplit's drain and the kubelet's SIGKILL.
const GRACE_MARGIN: Duration = Duration::from_secs(10);

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(rel: &str) -> String {
    let path = k8s_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `v[a][b]...`, or a panic naming the missing path.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("missing {}", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn pod_spec(patch: &Value) -> &Value {
    at(patch, &["spec", "template", "spec"])
}

/// The pgsplit container of the classic form (base) and the native form (overlay).
fn classic() -> (Value, Value) {
    let patch = yaml("base/pgsplit-sidecar-patch.yaml");
    let c = named(list(pod_spec(&patch), "containers"), "pgsplit")
        .expect("base patch: containers[pgsplit]")
        .clone();
    (patch, c)
}

fn native() -> (Value, Value) {
    let patch = yaml("overlays/native-sidecar/native-sidecar-patch.yaml");
    let c = named(list(pod_spec(&patch), "initContainers"), "pgsplit")
        .expect("overlay patch: initContainers[pgsplit]")
        .clone();
    (patch, c)
}

/// The container's environment as the kubelet would hand it to the process:
/// literal values with `$(VAR)` expanded from earlier entries, and Secret
/// references resolved with `secret_value`.
fn container_env(c: &Value, secret_value: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in list(c, "env") {
        let name = str_at(e, &["name"]).to_owned();
        let value = if let Some(v) = e.get("value") {
            let mut text = v.as_str().expect("env value is a string").to_owned();
            for (k, val) in &env {
                text = text.replace(&format!("$({k})"), val);
            }
            assert!(
                !text.contains("$("),
                "env {name}: {text:?} refers to a variable not defined before it"
            );
            text
        } else {
            let r = at(e, &["valueFrom", "secretKeyRef"]);
            assert_eq!(str_at(r, &["name"]), SECRET, "env {name}");
            assert_eq!(str_at(r, &["key"]), SECRET_KEY, "env {name}");
            secret_value.to_owned()
        };
        env.push((name, value));
    }
    env
}

fn env_value<'a>(c: &'a Value, name: &str) -> &'a str {
    let e = named(list(c, "env"), name).unwrap_or_else(|| panic!("env {name} is missing"));
    str_at(e, &["value"])
}

fn pod_config(c: &Value) -> Config {
    let env = container_env(c, "s3cret-from-the-secret");
    Config::from_toml_str(&read("base/pgsplit.toml"), env, &Overrides::default())
        .unwrap_or_else(|e| panic!("pgsplit refuses the pod's config: {e}"))
}

fn assert_hardened(c: &Value, form: &str) {
    let sc = at(c, &["securityContext"]);
    let flag = |k: &str| sc.get(k).and_then(Value::as_bool);
    assert_eq!(flag("runAsNonRoot"), Some(true), "{form}: runAsNonRoot");
    assert_eq!(
        flag("readOnlyRootFilesystem"),
        Some(true),
        "{form}: readOnlyRootFilesystem"
    );
    assert_eq!(
        flag("allowPrivilegeEscalation"),
        Some(false),
        "{form}: allowPrivilegeEscalation"
    );
    assert_ne!(flag("privileged"), Some(true), "{form}: privileged");
    let drop: Vec<&str> = list(at(sc, &["capabilities"]), "drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(drop.contains(&"ALL"), "{form}: capabilities.drop {drop:?}");
    assert!(
        list(at(sc, &["capabilities"]), "add").is_empty(),
        "{form}: no capability is added"
    );
    assert_eq!(
        str_at(sc, &["seccompProfile", "type"]),
        "RuntimeDefault",
        "{form}: seccompProfile"
    );
    if let Some(uid) = sc.get("runAsUser") {
        assert_ne!(uid.as_u64(), Some(0), "{form}: runAsUser");
    }
}

fn assert_probes(c: &Value, form: &str) {
    let port = named(list(c, "ports"), "http").unwrap_or_else(|| panic!("{form}: port http"));
    assert_eq!(
        at(port, &["containerPort"]).as_u64(),
        Some(9930),
        "{form}: admin port"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(c, &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), path, "{form}: {probe} path");
        assert_eq!(
            str_at(get, &["port"]),
            "http",
            "{form}: {probe} on the port named http"
        );
    }
}

fn assert_resources(c: &Value, form: &str) {
    let r = at(c, &["resources"]);
    for key in [
        ["requests", "cpu"],
        ["requests", "memory"],
        ["limits", "memory"],
    ] {
        let v = at(r, &key);
        assert!(
            v.as_str().is_some_and(|s| !s.is_empty()) || v.as_u64().is_some(),
            "{form}: resources.{}",
            key.join(".")
        );
    }
    let mib = |q: &str| -> u64 {
        let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("{form}: quantity {q:?}"));
        match unit {
            "Mi" => n,
            "Gi" => n * 1024,
            _ => panic!("{form}: write memory in Mi or Gi, not {q:?}"),
        }
    };
    let request = mib(str_at(r, &["requests", "memory"]));
    let limit = mib(str_at(r, &["limits", "memory"]));
    assert!(
        request <= limit,
        "{form}: memory request {request}Mi above limit {limit}Mi"
    );
}

/// Secrets reach pgsplit through the environment, from the Secret, never the
/// command line; every URL's password is a `$(VAR)` reference.
fn assert_credentials(c: &Value, form: &str) {
    let pw = named(list(c, "env"), SECRET_KEY)
        .unwrap_or_else(|| panic!("{form}: env {SECRET_KEY} from the Secret"));
    assert_eq!(str_at(pw, &["valueFrom", "secretKeyRef", "name"]), SECRET);
    assert_eq!(
        str_at(pw, &["valueFrom", "secretKeyRef", "key"]),
        SECRET_KEY
    );
    assert!(
        env_value(c, "PGSPLIT_PRIMARY").contains(&format!(":$({SECRET_KEY})@")),
        "{form}: PGSPLIT_PRIMARY takes its password from {SECRET_KEY}"
    );
    for arg in list(c, "args").iter().chain(list(c, "command")) {
        let arg = arg.as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(
            !arg.contains("password") && !arg.contains("://"),
            "{form}: no credentials or URLs on the command line: {arg:?}"
        );
    }
}

#[test]
fn classic_sidecar_keeps_its_guarantees() {
    let (_, c) = classic();
    assert_hardened(&c, "classic");
    assert_probes(&c, "classic");
    assert_resources(&c, "classic");
    assert_credentials(&c, "classic");
    assert!(
        c.get("restartPolicy").is_none(),
        "restartPolicy belongs to the native form"
    );
}

#[test]
fn native_sidecar_is_the_classic_one_started_first() {
    let (patch, n) = native();
    assert_hardened(&n, "native");
    assert_probes(&n, "native");
    assert_resources(&n, "native");
    assert_credentials(&n, "native");
    assert_eq!(str_at(&n, &["restartPolicy"]), "Always");
    let startup = at(&n, &["startupProbe", "httpGet"]);
    assert_eq!(str_at(startup, &["path"]), "/healthz");
    assert_eq!(str_at(startup, &["port"]), "http");
    // The overlay removes the classic container it replaces.
    let removed = named(list(pod_spec(&patch), "containers"), "pgsplit")
        .expect("overlay: containers[pgsplit] with $patch: delete");
    assert_eq!(str_at(removed, &["$patch"]), "delete");
    // Apart from what makes it native, the two forms are the same container.
    let (_, c) = classic();
    let mut n = n.as_mapping().expect("container is a mapping").clone();
    n.remove("restartPolicy");
    n.remove("startupProbe");
    assert_eq!(
        &n,
        c.as_mapping().expect("container is a mapping"),
        "base/pgsplit-sidecar-patch.yaml and the native overlay disagree on the pgsplit container"
    );
}

#[test]
fn pgsplit_accepts_the_pod_config_and_reaches_both_servers_with_verify_full() {
    for (form, c) in [("classic", classic().1), ("native", native().1)] {
        let config = pod_config(&c);
        assert_eq!(config.listen.to_string(), "127.0.0.1:6432", "{form}");
        assert!(
            config.admin_listen.ip().is_unspecified(),
            "{form}: admin on all interfaces"
        );
        assert_eq!(config.admin_listen.port(), 9930, "{form}");
        let servers = std::iter::once(&config.primary).chain(&config.replicas);
        let hosts: Vec<String> = servers.clone().map(ServerUrl::addr).collect();
        assert_eq!(
            hosts,
            [
                "postgres-primary.portfolio.svc:5432",
                "postgres-replica.portfolio.svc:5432"
            ],
            "{form}"
        );
        // The CA comes from a Secret volume mounted into the container.
        let mounts = list(&c, "volumeMounts");
        // Volumes are the base patch's in both forms (the overlay adds none).
        let base = yaml("base/pgsplit-sidecar-patch.yaml");
        let volumes = list(pod_spec(&base), "volumes");
        for s in servers {
            assert_eq!(s.sslmode, SslMode::VerifyFull, "{form}: {}", s.addr());
            assert_eq!(
                s.password.as_deref(),
                Some("s3cret-from-the-secret"),
                "{form}: {}",
                s.addr()
            );
            let ca = s.sslrootcert.as_deref().expect("sslrootcert");
            let mount = mounts
                .iter()
                .find(|m| ca.starts_with(&format!("{}/", str_at(m, &["mountPath"]))))
                .unwrap_or_else(|| panic!("{form}: {ca} is not under a volume mount"));
            let volume = named(volumes, str_at(mount, &["name"])).expect("mounted volume");
            assert!(
                volume.get("secret").is_some(),
                "{form}: the server CA comes from a Secret"
            );
        }
        // The config file is the ConfigMap that kustomize generates from pgsplit.toml.
        let args: Vec<&str> = list(&c, "args").iter().filter_map(Value::as_str).collect();
        let pos = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let file = args[pos + 1];
        let mount = mounts
            .iter()
            .find(|m| file == format!("{}/pgsplit.toml", str_at(m, &["mountPath"])))
            .unwrap_or_else(|| panic!("{form}: {file} is not pgsplit.toml in a mount"));
        let volume = named(volumes, str_at(mount, &["name"])).expect("mounted volume");
        assert_eq!(str_at(volume, &["configMap", "name"]), "pgsplit");
    }
    let kustomization = yaml("base/kustomization.yaml");
    let generator = named(list(&kustomization, "configMapGenerator"), "pgsplit")
        .expect("configMapGenerator pgsplit");
    assert_eq!(list(generator, "files"), [Value::from("pgsplit.toml")]);
}

#[test]
fn grace_period_covers_the_drain() {
    let (patch, c) = classic();
    let grace = at(pod_spec(&patch), &["terminationGracePeriodSeconds"])
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = pod_config(&c).limits.shutdown_grace;
    assert!(
        Duration::from_secs(grace) >= drain + GRACE_MARGIN,
        "terminationGracePeriodSeconds {grace}s < shutdown_grace {drain:?} + {GRACE_MARGIN:?}"
    );
}

#[test]
fn backend_database_url_points_at_the_sidecar() {
    let (patch, c) = classic();
    let backend = named(list(pod_spec(&patch), "containers"), "backend")
        .expect("base patch: containers[backend]");
    let env = container_env(backend, "pw");
    let url = &env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .expect("DATABASE_URL")
        .1;
    let url = ServerUrl::parse(url).unwrap_or_else(|e| panic!("DATABASE_URL: {e}"));
    assert_eq!(
        url.addr(),
        "127.0.0.1:6432",
        "the backend must talk to its sidecar"
    );
    assert_eq!(
        url.password.as_deref(),
        Some("pw"),
        "password from the Secret"
    );
    // pgsplit authenticates clients with its primary URL's credentials.
    let config = pod_config(&c);
    assert_eq!(
        url.user, config.primary.user,
        "same user as pgsplit's primary"
    );
    assert_eq!(url.dbname, config.primary.dbname, "same database");
    // The old DATABASE_URL is deleted first, so the new entry comes after
    // POSTGRES_PASSWORD in the rendered container.
    let delete = yaml("base/backend-env-patch.yaml");
    let backend = named(list(pod_spec(&delete), "containers"), "backend").expect("backend");
    let entry = named(list(backend, "env"), "DATABASE_URL").expect("DATABASE_URL");
    assert_eq!(str_at(entry, &["$patch"]), "delete");
    let kustomization = yaml("base/kustomization.yaml");
    let order: Vec<&str> = list(&kustomization, "patches")
        .iter()
        .map(|p| str_at(p, &["path"]))
        .collect();
    assert_eq!(
        order,
        ["backend-env-patch.yaml", "pgsplit-sidecar-patch.yaml"]
    );
}

/// No manifest holds a password: every `postgres://user:password@` has a
/// `$(VAR)` as its password, and nothing sets a password-like env literally.
#[test]
fn no_password_literal_in_any_manifest() {
    let mut files = Vec::new();
    let mut dirs = vec![k8s_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/kubernetes") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "found only {files:?}");
    let mut urls = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read manifest");
        let name = path.display().to_string();
        for (i, _) in text.match_indices("://") {
            let rest = &text[i + 3..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(rest.len());
            let Some((userinfo, _)) = rest[..end].split_once('@') else {
                continue;
            };
            if let Some((_, pw)) = userinfo.split_once(':') {
                assert!(
                    pw.starts_with("$(") && pw.ends_with(')'),
                    "{name}: a URL carries a literal password"
                );
            }
            urls += 1;
        }
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in serde_norway::Deserializer::from_str(&text) {
                let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
                walk_env(&doc, &name);
            }
        }
    }
    assert!(urls > 0, "no URL with credentials was checked");
}

fn walk_env(v: &Value, file: &str) {
    match v {
        Value::Mapping(m) => {
            if let Some(env) = m.get("env").and_then(Value::as_sequence) {
                for e in env {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
                    let upper = name.to_ascii_uppercase();
                    if ["PASSWORD", "SECRET", "TOKEN"]
                        .iter()
                        .any(|w| upper.contains(w))
                    {
                        assert!(
                            e.get("value").is_none(),
                            "{file}: env {name} is set literally; take it from a Secret"
                        );
                    }
                }
            }
            m.values().for_each(|x| walk_env(x, file));
        }
        Value::Sequence(s) => s.iter().for_each(|x| walk_env(x, file)),
        _ => {}
    }
}
