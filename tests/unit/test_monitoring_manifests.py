"""The kustomize components for operating vecmirror at scale (deploy/k8s/components): Prometheus
scraping and alerts, the Grafana dashboard, autoscaling on the backlog with KEDA or a plain HPA.

They are rendered by kubectl on the example overlay, as an operator enables them, and each object is
checked against its schema: Kubernetes' own (kubernetes-validate, as tests/unit/test_deploy.py does),
or, for KEDA's ScaledObject and the Prometheus Operator's PrometheusRule and ServiceMonitor, a JSON
Schema written here (see "schemas" below). The alerts must be README's table word for word; every
PromQL expression (alerts, autoscaler queries, dashboard panels) must parse (promql-parser:
Prometheus' grammar, its functions and argument types) and read only metrics that vecmirror declares.
tests/integration/test_dashboard_metrics.py checks the same names against a running worker's
/metrics.

The three custom resources' schemas are ours, not the projects' CRDs: no package we can install
ships those CRDs or schemas generated from them for the releases the manifests need (KEDA 2.17 or
later for fallback.behavior), and the CRD files themselves are not ours to copy into the repository.
Written from the projects' API documentation (KEDA v2.20, Prometheus Operator v0.93), they cover
exactly the fields our manifests use, with the types, enumerations, formats (Prometheus durations,
int32) and required fields documented for them, and they refuse every other field, as the API server
does under kubectl's strict field validation. A field the manifests come to use must be added to its
schema here, from the same documentation. What the schemas leave open is checked with Kubernetes' own
types, which the CRDs embed: each object's metadata, and the ScaledObject's HPA behavior."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from vecmirror.app import POOL_SPARE_CONNECTIONS
from vecmirror.ops.metrics import Metrics
from vecmirror.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
K8S = ROOT / "deploy" / "k8s"
COMPONENTS = K8S / "components"
DASHBOARD = COMPONENTS / "grafana-dashboard" / "vecmirror.json"
ADAPTER_RULES = COMPONENTS / "autoscaling-hpa" / "prometheus-adapter.yaml"
TOOLS = Path(sys.executable).parent
# As tests/unit/test_deploy.py: the oldest Kubernetes the manifests promise to fit, and the newest.
KUBERNETES_VERSIONS = ("1.31", "1.37")
NAMESPACE = "vecmirror"

# What each autoscaler variant renders: the shipped overlay (KEDA), and the example overlay with the
# same components but the HPA, in an overlay of the test's own (two autoscalers never go together).
WITH_KEDA = "overlays/monitoring"
WITH_HPA = (
    "overlays/example",
    "components/prometheus",
    "components/grafana-dashboard",
    "components/autoscaling-hpa",
)
VARIANTS = {"keda": WITH_KEDA, "hpa": WITH_HPA}
# The example overlay's objects, the dashboard's ConfigMap, the PrometheusRule and ServiceMonitor.
OBJECTS = ["ConfigMap", "ConfigMap", "Deployment", "Job", "Namespace", "PodDisruptionBudget"]
OBJECTS += ["PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]

# Series that come from elsewhere: Prometheus' own per target, and kube-state-metrics'.
KUBE_STATE_METRICS = ("kube_deployment_status_replicas_available", "kube_deployment_spec_replicas")
EXTERNAL_METRICS = frozenset({"up", *KUBE_STATE_METRICS})
# The sample names a metric family of each type is exposed as (prometheus_client strips _total and
# _info from the family's name; vecmirror turns the _created samples off).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}
# The keys KEDA's Prometheus scaler reads from a trigger's metadata (pkg/scalers/prometheus_scaler.go,
# KEDA v2.20.2): KEDA types metadata as a map of strings only, so a misspelt key would pass it.
KEDA_PROMETHEUS_REQUIRED = frozenset({"serverAddress", "query", "threshold"})
KEDA_PROMETHEUS_OPTIONAL = (
    "queryParameters activationThreshold namespace customHeaders ignoreNullValues unsafeSsl awsRegion "
    "timeout identityOwner"
)
KEDA_PROMETHEUS_KEYS = KEDA_PROMETHEUS_REQUIRED | set(KEDA_PROMETHEUS_OPTIONAL.split())
# Postgres' defaults: max_locks_per_transaction (64) x max_connections (100) lock slots shared by every
# session, and the connections themselves. The workers may take half of each at most.
LOCK_TABLE = 64 * 100
MAX_CONNECTIONS = 100
LISTENER_CONNECTIONS = 1  # the LISTEN connection a worker holds beside its pool
# The dashboard's variables as a test sets them; Grafana's own: only those it documents.
GRAFANA_VALUES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
DASHBOARD_TOPICS = (
    "vecmirror_freshness_seconds_bucket",
    "vecmirror_changes_pending",
    "vecmirror_oldest_pending_change_age_seconds",
    "vecmirror_rows_synced_total",
    "vecmirror_embeddings_total",
    "vecmirror_embedding_batch_duration_seconds_bucket",
    "vecmirror_redis_write_duration_seconds_bucket",
    "vecmirror_errors_total",
    "vecmirror_index_documents",
    "vecmirror_table_rows",
    "vecmirror_mirror_paused",
)


# --- rendering -----------------------------------------------------------------------------------


def kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [TOOLS / "kubectl", "kustomize", directory], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def rendered(variant: str) -> tuple[dict[str, Any], ...]:
    source = VARIANTS[variant]
    if isinstance(source, str):
        return kustomize(K8S / source)
    resource, *components = source
    with tempfile.TemporaryDirectory() as overlay:
        # kustomize takes only relative paths, and loads nothing from above the overlay but folders.
        def relative(path: str) -> str:
            return os.path.relpath(K8S / path, overlay)

        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": [relative(resource)],
            "components": [relative(component) for component in components],
        }
        (Path(overlay) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(Path(overlay))


def of_kind(variant: str, kind: str) -> dict[str, Any]:
    found = [doc for doc in rendered(variant) if doc["kind"] == kind]
    assert len(found) == 1, f"{variant} renders {len(found)} {kind} objects"
    return found[0]


def worker_env(variant: str) -> dict[str, str]:
    (container,) = of_kind(variant, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable.get("value", "") for variable in container["env"]}


def autoscaler(variant: str) -> dict[str, Any]:
    return of_kind(variant, "ScaledObject" if variant == "keda" else "HorizontalPodAutoscaler")


both = pytest.mark.parametrize("variant", list(VARIANTS))


# --- schemas -------------------------------------------------------------------------------------


INT32: dict[str, Any] = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRING: dict[str, Any] = {"type": "string"}
NAME: dict[str, Any] = {"type": "string", "minLength": 1}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STRING}
# A Prometheus duration (the Prometheus Operator's Duration type): "0", or whole numbers of each unit
# from years down to milliseconds, largest first, each unit at most once: "5m", "1h30m", "10s".
DURATION_UNITS = ("y", "w", "d", "h", "m", "s", "ms")
DURATION: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "pattern": "^(0|" + "".join(f"([0-9]+{unit})?" for unit in DURATION_UNITS) + ")$",
}
# KEDA's fallback.behavior (KEDA 2.17 and later): the replicas it keeps while its scalers fail.
KEDA_FALLBACK_BEHAVIORS = ["static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"]


def fields(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """An object with these fields and no other (kubectl's strict field validation refuses a field
    the schema does not name)."""
    node: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        node["required"] = list(required)
    return node


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource: metadata is left to Kubernetes' own ObjectMeta (see validate_custom)."""
    top = {"apiVersion": {"enum": [api_version]}, "kind": {"enum": [kind]}, "metadata": {"type": "object"}}
    return fields({**top, "spec": spec}, "apiVersion", "kind", "metadata", "spec")


SCALED_OBJECT = resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    fields(
        {
            "scaleTargetRef": fields({"apiVersion": STRING, "kind": STRING, "name": STRING}, "name"),
            "minReplicaCount": INT32,
            "maxReplicaCount": INT32,
            "pollingInterval": INT32,
            "fallback": fields(
                {"failureThreshold": INT32, "replicas": INT32, "behavior": {"enum": KEDA_FALLBACK_BEHAVIORS}},
                "failureThreshold",
                "replicas",
            ),
            # behavior is autoscaling/v2's HorizontalPodAutoscalerBehavior: see validate_custom.
            "advanced": fields({"horizontalPodAutoscalerConfig": fields({"behavior": {"type": "object"}})}),
            # A scaler's metadata is a map of strings; which keys the Prometheus scaler reads is
            # checked by test_keda_scales_on_the_queue_of_its_own_namespace.
            "triggers": array(fields({"type": STRING, "metadata": STRING_MAP}, "type", "metadata")),
        },
        "scaleTargetRef",
        "triggers",
    ),
)
SERVICE_MONITOR = resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    fields(
        {
            "jobLabel": STRING,
            "selector": fields({"matchLabels": STRING_MAP}),
            "endpoints": array(
                fields({"port": STRING, "path": STRING, "interval": DURATION, "scrapeTimeout": DURATION})
            ),
        },
        "selector",
    ),
)
# A rule is an alert or a recording rule, never both; expr is an int-or-string.
RULE = fields(
    {
        "alert": NAME,
        "record": NAME,
        "expr": {"type": ["integer", "string"]},
        "for": DURATION,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "expr",
)
RULE["oneOf"] = [{"required": ["alert"]}, {"required": ["record"]}]
PROMETHEUS_RULE = resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    fields({"groups": array(fields({"name": NAME, "interval": DURATION, "rules": array(RULE)}, "name"))}),
)
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


@functools.cache
def custom_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    # The API server's structural schemas are OpenAPI v3.0's: JSON Schema draft 4, as these are.
    schema = CUSTOM_SCHEMAS[api_version, kind]
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def embedded_kubernetes_objects(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """What a custom resource holds of Kubernetes' own types, each in an object that carries it."""
    # The API server checks a custom resource's metadata as any object's.
    yield {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
    advanced = document["spec"].get("advanced", {}) if document["kind"] == "ScaledObject" else {}
    if "behavior" in advanced.get("horizontalPodAutoscalerConfig", {}):
        yield {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "carrier"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "carrier"},
                "maxReplicas": 1,
                "behavior": advanced["horizontalPodAutoscalerConfig"]["behavior"],
            },
        }


def validate_custom(document: dict[str, Any], version: str) -> None:
    custom_validator(document["apiVersion"], document["kind"]).validate(document)
    for carrier in embedded_kubernetes_objects(document):
        kubernetes_validate.validate(carrier, version, strict=True)


def keda_rules_hold(scaled_object: dict[str, Any]) -> bool:
    """The one CEL rule of KEDA's CRD (x-kubernetes-validations), which a JSON Schema cannot say."""
    spec = scaled_object["spec"]
    return "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)


@both
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes_or_its_schema(variant: str, version: str) -> None:
    for document in rendered(variant):
        if (document["apiVersion"], document["kind"]) in CUSTOM_SCHEMAS:
            validate_custom(document, version)
        else:
            kubernetes_validate.validate(document, version, strict=True)
    if variant == "keda":
        assert keda_rules_hold(of_kind(variant, "ScaledObject"))


def scale_up_policy(spec: dict[str, Any]) -> dict[str, Any]:
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    policy: dict[str, Any] = behavior["scaleUp"]["policies"][0]
    return policy


@pytest.mark.parametrize(
    ("kind", "spoil"),
    [
        ("ScaledObject", lambda spec: spec.update(minReplicas=2)),
        ("ScaledObject", lambda spec: spec["fallback"].update(behavior="currentReplicasIfBigger")),
        ("ServiceMonitor", lambda spec: spec["endpoints"][0].update(ports="metrics")),
        ("PrometheusRule", lambda spec: spec["groups"][0]["rules"][0].update(**{"for": "5 minutes"})),
        ("PrometheusRule", lambda spec: spec["groups"][0]["rules"][0].pop("expr")),
        ("PrometheusRule", lambda spec: spec["groups"][0]["rules"][0].update(record="vecmirror:up")),
        ("ServiceMonitor", lambda spec: spec["endpoints"][0].update(interval="15")),
        ("ScaledObject", lambda spec: spec.update(maxReplicaCount="6")),
        ("ScaledObject", lambda spec: spec["triggers"][0]["metadata"].update(threshold=2400)),
        # autoscaling/v2's HPAScalingPolicy, checked by Kubernetes' own schema.
        ("ScaledObject", lambda spec: scale_up_policy(spec).pop("periodSeconds")),
        ("ScaledObject", lambda spec: scale_up_policy(spec).update(periodSecond=60)),
    ],
)
def test_the_schema_check_refuses_what_the_api_server_would(kind: str, spoil: Callable[[Any], Any]) -> None:
    document = copy.deepcopy(of_kind("keda", kind))
    spoil(document["spec"])
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(document, KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize("duration", ["0", "15s", "5m", "1h30m", "500ms", "1y2w3d4h5m6s7ms"])
def test_the_duration_format_takes_prometheus_durations(duration: str) -> None:
    jsonschema.Draft4Validator(DURATION).validate(duration)


@pytest.mark.parametrize("duration", ["", "5", "5 minutes", "1m1h", "-5m", "1.5h", "5M", "5m "])
def test_the_duration_format_refuses_others(duration: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(DURATION).validate(duration)


def test_the_keda_cel_rule_is_checked() -> None:
    scaled_object = copy.deepcopy(of_kind("keda", "ScaledObject"))
    scaled_object["spec"]["minReplicaCount"] = scaled_object["spec"]["maxReplicaCount"] + 1
    assert not keda_rules_hold(scaled_object)


@both
def test_each_variant_adds_its_objects_to_the_example_overlay(variant: str) -> None:
    kinds = sorted(doc["kind"] for doc in rendered(variant))
    scaler = "ScaledObject" if variant == "keda" else "HorizontalPodAutoscaler"
    assert kinds == sorted([*OBJECTS, scaler])
    assert {doc["metadata"].get("namespace", NAMESPACE) for doc in rendered(variant)} == {NAMESPACE}


# --- PromQL --------------------------------------------------------------------------------------


@functools.cache
def exported_metric_names() -> frozenset[str]:
    """Every sample name a `vecmirror run` process can expose: its registry's families (declared up
    front, set or not) by type, and the process and Python collectors `run` adds."""
    names = set()
    for family in Metrics.for_process().registry.collect():
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """The metrics an expression reads; it must parse (grammar, function names, argument types)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            named = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            assert node.name or named, f"a selector without a metric name in {expr!r}"
            names.add(node.name or named[0])

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - exported_metric_names() - EXTERNAL_METRICS


def rules(variant: str) -> list[dict[str, Any]]:
    return [rule for group in of_kind(variant, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def adapter_rules() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]
    return loaded


def grafana_variables() -> dict[str, str]:
    """Each dashboard variable with the value a test gives it: the namespace, every mirror."""
    values = {"datasource": "prometheus", "namespace": NAMESPACE, "mirror": ".*", **GRAFANA_VALUES}
    defined = {variable["name"] for variable in dashboard()["templating"]["list"]}
    assert defined == {"datasource", "namespace", "mirror"}
    return values


def grafana_expanded(expr: str) -> str:
    values = grafana_variables()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)


def adapter_expanded(query: str, series: str) -> str:
    """prometheus-adapter's templates as it fills them for an HPA in the namespace."""
    query = query.replace("<<.Series>>", series)
    return query.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}"')


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", grafana_expanded(target["expr"])
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: only label_values(selector, label) is checked"
            yield f"variable {variable['name']}", grafana_expanded(match.group(1))


def all_queries() -> Iterator[tuple[str, str]]:
    """Every PromQL expression the manifests and the dashboard hold, each with where it is."""
    for variant in VARIANTS:
        for rule in rules(variant):
            yield f"{variant} alert {rule['alert']}", rule["expr"]
    for trigger in of_kind("keda", "ScaledObject")["spec"]["triggers"]:
        yield "ScaledObject trigger", trigger["metadata"]["query"]
    for rule in adapter_rules():
        (series,) = metric_names(rule["seriesQuery"])
        yield f"prometheus-adapter {rule['name']['as']}", adapter_expanded(rule["metricsQuery"], series)
        yield "prometheus-adapter seriesQuery", rule["seriesQuery"]
    yield from dashboard_queries()


def used_metric_names() -> set[str]:
    """What the integration test looks for in a live worker's /metrics."""
    return {name for _, expr in all_queries() for name in metric_names(expr)} - EXTERNAL_METRICS


def test_every_query_parses_and_reads_only_exported_metrics() -> None:
    queries = list(all_queries())
    assert len(queries) > 30
    assert {where: unknown_metrics(expr) for where, expr in queries if unknown_metrics(expr)} == {}


@pytest.mark.parametrize(
    "expr",
    [
        "rate(vecmirror_rows_synced[5m])",  # a counter's family name, not its _total sample
        "histogram_quantile(0.99, sum by (le) (rate(vecmirror_freshness_seconds[5m])))",  # no _bucket
        'max by (mirror) (vecmirror_changes_pending{mirror="docs"}) + vecmirror_queue_depth',
    ],
)
def test_the_metric_check_refuses_a_name_vecmirror_does_not_export(expr: str) -> None:
    assert unknown_metrics(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "histogram_quantil(0.99, vecmirror_freshness_seconds_bucket)",
        "rate(vecmirror_rows_synced_total)",
        "sum by (mirror) (vecmirror_changes_pending",
    ],
)
def test_the_parser_refuses_what_prometheus_would(expr: str) -> None:
    with pytest.raises(ValueError):
        promql_parser.parse(expr)


# --- alerts and scraping -------------------------------------------------------------------------


def readme_alerts() -> list[tuple[str, str, str, str]]:
    """README's alert table ("Monitoring"): (alert, expression, for, what it means) a row."""
    lines = README.read_text().splitlines()
    header = lines.index("| alert | expression | for | what it means |")
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines[header + 2 :])
    table = []
    for row in rows:
        alert, expression, for_, meaning = (
            cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)[1:-1]
        )
        table.append((alert, expression.removeprefix("`").removesuffix("`"), for_, meaning))
    return table


def alert_name(readme_name: str) -> str:
    return "Vecmirror" + "".join(word.capitalize() for word in readme_name.split())


@both
def test_the_rules_are_the_readmes_alert_table(variant: str) -> None:
    table = readme_alerts()
    assert len(table) == 10
    shipped = [(r["alert"], r["expr"], r["for"], r["annotations"]["description"]) for r in rules(variant)]
    assert shipped == [(alert_name(name), expr, for_, meaning) for name, expr, for_, meaning in table]
    assert {rule["labels"]["severity"] for rule in rules(variant)} == {"warning", "critical"}


def kept_labels(node: promql_parser.Expr) -> frozenset[str] | None:
    """The labels an alert's series keep, where its shape says (None: those of the series it reads)."""
    if isinstance(node, promql_parser.BinaryExpr) and isinstance(node.rhs, promql_parser.NumberLiteral):
        return kept_labels(node.lhs)
    if isinstance(node, promql_parser.AggregateExpr):
        modifier = node.modifier
        assert modifier is not None and modifier.type == promql_parser.AggModifierType.By
        return frozenset(modifier.labels)
    if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
        inner = kept_labels(node.args[1])
        return None if inner is None else inner - {"le"}
    return None


def test_alert_summaries_name_only_labels_their_alert_keeps() -> None:
    for rule in rules("keda"):
        used = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]))
        kept = kept_labels(promql_parser.parse(rule["expr"]))
        assert kept is None or used <= kept, f"{rule['alert']} names {used - kept} in its summary"


def test_summaries_are_checked_against_the_labels_kept() -> None:
    by_stage = promql_parser.parse("sum by (stage) (rate(vecmirror_errors_total[5m])) > 0")
    assert kept_labels(by_stage) == frozenset({"stage"})


def test_the_service_monitor_scrapes_each_worker_as_job_vecmirror() -> None:
    monitor = of_kind("keda", "ServiceMonitor")["spec"]
    service = of_kind("keda", "Service")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The job label README's `up{job="vecmirror"}` alert selects on.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "vecmirror"
    assert 'up{job="vecmirror"}' in rules("keda")[0]["expr"]
    # Pods scraped through the ServiceMonitor only: scraped twice, every sum over pods would double.
    annotations = of_kind("keda", "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"


# --- autoscaling ---------------------------------------------------------------------------------


def scaling_policy(variant: str) -> tuple[int, int, float, dict[str, Any]]:
    """min, max, changes per worker, and the HPA behavior, whichever object says them."""
    spec = autoscaler(variant)["spec"]
    if variant == "keda":
        (trigger,) = spec["triggers"]
        threshold = float(trigger["metadata"]["threshold"])
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        return spec["minReplicaCount"], spec["maxReplicaCount"], threshold, behavior
    (metric,) = spec["metrics"]
    target = metric["external"]["target"]
    assert target["type"] == "AverageValue"  # workers = ceil(backlog / averageValue), as KEDA's default
    return spec["minReplicas"], spec["maxReplicas"], float(target["averageValue"]), spec["behavior"]


@both
def test_the_autoscaler_owns_the_worker_replicas(variant: str) -> None:
    deployment = of_kind(variant, "Deployment")
    target = autoscaler(variant)["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "vecmirror")
    assert target["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # else each `kubectl apply` resets the count
    minimum, maximum, per_worker, _ = scaling_policy(variant)
    # Never 0 by default: a pod started from zero loads the model, and no NOTIFY wakes it.
    assert 1 <= minimum <= maximum
    assert per_worker > 0


@both
def test_the_most_workers_fit_postgres_lock_table_and_connections(variant: str) -> None:
    _, maximum, _, _ = scaling_policy(variant)
    env = worker_env(variant)
    defaults = Settings.model_fields

    def setting(name: str) -> int:
        return int(env.get(f"VECMIRROR_{name.upper()}", defaults[name].default))

    claim = max(setting("batch_size"), setting("max_batch_size"))
    assert maximum * setting("batches_in_flight") * claim <= LOCK_TABLE // 2
    connections = setting("batches_in_flight") + POOL_SPARE_CONNECTIONS + LISTENER_CONNECTIONS
    assert maximum * connections <= MAX_CONNECTIONS // 2


def test_keda_scales_on_the_queue_of_its_own_namespace() -> None:
    scaled_object = of_kind("keda", "ScaledObject")
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert KEDA_PROMETHEUS_REQUIRED <= set(metadata) <= KEDA_PROMETHEUS_KEYS
    assert all(isinstance(value, str) for value in metadata.values())
    paused = {"vecmirror_mirror_paused", "vecmirror_mirror_operator_paused"}
    assert metric_names(metadata["query"]) == {"vecmirror_changes_pending", *paused}
    namespaces = set(re.findall(r'namespace="([^"]*)"', metadata["query"]))
    assert namespaces == {scaled_object["metadata"]["namespace"]}
    # An empty answer (no worker scraped) must not read as an empty queue: fall back, never below now.
    assert metadata["ignoreNullValues"] == "false"
    fallback = scaled_object["spec"]["fallback"]
    assert fallback["behavior"] == "currentReplicasIfHigher"
    assert fallback["replicas"] >= scaled_object["spec"]["minReplicaCount"]


def test_keda_and_the_hpa_scale_alike_on_the_same_query() -> None:
    assert scaling_policy("keda") == scaling_policy("hpa")
    (rule,) = adapter_rules()
    (metric,) = of_kind("hpa", "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert rule["name"]["as"] == metric["external"]["metric"]["name"]
    (series,) = metric_names(rule["seriesQuery"])
    adapter_query = promql_parser.parse(adapter_expanded(rule["metricsQuery"], series))
    (trigger,) = of_kind("keda", "ScaledObject")["spec"]["triggers"]
    assert str(adapter_query) == str(promql_parser.parse(trigger["metadata"]["query"]))


# --- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_configmap_is_the_dashboard_file_for_grafanas_sidecar() -> None:
    configmaps = [doc for doc in rendered("keda") if doc["kind"] == "ConfigMap"]
    (configmap,) = [doc for doc in configmaps if "grafana_dashboard" in doc["metadata"].get("labels", {})]
    assert configmap["metadata"]["name"] == "vecmirror-dashboard"  # no hash suffix: one dashboard, replaced
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"vecmirror.json": DASHBOARD.read_text()}
    # Client-side `kubectl apply` keeps the whole object in an annotation, limited to 256 KiB.
    assert len(DASHBOARD.read_bytes()) < 128 * 1024


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    read = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    assert set(DASHBOARD_TOPICS) <= read


def test_the_dashboard_panels_are_laid_out_on_grafanas_grid() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = set(itertools.product(columns, rows))
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
        assert panel["title"] and panel["description"]


def test_the_dashboard_check_refuses_an_undefined_variable() -> None:
    with pytest.raises(KeyError):
        grafana_expanded('vecmirror_changes_pending{cluster="$cluster"}')
