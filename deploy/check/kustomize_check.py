#!/usr/bin/env python3
"""Resolve pgsplit's kustomizations without a kustomize binary, and check them.

    kustomize_check.py OUT_DIR KUSTOMIZATION_DIR...

For each kustomization directory this
  * checks that every resource, generator file and patch it names exists, and
    that each patch's target (kind, name) is among the resources it patches;
  * renders it the way kustomize would, simplified: resources of nested
    kustomizations first, ConfigMaps from configMapGenerator (no hash suffix),
    the namespace, strategic-merge patches (maps merge; containers,
    initContainers, volumes, env, imagePullSecrets merge by name, volumeMounts by
    mountPath, ports by containerPort, other lists are replaced; `$patch: delete`
    removes a list element; new elements are appended after the existing ones,
    which is what decides the order of env entries) and `images`;
  * checks the rendered objects: Deployment wiring (selector, port names unique
    in the pod, volume mounts, named probe ports, $(VAR) references defined
    before use), the `restricted` Pod Security Standard for the pod, the
    ServiceMonitor (which kubernetes-validate cannot check: it is a custom
    resource) and the Service it selects, and the PrometheusRule's shape (the
    fields of its CRD; promtool checks the rules themselves, from
    deploy/prometheus/pgsplit-rules.yml, which prometheus_rules.py keeps equal)
    and that its `job="..."` matchers name a job the ServiceMonitor makes;
  * writes each rendered built-in object to OUT_DIR/<kustomization>/<kind>-<name>.yaml
    and custom resources under OUT_DIR/<kustomization>/custom/, and lists the
    source manifests of built-in kinds in OUT_DIR/sources.txt, for
    kubernetes-validate.

Exits 1 with one line per problem. Needs PyYAML only.
"""

import copy
import os
import re
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "patches",
    "images",
}
# Strategic-merge keys of the lists this check merges (from the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
CUSTOM_GROUPS = ("monitoring.coreos.com/",)

errors = []


def fail(msg):
    errors.append(msg)


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def ident(obj):
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name')}"


# ---------------------------------------------------------------- rendering


def merge(base, patch, path):
    """Strategic merge of `patch` into `base` (both plain YAML values)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                fail(f"{path}: directive {key} is not supported by this check")
                continue
            if key in out and value is not None:
                out[key] = merge_field(key, out[key], value, f"{path}.{key}")
            elif value is None:
                out.pop(key, None)
            else:
                out[key] = strip_directives(value, f"{path}.{key}")
        return out
    return strip_directives(patch, path)


def merge_field(key, base, patch, path):
    if key in MERGE_KEYS and isinstance(base, list) and isinstance(patch, list):
        return merge_list(MERGE_KEYS[key], base, patch, path)
    return merge(base, patch, path)


def merge_list(mkey, base, patch, path):
    out = [copy.deepcopy(item) for item in base]
    for item in patch:
        if not isinstance(item, dict) or mkey not in item:
            fail(f"{path}: list element without merge key {mkey!r}: {item!r}")
            continue
        idx = next(
            (i for i, b in enumerate(out) if isinstance(b, dict) and b.get(mkey) == item[mkey]),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is None:
                fail(f"{path}: `$patch: delete` of {mkey}={item[mkey]!r}, which is not there")
            else:
                del out[idx]
            continue
        where = f"{path}[{mkey}={item[mkey]}]"
        if idx is None:
            out.append(strip_directives(item, where))
        else:
            out[idx] = merge(out[idx], item, where)
    return out


def strip_directives(value, path):
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and key.startswith("$"):
                fail(f"{path}: directive {key} left in a new element")
        return {k: strip_directives(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [strip_directives(v, path) for v in value]
    return value


def matches_target(obj, target):
    meta = obj.get("metadata") or {}
    api = obj.get("apiVersion", "")
    if "kind" in target and obj.get("kind") != target["kind"]:
        return False
    if "name" in target and meta.get("name") != target["name"]:
        return False
    if "group" in target and group_of(api) != target["group"]:
        return False
    if "version" in target and api.split("/")[-1] != target["version"]:
        return False
    if "namespace" in target and meta.get("namespace") != target["namespace"]:
        return False
    return True


def split_image(image):
    """name, tag, digest of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return ((obj.get("spec") or {}).get("template") or {}).get("spec")
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    return None


def all_containers(spec):
    for field in ("initContainers", "containers"):
        for c in spec.get(field) or []:
            yield field, c


def apply_images(objs, images, where):
    for rule in images:
        if "name" not in rule:
            fail(f"{where}: images entry without name: {rule!r}")
            continue
        used = False
        for obj in objs:
            spec = pod_spec(obj)
            if spec is None:
                continue
            for _, c in all_containers(spec):
                name, tag, digest = split_image(c.get("image", ""))
                if name != rule["name"]:
                    continue
                used = True
                name = rule.get("newName", name)
                tag = rule.get("newTag", tag)
                digest = rule.get("digest", digest)
                ref = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                c["image"] = ref
        if not used:
            fail(f"{where}: images entry {rule['name']!r} matches no container image")


def render(kdir, stack=()):
    """Objects rendered from the kustomization in `kdir`, plus source files."""
    kdir = os.path.normpath(kdir)
    if kdir in stack:
        fail(f"{kdir}: kustomization cycle through {' -> '.join(stack)}")
        return [], []
    kfile = next(
        (os.path.join(kdir, n) for n in KUSTOMIZATION_FILES if os.path.isfile(os.path.join(kdir, n))),
        None,
    )
    if kfile is None:
        fail(f"{kdir}: no kustomization.yaml")
        return [], []
    docs = load_docs(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        fail(f"{kfile}: expected one YAML mapping")
        return [], []
    k = docs[0]
    for field in k:
        if field not in SUPPORTED_FIELDS:
            fail(f"{kfile}: field {field!r} is not understood by this check (extend kustomize_check.py)")
    if k.get("kind", "Kustomization") != "Kustomization":
        fail(f"{kfile}: kind must be Kustomization")

    objs, sources = [], []
    for res in k.get("resources") or []:
        path = os.path.join(kdir, res)
        if os.path.isdir(path):
            sub_objs, sub_sources = render(path, stack + (kdir,))
            objs += sub_objs
            sources += sub_sources
        elif os.path.isfile(path):
            for doc in load_docs(path):
                if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
                    fail(f"{path}: a document lacks apiVersion, kind or metadata")
                    continue
                objs.append(doc)
            sources.append(path)
        else:
            fail(f"{kfile}: resource {res!r} does not exist")

    for gen in k.get("configMapGenerator") or []:
        data = {}
        for entry in gen.get("files") or []:
            key, _, rel = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
            path = os.path.join(kdir, rel)
            if not os.path.isfile(path):
                fail(f"{kfile}: configMapGenerator {gen.get('name')!r}: file {rel!r} does not exist")
                continue
            with open(path, encoding="utf-8") as f:
                data[key] = f.read()
        for lit in gen.get("literals") or []:
            key, _, value = lit.partition("=")
            data[key] = value
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen.get("name")},
                "data": data,
            }
        )

    ns = k.get("namespace")
    if ns:
        for obj in objs:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = ns

    for i, p in enumerate(k.get("patches") or []):
        where = f"{kfile}: patches[{i}]"
        if "path" in p:
            path = os.path.join(kdir, p["path"])
            if not os.path.isfile(path):
                fail(f"{where}: patch file {p['path']!r} does not exist")
                continue
            pdocs = load_docs(path)
            where = f"{path}"
        elif "patch" in p:
            pdocs = [d for d in yaml.safe_load_all(p["patch"]) if d is not None]
        else:
            fail(f"{where}: neither path nor patch")
            continue
        for pdoc in pdocs:
            if isinstance(pdoc, list):
                fail(f"{where}: JSON 6902 patches are not supported by this check")
                continue
            target = dict(p.get("target") or {})
            if not target:
                target = {"kind": pdoc.get("kind"), "name": (pdoc.get("metadata") or {}).get("name")}
            hits = [o for o in objs if matches_target(o, target)]
            if not hits:
                fail(f"{where}: target {target} is not among the resources")
                continue
            if pdoc.get("kind") and pdoc.get("kind") != target.get("kind", pdoc.get("kind")):
                fail(f"{where}: patch kind {pdoc.get('kind')} differs from target {target}")
            body = {key: v for key, v in pdoc.items() if key not in ("apiVersion", "kind", "metadata")}
            for obj in hits:
                merged = merge(obj, body, f"{where}->{ident(obj)}")
                obj.clear()
                obj.update(merged)

    apply_images(objs, k.get("images") or [], kfile)
    return objs, sources


# ------------------------------------------------------------------- checks

VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def selector_matches(selector, labels):
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_workload(obj, configmaps, where):
    name = ident(obj)
    spec = pod_spec(obj) or {}
    template_labels = ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels")
    if not selector_matches(obj["spec"].get("selector") or {}, template_labels):
        fail(f"{where}: {name}: spec.selector does not match the pod template labels")

    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for v in volumes.values():
        kinds = [key for key in v if key != "name"]
        bad = [key for key in kinds if key not in ALLOWED_VOLUME_TYPES]
        if bad:
            fail(f"{where}: {name}: volume {v['name']!r} of type {bad} is not allowed by the restricted PSS")
        cm = (v.get("configMap") or {}).get("name")
        if cm and cm not in configmaps:
            fail(f"{where}: {name}: volume {v['name']!r} uses ConfigMap {cm!r}, which the kustomization does not make")

    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            fail(f"{where}: {name}: {key} is not allowed by the restricted PSS")
    if psc.get("runAsUser") == 0:
        fail(f"{where}: {name}: pod runAsUser 0")

    port_names, pod_ports = {}, {}
    for field, c in all_containers(spec):
        cname = f"{name} {field}[{c.get('name')}]"
        if field == "containers" and "restartPolicy" in c:
            fail(f"{where}: {cname}: restartPolicy is only valid on initContainers")
        if field == "initContainers" and c.get("restartPolicy") not in (None, "Always"):
            fail(f"{where}: {cname}: restartPolicy must be Always (a native sidecar)")
        own_ports = {}
        for p in c.get("ports") or []:
            pname = p.get("name")
            if pname:
                if pname in port_names:
                    fail(f"{where}: {cname}: port name {pname!r} is also used by {port_names[pname]} (pod port names must be unique)")
                port_names[pname] = c.get("name")
                pod_ports[pname] = own_ports[pname] = p.get("containerPort")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in own_ports:
                fail(f"{where}: {cname}: {probe} uses port {port!r}, which the container does not declare")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                fail(f"{where}: {cname}: volumeMount {m.get('name')!r} has no volume")
        defined = set()
        has_env_from = bool(c.get("envFrom"))
        for e in c.get("env") or []:
            if "value" in e and "valueFrom" in e:
                fail(f"{where}: {cname}: env {e.get('name')} has both value and valueFrom")
            for ref in VAR_REF.findall(str(e.get("value", ""))):
                if ref not in defined and not has_env_from:
                    fail(
                        f"{where}: {cname}: env {e.get('name')} uses $({ref}) before {ref} is defined "
                        "(Kubernetes would leave it unexpanded)"
                    )
            defined.add(e.get("name"))
        for a in (c.get("args") or []) + (c.get("command") or []):
            if re.search(r"(?i)password", str(a)):
                fail(f"{where}: {cname}: a command-line argument mentions a password")

        # The restricted Pod Security Standard (the parts a manifest decides).
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            fail(f"{where}: {cname}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: {cname}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(f"{where}: {cname}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{where}: {cname}: capabilities.add beyond NET_BIND_SERVICE")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            fail(f"{where}: {cname}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser") == 0:
            fail(f"{where}: {cname}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{where}: {cname}: seccompProfile must be RuntimeDefault or Localhost (container or pod)")
    return pod_ports


SM_SPEC_FIELDS = {
    "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints",
    "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets", "labelLimit",
    "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector",
    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeProtocols", "selector",
    "selectorMechanism", "serviceDiscoveryRole", "targetLabels", "targetLimit",
}
SM_ENDPOINT_FIELDS = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "noProxy", "oauth2", "params", "path", "port", "proxyConnectHeader",
    "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme", "scrapeTimeout", "targetPort",
    "tlsConfig", "trackTimestampsStaleness",
}
PROM_DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")
DURATION_MS = {"y": 365 * 86400000, "w": 7 * 86400000, "d": 86400000, "h": 3600000, "m": 60000, "s": 1000, "ms": 1}


def duration_ms(text):
    return sum(int(n) * DURATION_MS[u] for n, u in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", text))


def operator_spec(obj, allowed, where):
    """The header every Prometheus Operator resource shares (apiVersion,
    metadata.name, spec with only `allowed` keys): its name and spec, or
    None for the spec when there is none to check further."""
    name = ident(obj)
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"{where}: {name}: apiVersion must be monitoring.coreos.com/v1")
    if not (obj.get("metadata") or {}).get("name"):
        fail(f"{where}: {name}: metadata.name is required")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        fail(f"{where}: {name}: spec is required")
        return name, None
    for key in spec:
        if key not in allowed:
            fail(f"{where}: {name}: unknown field spec.{key}")
    return name, spec


def check_servicemonitor(sm, services, workloads, where):
    name, spec = operator_spec(sm, SM_SPEC_FIELDS, where)
    if spec is None:
        return
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        fail(f"{where}: {name}: spec.selector with matchLabels or matchExpressions is required")
        return
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        fail(f"{where}: {name}: spec.endpoints must be a non-empty list")
        return
    for i, ep in enumerate(endpoints):
        for key in ep:
            if key not in SM_ENDPOINT_FIELDS:
                fail(f"{where}: {name}: unknown field spec.endpoints[{i}].{key}")
        if ep.get("port") != "http":
            fail(f"{where}: {name}: endpoints[{i}].port must be 'http', is {ep.get('port')!r}")
        if ep.get("path", "/metrics") != "/metrics":
            fail(f"{where}: {name}: endpoints[{i}].path must be /metrics")
        if ep.get("scheme", "http") not in ("http", "https"):
            fail(f"{where}: {name}: endpoints[{i}].scheme must be http or https")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not PROM_DURATION.match(str(ep[key])):
                fail(f"{where}: {name}: endpoints[{i}].{key} {ep[key]!r} is not a Prometheus duration")
        if "interval" in ep and "scrapeTimeout" in ep and duration_ms(ep["scrapeTimeout"]) > duration_ms(ep["interval"]):
            fail(f"{where}: {name}: endpoints[{i}].scrapeTimeout exceeds interval")

    ns_sel = spec.get("namespaceSelector") or {}
    sm_ns = (sm.get("metadata") or {}).get("namespace")
    selected = [
        s
        for s in services
        if selector_matches(selector, (s.get("metadata") or {}).get("labels"))
        and (
            ns_sel.get("any")
            or (s["metadata"].get("namespace") in ns_sel["matchNames"] if ns_sel.get("matchNames") else s["metadata"].get("namespace") == sm_ns)
        )
    ]
    if not selected:
        fail(f"{where}: {name}: spec.selector matches no Service of the kustomization")
        return
    for svc in selected:
        sname = ident(svc)
        port = next((p for p in svc["spec"].get("ports") or [] if p.get("name") == "http"), None)
        if port is None:
            fail(f"{where}: {sname}: no port named 'http' for {name}")
            continue
        pods = [
            (w, ports)
            for w, ports in workloads
            if selector_matches({"matchLabels": svc["spec"].get("selector") or {}},
                                ((w["spec"].get("template") or {}).get("metadata") or {}).get("labels"))
        ]
        if not svc["spec"].get("selector") or not pods:
            fail(f"{where}: {sname}: its selector matches no pod template of the kustomization")
            continue
        target = port.get("targetPort", port.get("port"))
        for w, ports in pods:
            if isinstance(target, str) and target not in ports:
                fail(f"{where}: {sname}: targetPort {target!r} is not a port of {ident(w)}")
            if isinstance(target, int) and target not in ports.values():
                fail(f"{where}: {sname}: targetPort {target} is not a port of {ident(w)}")


PR_GROUP_FIELDS = {"interval", "labels", "limit", "name", "partial_response_strategy", "query_offset", "rules"}
PR_RULE_FIELDS = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}
JOB_MATCHER = re.compile(r'\bjob\s*=\s*"([^"]*)"')


def string_map(value):
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def check_prometheusrule(pr, services, monitors, where):
    """The fields of the PrometheusRule CRD (monitoring.coreos.com/v1), strict."""
    name, spec = operator_spec(pr, {"groups"}, where)
    if spec is None:
        return
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        fail(f"{where}: {name}: spec.groups must be a non-empty list")
        return
    # Jobs the ServiceMonitors make: the Service's name, or its jobLabel's value.
    jobs = set()
    for sm in monitors:
        sm_spec = sm.get("spec") or {}
        for svc in services:
            labels = (svc.get("metadata") or {}).get("labels") or {}
            if selector_matches(sm_spec.get("selector") or {}, labels):
                job_label = sm_spec.get("jobLabel")
                jobs.add(labels.get(job_label) if job_label else svc["metadata"].get("name"))
    seen = set()
    for i, g in enumerate(groups):
        at = f"spec.groups[{i}]"
        if not isinstance(g, dict):
            fail(f"{where}: {name}: {at} is not a mapping")
            continue
        for key in g:
            if key not in PR_GROUP_FIELDS:
                fail(f"{where}: {name}: unknown field {at}.{key}")
        if not isinstance(g.get("name"), str) or not g.get("name"):
            fail(f"{where}: {name}: {at}.name is required")
        elif g["name"] in seen:
            fail(f"{where}: {name}: group name {g['name']!r} is used twice (a list map keyed by name)")
        seen.add(g.get("name"))
        for key in ("interval", "query_offset"):
            if key in g and not PROM_DURATION.match(str(g[key])):
                fail(f"{where}: {name}: {at}.{key} {g[key]!r} is not a Prometheus duration")
        if "limit" in g and not isinstance(g["limit"], int):
            fail(f"{where}: {name}: {at}.limit must be an integer")
        if "labels" in g and not string_map(g["labels"]):
            fail(f"{where}: {name}: {at}.labels must map strings to strings")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            fail(f"{where}: {name}: {at}.rules must be a non-empty list")
            continue
        for j, r in enumerate(rules):
            rat = f"{at}.rules[{j}]"
            if not isinstance(r, dict):
                fail(f"{where}: {name}: {rat} is not a mapping")
                continue
            for key in r:
                if key not in PR_RULE_FIELDS:
                    fail(f"{where}: {name}: unknown field {rat}.{key}")
            if ("alert" in r) == ("record" in r):
                fail(f"{where}: {name}: {rat} must have exactly one of alert and record")
            if not isinstance(r.get("expr"), (str, int)) or r.get("expr") == "":
                fail(f"{where}: {name}: {rat}.expr is required (a string)")
            for key in ("for", "keep_firing_for"):
                if key in r and not PROM_DURATION.match(str(r[key])):
                    fail(f"{where}: {name}: {rat}.{key} {r[key]!r} is not a Prometheus duration")
            for key in ("labels", "annotations"):
                if key in r and not string_map(r[key]):
                    fail(f"{where}: {name}: {rat}.{key} must map strings to strings (quote other values)")
            if "annotations" in r and "record" in r:
                fail(f"{where}: {name}: {rat}: annotations are only for alerting rules")
            for job in JOB_MATCHER.findall(str(r.get("expr", ""))):
                if job not in jobs:
                    fail(
                        f"{where}: {name}: {rat} ({r.get('alert') or r.get('record')}) matches job={job!r}, "
                        f"but the ServiceMonitors here make the jobs {sorted(jobs)}"
                    )


def check_network_policies(policies, workloads, where):
    """The policy that admits Prometheus must open each pod's admin port."""
    for w, ports in workloads:
        admin = ports.get("http")
        if admin is None:
            continue
        labels = ((w["spec"].get("template") or {}).get("metadata") or {}).get("labels")
        ingress = [p for p in policies if "Ingress" in (p["spec"].get("policyTypes") or []) and selector_matches(p["spec"].get("podSelector") or {}, labels)]
        if not ingress:
            continue
        opened = {
            port.get("port")
            for p in ingress
            for rule in p["spec"].get("ingress") or []
            for port in rule.get("ports") or []
        }
        if admin not in opened and "http" not in opened:
            fail(f"{where}: {ident(w)}: NetworkPolicies isolate it for ingress but do not open the admin port {admin}")


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out_dir, kdirs = argv[1], argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    all_sources = []
    for kdir in kdirs:
        start = len(errors)
        objs, sources = render(kdir)
        label = os.path.relpath(os.path.normpath(kdir)).replace(os.sep, "_").strip("._") or "root"
        configmaps = {o["metadata"]["name"] for o in objs if o.get("kind") == "ConfigMap"}
        services = [o for o in objs if o.get("kind") == "Service"]
        policies = [o for o in objs if o.get("kind") == "NetworkPolicy"]
        workloads = [(o, check_workload(o, configmaps, kdir)) for o in objs if pod_spec(o) is not None]
        for sm in (o for o in objs if o.get("kind") == "ServiceMonitor"):
            check_servicemonitor(sm, services, workloads, kdir)
        monitors = [o for o in objs if o.get("kind") == "ServiceMonitor"]
        for pr in (o for o in objs if o.get("kind") == "PrometheusRule"):
            check_prometheusrule(pr, services, monitors, kdir)
        check_network_policies(policies, workloads, kdir)
        if not any(
            c.get("image", "").split("/")[-1].startswith("pgsplit")
            for w, _ in workloads
            for _, c in all_containers(pod_spec(w))
        ):
            fail(f"{kdir}: no workload runs the pgsplit image")

        dest = os.path.join(out_dir, label)
        os.makedirs(os.path.join(dest, "custom"), exist_ok=True)
        for obj in objs:
            custom = obj.get("apiVersion", "").startswith(CUSTOM_GROUPS)
            fname = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            with open(os.path.join(dest, "custom" if custom else "", fname), "w", encoding="utf-8") as f:
                yaml.safe_dump(obj, f, sort_keys=False)
            if pod_spec(obj) is not None:
                print(f"  rendered {kdir} -> {os.path.join(dest, fname)}")
        for src in sources:
            if not any(d.get("apiVersion", "").startswith(CUSTOM_GROUPS) for d in load_docs(src)):
                all_sources.append(src)
        status = "ok" if len(errors) == start else f"{len(errors) - start} problem(s)"
        print(f"  {kdir}: {len(objs)} objects, {status}")
    with open(os.path.join(out_dir, "sources.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{s}\n" for s in dict.fromkeys(all_sources)))
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
