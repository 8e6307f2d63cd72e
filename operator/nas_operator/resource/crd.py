"""The NASExperiment CustomResourceDefinition, generated from the pydantic models.

Kubernetes wants a structural schema: every node typed, no `$ref`, unions only as
validation. Pydantic's JSON Schema is turned into that shape here: references inlined,
`X | None` made `nullable`, mixed scalar unions (a choice's values) left to
`x-kubernetes-preserve-unknown-fields`, free-form maps likewise. Sizes (maxItems, maxLength,
maximum) come from the models' `Field`s, which take them from `limits`: one set of numbers for
the API server and `nasctl validate`, and they also bound the cost of the CEL rules. Rules between fields that
CEL can state are added as `x-kubernetes-validations`, so the API server itself refuses
the commonest mistakes with a message naming the rule; the rest is checked by the operator
(`spec_checks`), which reports InvalidSpec.
"""

from __future__ import annotations

import copy
from typing import Any

from nas_operator.resource.limits import MAX_EXPERIMENT_NAME
from nas_operator.resource.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAME,
    NASExperimentSpec,
    NASExperimentStatus,
)

# propertyNames (from dict key constraints) is not part of the CRD schema language: pydantic still checks keys.
_DROP = {"title", "discriminator", "propertyNames"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **extra}, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k not in _DROP}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one inlined JSON Schema node (and its children) into a structural one."""
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        if key not in node:
            continue
        options = node.pop(key)
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) < len(options)
        if len(non_null) == 1:
            merged = {**_structural(non_null[0]), **{k: v for k, v in node.items()}}
        elif all(o.get("type") in ("string", "integer") for o in non_null):
            merged = {**node, "x-kubernetes-int-or-string": True}
        else:
            merged = {**node, "x-kubernetes-preserve-unknown-fields": True}
        if nullable:
            merged["nullable"] = True
        node = merged
    kind = node.get("type")
    if kind == "object":
        if "properties" in node:
            node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        additional = node.get("additionalProperties")
        if isinstance(additional, dict):
            if additional == {} or "anyOf" in additional or "type" not in additional:
                node.pop("additionalProperties")
                node["x-kubernetes-preserve-unknown-fields"] = True
            else:
                node["additionalProperties"] = _structural(additional)
        elif additional is False:
            node.pop("additionalProperties")
    elif kind == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    elif (
        kind is None
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not node.get("x-kubernetes-int-or-string")
    ):
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "default" in node and node["default"] is None:
        node.pop("default")
    if "default" in node and isinstance(node["default"], dict | list) and not node["default"]:
        node.pop("default")  # `{}`/`[]` defaults add nothing and would be pruned oddly
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return node


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_inline(raw, defs))


# Rules the API server enforces itself (CEL). Messages match spec_checks' wording.
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "self.budget.parallelism <= self.budget.maxTrials",
        "message": "budget.parallelism must not exceed maxTrials",
    },
    {
        "rule": "!has(self.algorithm) || !has(self.algorithm.initialTrials) || "
        "self.algorithm.initialTrials <= self.budget.maxTrials",
        "message": "budget.maxTrials must be at least algorithm.initialTrials",
    },
    {
        # The source defaults to tensorboard, so a spec without `metrics` needs the claim too.
        "rule": "(has(self.metrics) && has(self.metrics.source) && self.metrics.source == 'terminationMessage') || "
        "(has(self.metrics) && has(self.metrics.claimName))",
        "message": "metrics.claimName is required with the tensorboard source: a trial's event files reach the "
        "operator only through that PersistentVolumeClaim (or use source: terminationMessage)",
    },
]
# At the root, where CEL sees metadata.name: a longer name makes every Job create fail.
ROOT_RULES: list[dict[str, str]] = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_EXPERIMENT_NAME}",
        "message": f"metadata.name must be at most {MAX_EXPERIMENT_NAME} characters (Job names are <name>-t<index>)",
    },
]
PARAMETER_RULES: list[dict[str, str]] = [
    {
        "rule": "self.type != 'range' || (has(self.lower) && has(self.upper))",
        "message": "a range parameter needs lower and upper",
    },
    {
        "rule": "self.type != 'range' || !has(self.lower) || !has(self.upper) || self.lower < self.upper",
        "message": "lower must be less than upper",
    },
    {
        "rule": "self.type != 'range' || !has(self.logScale) || !self.logScale || !has(self.lower) || self.lower > 0.0",
        "message": "a log-scale range needs lower > 0",
    },
]
# `values` and `value` hold numbers, strings or booleans: untyped for the schema, so invisible to
# CEL. Their rules (a choice needs 2+ distinct values, a fixed parameter a value) are the operator's.
# What the search is about cannot change under a running experiment; the budget can.
IMMUTABLE_FIELDS = ("parameters", "parameterConstraints", "objectives", "outcomeConstraints", "algorithm")

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "integer", "jsonPath": ".status.trials.total", "description": "trials launched"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.budget.maxTrials"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.trials.running"},
    {"name": "Succeeded", "type": "integer", "jsonPath": ".status.trials.succeeded", "priority": 1},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.trials.failed"},
    {
        "name": "EarlyStop",
        "type": "integer",
        "jsonPath": ".status.trials.earlyStopped",
        "description": "trials stopped early from their learning curves",
    },
    {"name": "Pareto", "type": "integer", "jsonPath": ".status.paretoSize", "description": "trials on the front"},
    {"name": "Hypervolume", "type": "number", "jsonPath": ".status.hypervolume"},
    {"name": "Best", "type": "number", "jsonPath": ".status.bestValue", "description": "one objective: the best value"},
    {
        "name": "Full",
        "type": "integer",
        "jsonPath": ".status.fullTraining.succeeded",
        "description": "stage 2: candidates trained in full",
        "priority": 1,
    },
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def spec_schema() -> dict[str, Any]:
    schema = openapi_schema(NASExperimentSpec)
    schema["x-kubernetes-validations"] = list(SPEC_RULES)
    for field in IMMUTABLE_FIELDS:
        schema["properties"][field]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"spec.{field} is immutable once the experiment exists"}
        ]
    schema["properties"]["parameters"]["items"]["x-kubernetes-validations"] = list(PARAMETER_RULES)
    schema["properties"]["parameters"]["x-kubernetes-list-type"] = "map"
    schema["properties"]["parameters"]["x-kubernetes-list-map-keys"] = ["name"]
    return schema


def status_schema() -> dict[str, Any]:
    return openapi_schema(NASExperimentStatus)


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["all", "nas"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A multi-objective neural architecture search.",
                            "required": ["spec"],
                            "x-kubernetes-validations": list(ROOT_RULES),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    import yaml

    return "# Generated by `nasctl crd` from operator/nas_operator/resource/spec.py; do not edit.\n" + yaml.safe_dump(
        crd(), sort_keys=False, width=120
    )
