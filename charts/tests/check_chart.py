#!/usr/bin/env python3
"""Tests of charts/trident: values -> manifests, run by scripts/check-chart.sh.

Renders the chart with the Helm-subset renderer (charts/tools/render) for each values file
under charts/tests/values, validates every manifest against the Kubernetes schemas of
kubernetes-validate (strict), the ServiceMonitor against a vendored CRD subset, and asserts
facts that tie the output to trident's sources: models.json keys from src/config/models.rs,
setting names from src/config/settings.rs, routes from src/gateway/mod.rs, the user id and
writable paths from docker/Dockerfile, the dashboards from monitoring/grafana/dashboards.
Negative cases must fail to render with a message naming the problem. Ends with
`check-chart: N passed, M failed`.
"""

import argparse
import base64
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBE_VERSIONS = ["1.31.0", "1.37.0"]


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, case, what, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL [{case}] {what}" + (f": {detail}" if detail else ""))
        return ok


class Repo:
    """Facts read from trident's own sources, so the chart is checked against the code."""

    def __init__(self, root: Path):
        self.root = root
        models_rs = (root / "src/config/models.rs").read_text()
        block = re.search(r"pub const ENTRY_KEYS: &\[&str\] = &\[(.*?)\];", models_rs, re.S)
        self.entry_keys = set(re.findall(r'"(\w+)"', block.group(1)))
        settings_rs = (root / "src/config/settings.rs").read_text()
        body = re.search(r"pub struct Settings \{(.*?)\n\}", settings_rs, re.S).group(1)
        self.settings = set(re.findall(r"^\s*pub (\w+):", body, re.M))
        self.default_port = int(re.search(r"^\s*port: (\d+),", settings_rs, re.M).group(1))
        gateway = (root / "src/gateway/mod.rs").read_text()
        self.routes = set(re.findall(r'\.route\("([^"]+)"', gateway))
        dockerfile = (root / "docker/Dockerfile").read_text()
        self.uid = int(re.search(r"--uid (\d+)", dockerfile).group(1))
        # Paths the image hands to its user: what trident writes (the generated key file).
        self.writable = set(re.findall(r"chown \d+:\d+ (\S+)", dockerfile)) | {"/tmp"}
        compose = yaml.safe_load((root / "compose.yaml").read_text())
        image = compose["services"]["trident"]["image"]
        self.image = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", image)
        self.metrics_port = int(compose["services"]["trident"]["environment"]["TRIDENT_METRICS_PORT"])
        self.models_json = json.loads((root / "config/models.json").read_text())
        cargo = (root / "Cargo.toml").read_text()
        self.version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)


def merge(dst, src):
    """Helm's coalescing: maps merge, anything else replaces, null deletes."""
    out = copy.deepcopy(dst)
    for k, v in src.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def camel_to_snake(k):
    return re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower()


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    return found[0] if len(found) == 1 else None


class Chart:
    def __init__(self, root: Path, renderer: str):
        self.root = root
        self.dir = root / "charts/trident"
        self.renderer = renderer
        self.defaults = yaml.safe_load((self.dir / "values.yaml").read_text())

    def render(self, files=(), sets=(), notes=False):
        cmd = [self.renderer]
        for f in files:
            cmd += ["-f", str(f)]
        for s in sets:
            cmd += ["--set", s]
        if notes:
            cmd.append("--notes")
        cmd.append(str(self.dir))
        p = subprocess.run(cmd, capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    def values(self, files=(), sets=()):
        v = self.defaults
        for f in files:
            v = merge(v, yaml.safe_load(Path(f).read_text()) or {})
        for s in sets:
            key, raw = s.split("=", 1)
            val = int(raw) if raw.isdigit() else raw
            cur = {}
            node = cur
            parts = key.split(".")
            for p in parts[:-1]:
                node[p] = {}
                node = node[p]
            node[parts[-1]] = val
            v = merge(v, cur)
        return v


def validate_schemas(c, case, docs, sm_schema):
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            errs = sorted(jsonschema.Draft7Validator(sm_schema).iter_errors(d), key=str)
            c.check(case, f"{name} matches the vendored ServiceMonitor schema", not errs,
                    "; ".join(e.message for e in errs[:3]))
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
                ok, detail = True, ""
            except Exception as e:  # ValidationError, SchemaNotFoundError
                ok, detail = False, str(e).splitlines()[0]
            c.check(case, f"{name} valid for Kubernetes {version} (strict)", ok, detail)


def check_common(c, case, repo, chart, docs, text, values):
    kinds = [d.get("kind") for d in docs]
    for k in ["ConfigMap", "Service", "Deployment", "ServiceAccount"]:
        c.check(case, f"renders a {k}", k in kinds, str(kinds))
    dep = one(docs, "Deployment")
    if not dep:
        return
    pod = dep["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}

    # Same image as compose (CUDA tag when GPUs are asked for).
    gpus = sum(int(m.get("gpus", 0) or 0) for m in values["models"])
    repo_name, tag = repo.image.rsplit(":", 1)
    want_image = f"{repo_name}:{tag}-cuda" if gpus and not values["image"]["tag"] else \
        f"{values['image']['repository']}:{values['image']['tag'] or tag}"
    c.check(case, "image is compose's image", ctr["image"] == want_image, f"{ctr['image']} != {want_image}")
    c.check(case, "container runs `serve`", ctr.get("args") == ["serve"], str(ctr.get("args")))

    # Security context.
    sc, psc = ctr.get("securityContext", {}), pod.get("securityContext", {})
    c.check(case, "readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True)
    c.check(case, "no privilege escalation", sc.get("allowPrivilegeEscalation") is False)
    c.check(case, "capabilities drop ALL", sc.get("capabilities", {}).get("drop") == ["ALL"], str(sc))
    c.check(case, "runAsNonRoot", psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True)
    c.check(case, "runs as the image's user", psc.get("runAsUser") == repo.uid, str(psc.get("runAsUser")))
    c.check(case, "seccomp RuntimeDefault", psc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
    c.check(case, "no service account token", pod.get("automountServiceAccountToken") is False)

    # Every path trident writes is a writable volume; everything else mounted is read-only.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    for p in sorted(repo.writable):
        m = mounts.get(p)
        ok = m is not None and not m.get("readOnly") and "emptyDir" in vols[m["name"]]
        c.check(case, f"{p} is a writable emptyDir", ok, str(m))
    for p, m in mounts.items():
        if "emptyDir" not in vols[m["name"]]:
            c.check(case, f"{p} mounted read-only", m.get("readOnly") is True)

    # Probes on real routes and the real port.
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    c.check(case, "API port is trident's default port", ports.get("http") == repo.default_port, str(ports))
    c.check(case, "TRIDENT_PORT matches the container port", env.get("TRIDENT_PORT") == str(ports.get("http")))
    for probe, path in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")]:
        pr = ctr.get(probe, {})
        get = pr.get("httpGet", {})
        c.check(case, f"{probe} GETs {path}", get.get("path") == path and path in repo.routes, str(get))
        c.check(case, f"{probe} on the API port", get.get("port") == "http")
    st = ctr.get("startupProbe", {})
    c.check(case, "startupProbe allows >= 10 min for loading",
            st.get("periodSeconds", 0) * st.get("failureThreshold", 0) >= 600, str(st))
    c.check(case, "terminationGracePeriodSeconds > drain (25 s)", pod.get("terminationGracePeriodSeconds", 0) > 25)

    # Service ports.
    svc = one(docs, "Service")
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    c.check(case, "Service http 8000 -> http", sports.get("http", {}).get("port") == 8000
            and sports["http"].get("targetPort") == "http", str(sports))
    if values["metrics"]["port"]:
        c.check(case, "Service metrics 9100 -> metrics", sports.get("metrics", {}).get("port") == repo.metrics_port
                and sports["metrics"].get("targetPort") == "metrics", str(sports))
        c.check(case, "TRIDENT_METRICS_PORT = metrics container port",
                env.get("TRIDENT_METRICS_PORT") == str(ports.get("metrics")), str(env))
    sel = svc["spec"]["selector"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c.check(case, "Service selects the pods", all(labels.get(k) == v for k, v in sel.items()), str(sel))

    # Every TRIDENT_* variable names a real setting (others would be ignored silently).
    for name in env:
        if name.startswith("TRIDENT_"):
            c.check(case, f"{name} is a trident setting", name[8:].lower() in repo.settings)
    for k, v in (values.get("settings") or {}).items():
        want = ",".join(v) if isinstance(v, list) else str(v)
        c.check(case, f"settings.{k} -> TRIDENT_{k.upper()}", env.get(f"TRIDENT_{k.upper()}") == want,
                str(env.get(f"TRIDENT_{k.upper()}")))

    # models.json: parses, trident's key names only, and it says what the values say.
    cm = [d for d in by_kind(docs, "ConfigMap") if "models.json" in d.get("data", {})]
    ok = c.check(case, "one ConfigMap with models.json", len(cm) == 1)
    if not ok:
        return
    try:
        mj = json.loads(cm[0]["data"]["models.json"])
    except ValueError as e:
        c.check(case, "models.json parses", False, str(e))
        return
    c.check(case, "models.json has only the key models", list(mj) == ["models"])
    cfg_vol = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm[0]["metadata"]["name"]]
    c.check(case, "models.json mounted at /app/config", bool(cfg_vol)
            and mounts.get("/app/config", {}).get("name") == cfg_vol[0]["name"])
    entries = mj["models"]
    c.check(case, "one entry per model", sorted(entries) == sorted(m["name"] for m in values["models"]),
            str(sorted(entries)))
    used_ports = {repo.default_port, repo.metrics_port}
    next_gpu = 0
    for m in values["models"]:
        e = entries.get(m["name"], {})
        unknown = set(e) - repo.entry_keys
        c.check(case, f"{m['name']}: keys are models.rs ENTRY_KEYS", not unknown, str(unknown))
        c.check(case, f"{m['name']}: type", e.get("type") == m["type"] and e["type"] in ("chat", "embedding", "rerank"))
        for k, v in m.items():
            if k in ("name", "type", "path", "storage", "gpus", "port", "device"):
                continue
            jk = "name" if k == "displayName" else camel_to_snake(k)
            c.check(case, f"{m['name']}: {k} -> {jk}", e.get(jk) == v, f"{e.get(jk)!r} != {v!r}")
        if m.get("storage"):
            st = m["storage"]
            mount = f"/app/models/{m['name']}"
            c.check(case, f"{m['name']}: path inside its volume",
                    e.get("path") == mount + (f"/{m['path']}" if m.get("path") else ""), str(e.get("path")))
            vm = mounts.get(mount)
            claim = st.get("existingClaim") or f"{dep['metadata']['name']}-{m['name']}"
            c.check(case, f"{m['name']}: claim {claim} mounted read-only at {mount}", vm is not None
                    and vols[vm["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim
                    and vm.get("readOnly") is True, str(vm))
            pvcs = [p for p in by_kind(docs, "PersistentVolumeClaim") if p["metadata"]["name"] == claim]
            if st.get("existingClaim"):
                c.check(case, f"{m['name']}: existing claim not created", not pvcs)
            else:
                ok = c.check(case, f"{m['name']}: claim created", len(pvcs) == 1)
                if ok:
                    spec = pvcs[0]["spec"]
                    c.check(case, f"{m['name']}: claim size", spec["resources"]["requests"]["storage"] == st["size"])
                    if st.get("storageClass"):
                        c.check(case, f"{m['name']}: storageClass", spec.get("storageClassName") == st["storageClass"])
        else:
            c.check(case, f"{m['name']}: path as given", e.get("path") == m.get("path"))
        n = int(m.get("gpus", 0) or 0)
        if n:
            c.check(case, f"{m['name']}: gpus {n} -> indices", e.get("gpus") == list(range(next_gpu, next_gpu + n)),
                    str(e.get("gpus")))
            c.check(case, f"{m['name']}: device cuda", e.get("device") == "cuda")
            next_gpu += n
        else:
            c.check(case, f"{m['name']}: no gpus", "gpus" not in e)
            if "device" in m:
                c.check(case, f"{m['name']}: device", e.get("device") == m["device"])
        port = e.get("port")
        mine = set(range(port, port + int(e.get("replicas", 1)))) if isinstance(port, int) else set()
        c.check(case, f"{m['name']}: engine ports free", mine and not (mine & used_ports), f"{mine} vs {used_ports}")
        used_ports |= mine
        # service.modelPorts: the model's port (the gateway's, pinned to it) on the pod and
        # the Service, under one name; otherwise neither.
        name = f"model-{port}"
        svc_port = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}.get(name)
        if values["service"].get("modelPorts"):
            c.check(case, f"{m['name']}: Service {name} -> {name}", svc_port is not None
                    and svc_port["port"] == port and svc_port["targetPort"] == name, str(svc_port))
            c.check(case, f"{m['name']}: container port {name}", ports.get(name) == port, str(ports))
        else:
            c.check(case, f"{m['name']}: model port not exposed", svc_port is None and name not in ports)

    # GPUs: the pod's limit is the sum, and GPU pods get /dev/shm.
    limits = ctr.get("resources", {}).get("limits", {})
    if gpus:
        c.check(case, f"nvidia.com/gpu: {gpus} on the trident container", limits.get("nvidia.com/gpu") == gpus, str(limits))
        shm = mounts.get("/dev/shm")
        c.check(case, "GPU pod has a memory /dev/shm", shm is not None
                and vols[shm["name"]].get("emptyDir", {}).get("medium") == "Memory")
    else:
        c.check(case, "no nvidia.com/gpu on a CPU pod", "nvidia.com/gpu" not in limits, str(limits))
        c.check(case, "CPU pod hides GPUs", env.get("NVIDIA_VISIBLE_DEVICES") == "void")
    for k in ("nodeSelector", "tolerations", "runtimeClassName"):
        if values.get(k):
            c.check(case, f"{k} passed through", pod.get(k) == values[k], str(pod.get(k)))

    # API keys: from a Secret, as a file; never in plain text anywhere.
    keys = values["apiKeys"].get("keys") or []
    secret_name = f"{dep['metadata']['name']}-api-keys" if keys else values["apiKeys"]["existingSecret"]
    kv = [v for v in pod["volumes"] if "secret" in v]
    ok = c.check(case, f"API key Secret {secret_name} mounted", len(kv) == 1
                 and kv[0]["secret"]["secretName"] == secret_name, str(kv))
    if ok:
        km = [m for m in ctr["volumeMounts"] if m["name"] == kv[0]["name"]][0]
        item = kv[0]["secret"]["items"][0]
        c.check(case, "key file = TRIDENT_API_KEY_FILE", env.get("TRIDENT_API_KEY_FILE")
                == f"{km['mountPath']}/{item['path']}" and item["key"] == values["apiKeys"]["secretKey"], str(env))
        c.check(case, "key file not world-readable", (kv[0]["secret"].get("defaultMode", 0o644) & 0o007) == 0)
    c.check(case, "no key in the environment", "TRIDENT_API_KEYS" not in env
            and env.get("TRIDENT_GENERATE_API_KEY") == "false", str(env))
    secrets = by_kind(docs, "Secret")
    if keys:
        ok = c.check(case, "the chart creates the key Secret", len(secrets) == 1
                     and secrets[0]["metadata"]["name"] == secret_name)
        if ok:
            data = secrets[0]["data"]
            decoded = base64.b64decode(data[values["apiKeys"]["secretKey"]]).decode()
            c.check(case, "Secret key file = the keys, one per line", decoded.split() == keys, decoded)
            c.check(case, "metrics_key = the first key", base64.b64decode(data["metrics_key"]).decode() == keys[0])
        for k in keys:
            c.check(case, "key not in plain text", k not in text)
    else:
        c.check(case, "no Secret created for an existing one", not secrets)
    c.check(case, "no default key anywhere in values.yaml", not chart.defaults["apiKeys"]["keys"])

    # PodDisruptionBudget only with more than one pod.
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if int(values["replicaCount"]) > 1:
        ok = c.check(case, "PDB with replicaCount > 1", len(pdbs) == 1)
        if ok:
            ml = pdbs[0]["spec"]["selector"]["matchLabels"]
            c.check(case, "PDB selects the pods", all(labels.get(k) == v for k, v in ml.items()))
            c.check(case, "PDB minAvailable < replicas", pdbs[0]["spec"]["minAvailable"] < int(values["replicaCount"]))
    else:
        c.check(case, "no PDB with one pod", not pdbs)
    c.check(case, "Deployment replicas", dep["spec"]["replicas"] == int(values["replicaCount"]))

    # NetworkPolicy: the API port open (to apiFrom), the keyless metrics port only to metricsFrom.
    nps = by_kind(docs, "NetworkPolicy")
    np_values = values["networkPolicy"]
    if not np_values["enabled"]:
        c.check(case, "no NetworkPolicy by default", not nps)
    elif c.check(case, "NetworkPolicy rendered", len(nps) == 1):
        spec = nps[0]["spec"]
        c.check(case, "NetworkPolicy selects the pods",
                all(labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items()))
        rules = {r["ports"][0]["port"]: r for r in spec["ingress"]}
        c.check(case, "API port allowed", "http" in rules and rules["http"].get("from", []) == np_values["apiFrom"],
                str(rules.get("http")))
        if np_values["metricsFrom"] and values["metrics"]["port"]:
            c.check(case, "metrics port only from metricsFrom",
                    rules.get("metrics", {}).get("from") == np_values["metricsFrom"], str(rules.get("metrics")))
        else:
            c.check(case, "metrics port closed", "metrics" not in rules)
    return {"secret": secret_name, "svc": svc, "labels": labels}


def check_monitoring(c, case, repo, docs, values, facts):
    sms = by_kind(docs, "ServiceMonitor")
    if not values["serviceMonitor"]["enabled"]:
        c.check(case, "no ServiceMonitor by default", not sms)
    else:
        ok = c.check(case, "ServiceMonitor rendered", len(sms) == 1)
        if ok:
            sm = sms[0]
            ep = sm["spec"]["endpoints"][0]
            c.check(case, "scrapes /metrics on the API port", ep["port"] == "http" and ep["path"] == "/metrics"
                    and "/metrics" in repo.routes)
            cred = ep.get("authorization", {}).get("credentials", {})
            c.check(case, "sends the key from the Secret", ep.get("authorization", {}).get("type") == "Bearer"
                    and cred.get("name") == facts["secret"] and cred.get("key") == "metrics_key", str(ep))
            svc = facts["svc"]
            c.check(case, "selects the Service", all(svc["metadata"]["labels"].get(k) == v
                                                      for k, v in sm["spec"]["selector"]["matchLabels"].items()))
            c.check(case, "job label is \"trident\" (dashboards' job)",
                    svc["metadata"]["labels"].get(sm["spec"]["jobLabel"]) == "trident")
            for k, v in values["serviceMonitor"]["labels"].items():
                c.check(case, f"ServiceMonitor label {k}", sm["metadata"]["labels"].get(k) == v)
    dash = [d for d in by_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    src = sorted((repo.root / "monitoring/grafana/dashboards").glob("*.json"))
    if not values["grafanaDashboards"]["enabled"]:
        c.check(case, "no dashboards by default", not dash)
        return
    c.check(case, f"{len(src)} dashboard ConfigMaps", len(dash) == len(src), str(len(dash)))
    got = {k: v for d in dash for k, v in d["data"].items()}
    uid = values["grafanaDashboards"]["datasourceUid"]
    for f in src:
        want = json.loads(f.read_text().replace('"trident-prometheus"', json.dumps(uid)))
        try:
            ok, detail = json.loads(got.get(f.name, "")) == want, ""
        except ValueError as e:
            ok, detail = False, str(e)
        c.check(case, f"dashboard {f.name} = repository JSON (datasource {uid})", ok, detail)
    c.check(case, "no trident-prometheus uid left", uid == "trident-prometheus"
            or all("trident-prometheus" not in v for v in got.values()))


CASES = [
    # (case, values files, --set overrides)
    ("defaults", [], []),
    ("gpu-chat", ["gpu-chat.yaml"], []),
    ("cpu-encoders", ["cpu-encoders.yaml"], []),
    ("existing-secret", ["existing-secret.yaml"], []),
    ("monitoring", ["monitoring.yaml"], []),
    ("set-replicas", [], ["replicaCount=3", "metrics.port=0"]),
    ("model-ports", [], ["service.modelPorts=true", "networkPolicy.enabled=true"]),
]
NEGATIVE = [
    ("bad-missing-type.yaml", "models[0].type is required"),
    ("bad-unknown-key.yaml", "models[0].max_model_len: unknown key"),
    ("bad-gpu-on-cpu.yaml", "gpus is 1 but device is \"cpu\""),
    ("bad-tp-gpus.yaml", "tensorParallelSize is 2 but gpus is 1"),
    ("bad-no-key.yaml", "set apiKeys.existingSecret"),
]

RENDERED_HEADER = """\
# trident: plain Kubernetes manifests, charts/trident rendered with its default values
# (release "trident", namespace "default"). Generated by scripts/check-chart.sh --write;
# do not edit. Create the API key Secret first (docs/KUBERNETES.md):
#   kubectl create secret generic trident-api-keys \\
#     --from-literal=api_keys="trident-$(openssl rand -hex 32)"
#   kubectl apply -f charts/trident/rendered/trident.yaml
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    root = Path(args.root)
    repo = Repo(root)
    chart = Chart(root, args.renderer)
    tests = root / "charts/tests/values"
    sm_schema = json.loads((root / "charts/tests/servicemonitor.schema.json").read_text())
    c = Checks()

    # Generated files: dashboards copied into the chart, the plain manifests.
    src_dash = sorted((root / "monitoring/grafana/dashboards").glob("*.json"))
    chart_dash = chart.dir / "dashboards"
    if args.write:
        chart_dash.mkdir(exist_ok=True)
        for old in chart_dash.glob("*.json"):
            old.unlink()
        for f in src_dash:
            (chart_dash / f.name).write_bytes(f.read_bytes())
    in_chart = sorted(p.name for p in chart_dash.glob("*.json"))
    c.check("files", "chart dashboards = monitoring/grafana/dashboards (--write syncs)",
            in_chart == [f.name for f in src_dash]
            and all((chart_dash / f.name).read_bytes() == f.read_bytes() for f in src_dash), str(in_chart))
    chart_file = chart.dir / "Chart.yaml"
    if args.write:
        chart_file.write_text(re.sub(r'^appVersion: .*$', f'appVersion: "{repo.version}"',
                                     chart_file.read_text(), flags=re.M))
    chart_yaml = yaml.safe_load(chart_file.read_text())
    c.check("files", "Chart.yaml appVersion = Cargo.toml version (--write sets it)",
            chart_yaml["appVersion"] == repo.version,
            f"{chart_yaml['appVersion']} != {repo.version}")

    for case, files, sets in CASES:
        paths = [tests / f for f in files]
        rc, out, err = chart.render(paths, sets, notes=True)
        if not c.check(case, "renders", rc == 0, err.strip()):
            continue
        text, _, notes = out.partition("\nNOTES:\n")
        docs = [d for d in yaml.safe_load_all(text) if d]
        values = chart.values(paths, sets)
        validate_schemas(c, case, docs, sm_schema)
        facts = check_common(c, case, repo, chart, docs, text, values)
        if facts:
            check_monitoring(c, case, repo, docs, values, facts)
        c.check(case, "NOTES name the key Secret", facts is not None and facts["secret"] in notes)
        if case == "defaults":
            mj = json.loads(one(docs, "ConfigMap")["data"]["models.json"])
            c.check(case, "models.json = config/models.json", mj == repo.models_json,
                    json.dumps(mj, sort_keys=True))
            rendered = chart.dir / "rendered/trident.yaml"
            want = RENDERED_HEADER + text
            if args.write:
                rendered.parent.mkdir(exist_ok=True)
                rendered.write_text(want)
            c.check("files", "rendered/trident.yaml is current (--write regenerates)",
                    rendered.exists() and rendered.read_text() == want)

    for f, msg in NEGATIVE:
        rc, out, err = chart.render([tests / f])
        c.check(f, "rendering fails", rc != 0 and not out, f"rc={rc}")
        c.check(f, "with a message naming the problem", msg in err, err.strip())
        if rc != 0:
            print(f"ok [{f}] refused: {err.strip()}")

    print(f"check-chart: {c.passed} passed, {c.failed} failed")
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
