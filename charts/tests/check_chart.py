"""Checks the Helm chart with the real Helm engine (helm-python-sdk, Helm v4) and every
rendered or example manifest against the Kubernetes OpenAPI schema (kubernetes-validate,
strict). Run by operator/tests/chart.rs; `--write` regenerates manifests/install.yaml.

Exits non-zero with one line per failure."""

import copy
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pgbackup"
INSTALL = ROOT / "manifests" / "install.yaml"
ARGOCD = ROOT / "manifests" / "gitops" / "argocd"
HEALTH_CHECKS = {"PostgresBackup": "backup.lua", "VolumeSnapshotBackup": "backup.lua",
                 "BackupSchedule": "backupschedule.lua",
                 "PointInTimeRestore": "pointintimerestore.lua"}
KUBERNETES = "1.33.0"
RELEASE, NAMESPACE = "pgbackup", "pgbackup-system"
# Kinds the Kubernetes schema does not know: checked by operator/tests/examples.rs against
# the generated CRDs (pgbackup.io), or by their own projects (monitoring, Argo CD, Flux).
FOREIGN_GROUPS = ("pgbackup.io/", "monitoring.coreos.com/", "argoproj.io/", "fluxcd.io/",
                  "toolkit.fluxcd.io/", "kustomize.config.k8s.io/")
CLUSTER_ONLY = {"namespaces", "volumesnapshotclasses", "persistentvolumes", "volumesnapshotcontents", "storageclasses"}

# Documented option sets (docs/install.md, values.yaml): each must lint, render and validate.
OPTION_SETS = {
    "defaults": {},
    "namespace-scoped": {"watchNamespaces": ["shop", "billing"]},
    "single replica without leader election": {
        "replicaCount": 1, "leaderElection": {"enabled": False}},
    "monitoring and network policy": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {"enabled": True, "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}},
    "own images and registry": {
        "image": {"repository": "registry.example/pgbackup/operator", "tag": "0.1.0",
                  "pullPolicy": "Always"},
        "agent": {"image": "registry.example/pgbackup/agent:{major}-bookworm",
                  "pullPolicy": "Always", "user": 1001},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pgbackup"}}},
    "own service account, no RBAC": {
        "serviceAccount": {"create": False, "name": "platform-pgbackup"},
        "rbac": {"create": False}},
}

# Bad values: each must be refused by values.schema.json with a message naming the key.
BAD_VALUES = [
    ({"replicaCount": 0}, "replicaCount"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount"),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"watchNamespaces": ["Shop"]}, "watchNamespaces"),
    ({"agent": {"user": 0}}, "user"),
    ({"leaderElection": {"leaseSeconds": 1}}, "leaseSeconds"),
    ({"replicas": 2}, "replicas"),
    ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ({"podLabels": {"app.kubernetes.io/name": "x"}}, "app.kubernetes.io/name"),
    ({"serviceAccount": {"create": False}}, "name"),
    ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "effect"),
    ({"imagePullSecrets": [{"secret": "x"}]}, "imagePullSecrets"),
]

# Values the schema lets through but the templates refuse, with a message that says why.
RENDER_REFUSALS = [
    ({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 3}}, "minAvailable must be below"),
    ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
     "needs metrics.service.enabled"),
]

failures = []


def fail(message):
    failures.append(message)


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            docs.extend(documents(rendered[path]))
    return docs


def validate(doc, where):
    api = doc.get("apiVersion", "")
    if any(api.startswith(g) or ("." + g) in api for g in FOREIGN_GROUPS):
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        fail(f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")
    except kubernetes_validate.SchemaNotFoundError as e:
        fail(f"{where}: no schema for {api} {doc.get('kind')}: {e}")


def rule_set(rules):
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def check_rbac(name, values, docs):
    if values.get("rbac", {}).get("create", True) is False:
        if any(d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding") for d in docs):
            fail(f"{name}: rbac.create=false must create no RBAC objects")
        return
    declared = rule_set(yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text()))
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    watched = values.get("watchNamespaces") or []
    if watched:
        if any(d["kind"] == "ClusterRole" for d in roles):
            fail(f"{name}: a namespace-scoped install must not create a ClusterRole")
        wanted = {(g, r, v) for (g, r, v) in declared
                  if r not in CLUSTER_ONLY and r != "leases"}
        for namespace in watched:
            granted = rule_set([r for d in roles if d["metadata"].get("namespace") == namespace
                                for r in d["rules"]])
            if granted != wanted:
                fail(f"{name}: rules in {namespace} differ from operator-rules.yaml: "
                     f"missing {sorted(wanted - granted)}, extra {sorted(granted - wanted)}")
    else:
        granted = rule_set([r for d in roles for r in d["rules"]])
        lease_enabled = values.get("leaderElection", {}).get("enabled", True)
        wanted = declared if lease_enabled else {c for c in declared if c[1] != "leases"}
        if granted != wanted:
            fail(f"{name}: rendered rules differ from operator-rules.yaml: "
                 f"missing {sorted(wanted - granted)}, extra {sorted(granted - wanted)}")
        lease_roles = [d for d in roles if any("leases" in r["resources"] for r in d["rules"])]
        if any(d["kind"] == "ClusterRole" for d in lease_roles):
            fail(f"{name}: the Lease rule must stay in the release namespace")


def install_yaml():
    """manifests/install.yaml: the namespace, the CRDs and the chart with defaults."""
    parts = ["# Generated from charts/pgbackup with default values by charts/tests/check_chart.py\n"
             "# --write; do not edit. `kubectl apply --server-side -f manifests/install.yaml`.\n"]
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        docs.extend(documents(crd.read_text()))
    docs.extend(render({}))
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)
    return parts[0] + "---\n" + body


def argocd_health():
    """argocd-cm-health.yaml: the health checks of the four kinds for argocd-cm."""
    common = (ARGOCD / "health" / "common.lua").read_text()
    data = {f"resource.customizations.health.pgbackup.io_{kind}":
            common + "\n" + (ARGOCD / "health" / file).read_text()
            for kind, file in HEALTH_CHECKS.items()}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "argocd-cm", "namespace": "argocd"}, "data": data}

    class Literal(str):
        pass

    def literal(dumper, text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")

    yaml.add_representer(Literal, literal, Dumper=yaml.SafeDumper)
    config_map["data"] = {k: Literal(v) for k, v in data.items()}
    return ("# Generated from health/*.lua by charts/tests/check_chart.py --write; do not edit.\n"
            "# Merge into argocd-cm: kubectl -n argocd patch configmap argocd-cm --patch-file <this>\n"
            + yaml.safe_dump(config_map, sort_keys=False, width=100))


def main():
    write = "--write" in sys.argv
    # The chart's CRDs are the generated ones, byte for byte.
    for generated in sorted((ROOT / "crds").glob("*.yaml")):
        copy_ = CHART / "crds" / generated.name
        if not copy_.exists() or copy_.read_bytes() != generated.read_bytes():
            fail(f"charts/pgbackup/crds/{generated.name} differs from crds/: copy it")
    extra = {p.name for p in (CHART / "crds").glob("*.yaml")} - {p.name for p in (ROOT / "crds").glob("*.yaml")}
    if extra:
        fail(f"charts/pgbackup/crds/ has files crds/ does not: {sorted(extra)}")

    for name, values in OPTION_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                           kube_version=KUBERNETES)
        for message in report.get("messages", []):
            if message.get("severity", 0) > 1:
                fail(f"lint ({name}): {message.get('path')}: {message.get('error')}")
        for error in report.get("errors", []) or []:
            fail(f"lint ({name}): {error}")
        try:
            docs = render(copy.deepcopy(values))
        except helm.HelmError as e:
            fail(f"render ({name}): {e}")
            continue
        for doc in docs:
            validate(doc, f"render ({name})")
        check_rbac(name, values, docs)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        security = container["securityContext"]
        if not (pod["securityContext"].get("runAsNonRoot") and security.get("readOnlyRootFilesystem")
                and security.get("capabilities", {}).get("drop") == ["ALL"]
                and pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            fail(f"render ({name}): the operator pod must be locked down")

    for values, key in BAD_VALUES:
        with helm.Chart.load(str(CHART)) as chart:
            try:
                chart.validate_schema(values)
            except helm.HelmValuesError as e:
                if key not in str(e):
                    fail(f"schema: {values} refused without naming {key!r}: {e}")
                continue
        fail(f"schema: {values} was accepted")

    for values, words in RENDER_REFUSALS:
        try:
            render(values)
        except helm.HelmError as e:
            if words not in str(e):
                fail(f"render: {values} refused without saying {words!r}: {e}")
            continue
        fail(f"render: {values} was accepted")

    # A long release name still gives valid object names.
    with helm.Chart.load(str(CHART)) as chart:
        long_name = "a-release-name-that-is-rather-long-for-kubernetes-objects-x"
        rendered = chart.render({}, name=long_name, namespace=NAMESPACE, is_install=True)
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            for doc in documents(rendered[path]):
                if len(doc["metadata"]["name"]) > 63:
                    fail(f"long release name: {doc['kind']} name {doc['metadata']['name']!r} is over 63 characters")

    health = argocd_health()
    health_file = ARGOCD / "argocd-cm-health.yaml"
    if write:
        health_file.write_text(health)
    elif not health_file.exists() or health_file.read_text() != health:
        fail("manifests/gitops/argocd/argocd-cm-health.yaml differs from health/*.lua: "
             "run `python charts/tests/check_chart.py --write`")

    expected = install_yaml()
    if write:
        INSTALL.write_text(expected)
    elif not INSTALL.exists() or INSTALL.read_text() != expected:
        fail("manifests/install.yaml differs from a fresh render: "
             "run `python charts/tests/check_chart.py --write`")
    for doc in documents(INSTALL.read_text()):
        validate(doc, "manifests/install.yaml")

    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        if path == INSTALL:
            continue
        for doc in documents(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                validate(doc, str(path.relative_to(ROOT)))

    for message in failures:
        print(message)
    if failures:
        sys.exit(1)
    print(f"chart: {len(OPTION_SETS)} option sets rendered and valid, "
          f"{len(BAD_VALUES) + len(RENDER_REFUSALS)} bad values refused, install.yaml up to date")


if __name__ == "__main__":
    main()
